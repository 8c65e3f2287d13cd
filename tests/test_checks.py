"""System checks report declaration mistakes with stable ids and exact messages."""

from django.core import checks
from django.db import models
from django.test.utils import isolate_apps

from maintained_fields import MaintainedModel, MaintainedModelMixin, maintained_field
from maintained_fields.graph import build


def messages(*model_list):
    return [(e.id, e.msg) for e in build(model_list).errors]


@isolate_apps("tests.testapp")
def test_installed_models_pass_the_checks():
    from django.apps import apps

    testapp = [apps.get_app_config("testapp")]
    assert [e for e in checks.run_checks(app_configs=testapp) if e.id.startswith("maintained")] == []
    # The drift schema leaves plain children without the package's manager on purpose.
    found = checks.run_checks(app_configs=[apps.get_app_config("drift")])
    assert sorted((e.id, e.obj.__name__) for e in found if e.id.startswith("maintained")) == [
        ("maintained_fields.W001", "PlainItem"),
        ("maintained_fields.W001", "Rack"),
    ]


@isolate_apps("tests.testapp")
def test_unknown_field():
    class Box(MaintainedModel):
        class Meta:
            app_label = "testapp"

        count = models.IntegerField(default=0)

        @maintained_field("cuont")
        def compute(self):
            return 1

    assert messages(Box) == [
        ("maintained_fields.E001", "testapp.Box.compute() maintains 'cuont', which is not a field of testapp.Box.")
    ]


@isolate_apps("tests.testapp")
def test_path_that_does_not_resolve():
    class Shelf(MaintainedModel):
        class Meta:
            app_label = "testapp"

        name = models.CharField(max_length=10)
        count = models.IntegerField(default=0)

        @maintained_field("count", depends_on=["boxes"])
        def compute(self):
            return 0

    class Crate(models.Model):
        class Meta:
            app_label = "testapp"

        shelf = models.ForeignKey(Shelf, models.CASCADE, related_name="crates")

    class Label(MaintainedModel):
        class Meta:
            app_label = "testapp"

        crate = models.ForeignKey(Crate, models.CASCADE)
        text = models.CharField(max_length=10)

        @maintained_field("text", depends_on=["crate__shelf__name__upper"])
        def compute(self):
            return ""

    assert messages(Shelf, Crate, Label) == [
        (
            "maintained_fields.E002",
            "testapp.Shelf.compute() depends on 'boxes', which does not resolve: "
            "testapp.Shelf has no field or relation 'boxes'.",
        ),
        (
            "maintained_fields.E002",
            "testapp.Label.compute() depends on 'crate__shelf__name__upper', which does not "
            "resolve: 'name' is a field of testapp.Shelf, not a relation; only the last part "
            "of a path can be a field.",
        ),
    ]


@isolate_apps("tests.testapp")
def test_two_methods_for_one_field():
    class Box(MaintainedModel):
        class Meta:
            app_label = "testapp"

        count = models.IntegerField(default=0)

        @maintained_field("count")
        def first(self):
            return 1

        @maintained_field("count")
        def second(self):
            return 2

    assert messages(Box) == [
        ("maintained_fields.E003", "testapp.Box.count is maintained by two methods: first() and second().")
    ]


