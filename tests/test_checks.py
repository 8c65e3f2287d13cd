"""System checks report declaration mistakes with stable ids and exact messages."""

import pytest
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.test import override_settings
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
        (
            "maintained_fields.E001",
            "testapp.Box.compute() maintains 'cuont', which is not a field of testapp.Box. Did you mean 'count'?",
        )
    ]


@isolate_apps("tests.testapp")
@pytest.mark.parametrize("wrapper", [property, classmethod, staticmethod])
def test_a_method_hidden_by_another_decorator(wrapper):
    compute = maintained_field("count", depends_on=["name"])(lambda self: 1)
    compute.__qualname__ = "Bin.compute"
    Bin = type(
        "Bin",
        (MaintainedModel,),
        {
            "__module__": __name__,
            "Meta": type("Meta", (), {"app_label": "testapp"}),
            "name": models.CharField(max_length=10),
            "count": models.IntegerField(default=0),
            "compute": wrapper(compute),
        },
    )

    assert messages(Bin) == [
        (
            "maintained_fields.E015",
            f"testapp.Bin.compute is a @maintained_field method wrapped in {wrapper.__name__}, "
            "which hides it: its field would never be maintained.",
        )
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
            "of a path can be a field. Did you mean 'crate__shelf__name'?",
        ),
    ]


@isolate_apps("tests.testapp")
def test_a_path_that_does_not_resolve_names_the_likely_one():
    class Book(MaintainedModel):
        class Meta:
            app_label = "testapp"

        title = models.CharField(max_length=10)
        page_count = models.IntegerField(default=0)

        @maintained_field("page_count", depends_on=["chapter__page_count"])
        def compute(self):
            return 0

    class Chapter(models.Model):
        class Meta:
            app_label = "testapp"

        book = models.ForeignKey(Book, models.CASCADE, related_name="chapters")
        page_count = models.IntegerField(default=0)

    class Note(MaintainedModel):
        class Meta:
            app_label = "testapp"

        chapter = models.ForeignKey(Chapter, models.CASCADE)
        text = models.CharField(max_length=10)

        @maintained_field("text", depends_on=["chapter__book__titel"])
        def compute(self):
            return ""

    assert messages(Book, Chapter, Note) == [
        (
            "maintained_fields.E002",
            "testapp.Book.compute() depends on 'chapter__page_count', which does not resolve: "
            "testapp.Book has no field or relation 'chapter'. Did you mean 'chapters__page_count'?",
        ),
        (
            "maintained_fields.E002",
            "testapp.Note.compute() depends on 'chapter__book__titel', which does not resolve: "
            "testapp.Book has no field or relation 'titel'. Did you mean 'chapter__book__title'?",
        ),
    ]
    # Nothing alike: no guess.
    with isolate_apps("tests.testapp"):

        class Shelf(MaintainedModel):
            class Meta:
                app_label = "testapp"

            count = models.IntegerField(default=0)

            @maintained_field("count", depends_on=["boxes"])
            def compute(self):
                return 0

        assert messages(Shelf)[0][1].endswith("testapp.Shelf has no field or relation 'boxes'.")


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
        ("maintained_fields.E003", "testapp.Box.count is maintained twice: by first() and by second().")
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


def looping_pair(prefix):
    """A parent counting its children, whose children copy the whole parent: a cycle."""

    def compute_total(self):
        return 0

    def compute_copy(self):
        return 0

    meta = type("Meta", (), {"app_label": "testapp"})
    parent = type(
        f"{prefix}Parent",
        (MaintainedModel,),
        {
            "__module__": __name__,
            "Meta": meta,
            "total": models.IntegerField(default=0),
            "compute": maintained_field("total", depends_on=["children"])(compute_total),
        },
    )
    child = type(
        f"{prefix}Child",
        (MaintainedModel,),
        {
            "__module__": __name__,
            "Meta": meta,
            "parent": models.ForeignKey(parent, models.CASCADE, related_name="children"),
            "copy": models.IntegerField(default=0),
            "compute": maintained_field("copy", depends_on=["parent"])(compute_copy),
        },
    )
    return parent, child


@isolate_apps("tests.testapp")
def test_every_cycle_is_reported_at_once():
    errors = build([*looping_pair("A"), *looping_pair("B")]).errors
    assert [(e.id, e.msg.rpartition("cycle: ")[2]) for e in errors] == [
        ("maintained_fields.E004", "testapp.AChild.copy -> testapp.AParent.total -> testapp.AChild.copy."),
        ("maintained_fields.E004", "testapp.BChild.copy -> testapp.BParent.total -> testapp.BChild.copy."),
    ]