@isolate_apps("tests.testapp")
def test_cycle_over_a_whole_relation_but_not_over_a_field():
    class Parent(MaintainedModel):
        class Meta:
            app_label = "testapp"

        name = models.CharField(max_length=10)
        child_count = models.IntegerField(default=0)

        @maintained_field("child_count", depends_on=["children"])
        def compute(self):
            return 0

    class Child(MaintainedModel):
        class Meta:
            app_label = "testapp"

        parent = models.ForeignKey(Parent, models.CASCADE, related_name="children")
        parent_name = models.CharField(max_length=10)

        @maintained_field("parent_name", depends_on=["parent__name"])
        def compute(self):
            return ""

    assert messages(Parent, Child) == []

    class LoopParent(MaintainedModel):
        class Meta:
            app_label = "testapp"

        child_count = models.IntegerField(default=0)

        @maintained_field("child_count", depends_on=["children"])
        def compute(self):
            return 0

    class LoopChild(MaintainedModel):
        class Meta:
            app_label = "testapp"

        parent = models.ForeignKey(LoopParent, models.CASCADE, related_name="children")
        parent_total = models.IntegerField(default=0)

        @maintained_field("parent_total", depends_on=["parent"])
        def compute(self):
            return 0

    errors = build([LoopParent, LoopChild]).errors
    assert [(e.id, e.msg) for e in errors] == [
        (
            "maintained_fields.E004",
            "Maintained fields depend on each other in a cycle: testapp.LoopChild.parent_total "
            "-> testapp.LoopParent.child_count -> testapp.LoopChild.parent_total.",
        )
    ]
    assert "depends_on=['study__name']" in errors[0].hint


@isolate_apps("tests.testapp")
def test_model_whose_save_does_not_run_the_mixin():
    class Plain(models.Model):
        class Meta:
            app_label = "testapp"

        count = models.IntegerField(default=0)

        @maintained_field("count")
        def compute(self):
            return 1

    class Misordered(models.Model, MaintainedModelMixin):
        class Meta:
            app_label = "testapp"

        count = models.IntegerField(default=0)

        @maintained_field("count")
        def compute(self):
            return 1

    assert messages(Plain, Misordered) == [
        (
            "maintained_fields.E005",
            "testapp.Plain has maintained fields but does not inherit from MaintainedModel "
            "or MaintainedModelMixin.",
        ),
        (
            "maintained_fields.E005",
            "testapp.Misordered has maintained fields but lists MaintainedModelMixin after "
            "models.Model in its bases, so save() never reaches it.",
        ),
    ]


@isolate_apps("tests.testapp")
def test_mixin_first_on_another_base_is_fine():
    class Stamped(models.Model):
        class Meta:
            abstract = True
            app_label = "testapp"

    class Box(MaintainedModelMixin, Stamped):
        class Meta:
            app_label = "testapp"

        name = models.CharField(max_length=10)
        code = models.CharField(max_length=10)

        @maintained_field("code", depends_on=["name"])
        def compute(self):
            return self.name.upper()

    assert messages(Box) == []


def test_plain_dependency_without_the_manager_is_warned_about():
    from django.test.utils import isolate_apps

    from maintained_fields import MaintainedManager, graph
    from maintained_fields.checks import check_managers

    with isolate_apps("tests.testapp"):

        class Owner(MaintainedModel):
            count = models.IntegerField(default=0)

            @maintained_field("count", depends_on=["items", "managed_items"])
            def compute(self):
                return 0

            class Meta:
                app_label = "testapp"

        class Item(models.Model):
            owner = models.ForeignKey(Owner, models.CASCADE, related_name="items")

            class Meta:
                app_label = "testapp"

        class ManagedItem(models.Model):
            owner = models.ForeignKey(Owner, models.CASCADE, related_name="managed_items")
            objects = MaintainedManager()

            class Meta:
                app_label = "testapp"

        built = build([Owner, Item, ManagedItem])
        saved, graph._graph = graph._graph, built
        try:
            found = [(w.id, w.msg) for w in check_managers()]
        finally:
            graph._graph = saved
    assert found == [
        (
            "maintained_fields.W001",
            "testapp.Item's default manager does not return a MaintainedQuerySet, so update(), "
            "bulk_create() and bulk_update() on it leave maintained fields stale.",
        ),
        (
            "maintained_fields.W002",
            "testapp.ManagedItem's base manager is not a MaintainedManager, so a reverse foreign key "
            "add(bulk=True), which updates rows through it, leaves maintained fields stale.",
        ),
    ]