@isolate_apps("tests.testapp")
def test_multi_table_inheritance_is_an_error():
    class Place(models.Model):
        class Meta:
            app_label = "testapp"

        name = models.CharField(max_length=10)

    class Bistro(MaintainedModelMixin, Place):
        class Meta:
            app_label = "testapp"

        label = models.CharField(max_length=10)

        @maintained_field("label", depends_on=["name"])
        def compute(self):
            return self.name

    assert messages(Place, Bistro) == [
        (
            "maintained_fields.E006",
            "testapp.Bistro has or depends on maintained fields, but testapp.Bistro inherits from "
            "testapp.Place through multi-table inheritance, which maintained fields do not support: "
            "a write through one of the two tables is not seen on the other.",
        )
    ]


@pytest.mark.skipif(not hasattr(models, "DB_CASCADE"), reason="database-level on_delete is new in Django 6.1")
@isolate_apps("tests.testapp")
def test_database_level_on_delete_is_an_error():
    class Crate(MaintainedModel):
        class Meta:
            app_label = "testapp"

        bottle_count = models.IntegerField(default=0)

        @maintained_field("bottle_count", depends_on=["bottles"])
        def compute(self):
            return 0

    class Bottle(models.Model):
        class Meta:
            app_label = "testapp"

        crate = models.ForeignKey(Crate, models.DB_CASCADE, related_name="bottles")

    assert messages(Crate, Bottle) == [
        (
            "maintained_fields.E007",
            "testapp.Bottle.crate has on_delete=DB_CASCADE: the database changes testapp.Bottle rows "
            "without signals, so the maintained fields that read them would go stale.",
        )
    ]


def test_not_installed_is_an_error_at_check_and_at_the_first_write(db):
    from maintained_fields import graph
    from maintained_fields.checks import check_installed
    from tests.drift.models import Shelf

    apps_without = [app for app in settings.INSTALLED_APPS if app != "maintained_fields"]
    built, graph._graph = graph._graph, None
    try:
        with override_settings(INSTALLED_APPS=apps_without):
            assert [e.id for e in check_installed()] == ["maintained_fields.E008"]
            with pytest.raises(ImproperlyConfigured, match='Add "maintained_fields" to INSTALLED_APPS'):
                Shelf.objects.create(name="a")
    finally:
        graph._graph = built
    assert check_installed() == []


@isolate_apps("tests.testapp")
def test_generic_relations_proxies_and_generated_fields_are_errors():
    from django.contrib.contenttypes.fields import GenericForeignKey, GenericRelation

    class Remark(models.Model):
        class Meta:
            app_label = "testapp"

        kind = models.ForeignKey("contenttypes.ContentType", models.CASCADE)
        object_id = models.PositiveIntegerField()
        target = GenericForeignKey("kind", "object_id")

    class Paper(MaintainedModel):
        class Meta:
            app_label = "testapp"

        remarks = GenericRelation(Remark, content_type_field="kind")
        remark_count = models.IntegerField(default=0)
        size = models.IntegerField(default=0)
        double = models.GeneratedField(
            expression=models.F("size") * 2, output_field=models.IntegerField(), db_persist=True
        )

        @maintained_field("remark_count", depends_on=["remarks"])
        def compute_remark_count(self):
            return self.remarks.count()

        @maintained_field("double", depends_on=["size"])
        def compute_double(self):
            return self.size * 2

    class PaperProxy(Paper):
        class Meta:
            app_label = "testapp"
            proxy = True

        @maintained_field("size")
        def compute_size(self):
            return 1

    assert [(id, msg.split(": ")[0]) for id, msg in messages(Remark, Paper, PaperProxy)] == [
        ("maintained_fields.E002", "testapp.Paper.compute_remark_count() depends on 'remarks', which does not resolve"),
        (
            "maintained_fields.E001",
            "testapp.Paper.compute_double() maintains 'double', which is not a column that can be written "
            "(a primary key, generated field, many-to-many or reverse relation).",
        ),
        (
            "maintained_fields.E009",
            "testapp.PaperProxy declares maintained fields, but it is a proxy model",
        ),
    ]


@isolate_apps("tests.testapp")
def test_a_cycle_beside_another_maintained_field_of_its_model_is_reported():
    # Found by a new user: the cycle crashed graph building with a KeyError
    # as soon as the model had one more maintained field, outside the cycle.
    from django.db.models import Count

    from maintained_fields import maintained

    class Parent(MaintainedModel):
        class Meta:
            app_label = "testapp"

        n = models.IntegerField(default=0)
        m = maintained(models.IntegerField(default=0), Count("kids"))

        @maintained_field("n", depends_on=["kids"])
        def compute_n(self):
            return 0

    class Kid(MaintainedModel):
        class Meta:
            app_label = "testapp"

        parent = models.ForeignKey(Parent, models.CASCADE, related_name="kids")
        parent_n = models.IntegerField(default=0)

        @maintained_field("parent_n", depends_on=["parent"])
        def compute_parent_n(self):
            return 0

    assert messages(Parent, Kid) == [
        (
            "maintained_fields.E004",
            "Maintained fields depend on each other in a cycle: testapp.Kid.parent_n "
            "-> testapp.Parent.n -> testapp.Kid.parent_n.",
        )
    ]


@isolate_apps("tests.testapp")
def test_a_misspelt_field_after_a_relation_in_an_expression_is_an_error():
    # Found by a new user: Upper("product__nam") passed the checks, and every
    # write then failed with Django's FieldError.
    from django.db.models import Count, F, Q
    from django.db.models.functions import Upper

    from maintained_fields import maintained

    class Product(MaintainedModel):
        class Meta:
            app_label = "testapp"

        name = models.CharField(max_length=10)
        line_count = maintained(models.IntegerField(default=0), Count("lines", filter=Q(lines__isnull=False)))

    class Line(MaintainedModel):
        class Meta:
            app_label = "testapp"

        product = models.ForeignKey(Product, models.CASCADE, related_name="lines")
        product_name = maintained(models.CharField(max_length=10, default=""), Upper("product__nam"))
        copy = maintained(models.CharField(max_length=10, default=""), F("product__name"))

    assert [(id, msg.split(",")[0]) for id, msg in messages(Product, Line)] == [
        ("maintained_fields.E002", "testapp.Line.product_name's maintained() expression depends on 'product__nam'"),
    ]


@isolate_apps("tests.testapp")
def test_a_declared_method_replaced_without_the_decorator():
    # From an outside tester: the field was silently never maintained, and
    # no check said so.
    class Base(MaintainedModel):
        class Meta:
            app_label = "testapp"
            abstract = True

        name = models.CharField(max_length=10)
        up = models.CharField(max_length=20, default="")
        low = models.CharField(max_length=20, default="")

        @maintained_field("up", depends_on=["name"])
        def compute(self):
            return self.name.upper()

    class Overridden(Base):
        class Meta:
            app_label = "testapp"

        def compute(self):
            return self.name.lower()

    class Twice(MaintainedModel):
        class Meta:
            app_label = "testapp"

        name = models.CharField(max_length=10)
        up = models.CharField(max_length=20, default="")
        low = models.CharField(max_length=20, default="")

        @maintained_field("up", depends_on=["name"])
        def compute(self):
            return self.name.upper()

        @maintained_field("low", depends_on=["name"])
        def compute(self):  # noqa: F811  (the mistake under test)
            return self.name.lower()

    class Redeclared(Base):
        class Meta:
            app_label = "testapp"

        @maintained_field("up", depends_on=["name"])
        def compute(self):
            return self.name.title()

    class Replaced(MaintainedModel):
        class Meta:
            app_label = "testapp"

        name = models.CharField(max_length=10)
        up = models.CharField(max_length=20, default="")

        @maintained_field("up", depends_on=["name"])
        def compute(self):
            return self.name.upper()

        def compute(self):  # noqa: F811  (the mistake under test)
            return "x"

    class Proxied(Redeclared):
        class Meta:
            app_label = "testapp"
            proxy = True

        def compute(self):
            return "proxy"

    assert messages(Overridden, Twice, Redeclared, Replaced, Proxied) == [
        (
            "maintained_fields.E016",
            "testapp.Base.compute() is declared to maintain testapp.Overridden.up, but a later definition "
            "of compute replaces it: the field would never be maintained.",
        ),
        (
            "maintained_fields.E016",
            "testapp.Twice.compute() is declared to maintain testapp.Twice.up, but a later definition "
            "of compute replaces it: the field would never be maintained.",
        ),
        (
            "maintained_fields.E016",
            "testapp.Replaced.compute() is declared to maintain testapp.Replaced.up, but a later definition "
            "of compute replaces it: the field would never be maintained.",
        ),
        (
            "maintained_fields.E016",
            "testapp.Proxied.compute replaces testapp.Redeclared.compute(), which maintains testapp.Redeclared.up: "
            "a save through the proxy would compute the field otherwise than one through testapp.Redeclared.",
        ),
    ]
