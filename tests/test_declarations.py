"""Mistakes in @maintained_field(...) are errors at declaration."""

import pytest

from maintained_fields import maintained_field
from maintained_fields.declarations import declarations_of


def test_depends_on_must_be_a_list_not_a_string():
    with pytest.raises(TypeError, match=r"depends_on=\['samples'\]"):
        maintained_field("count", depends_on="samples")


def test_decorator_needs_the_field_name():
    with pytest.raises(TypeError, match="name of the field"):

        @maintained_field
        def compute(self):
            return 1


def test_method_takes_only_self():
    with pytest.raises(TypeError, match="must take only self, but requires when"):

        @maintained_field("count")
        def compute(self, when):
            return 1


def test_bad_path_entries():
    with pytest.raises(TypeError, match="'samples__'"):
        maintained_field("count", depends_on=["samples__"])


def test_subclass_redefining_a_method_replaces_the_declaration():
    class Base:
        @maintained_field("count")
        def compute(self):
            return 1

    class Child(Base):
        def compute(self):
            return 2

    assert declarations_of(Base).keys() == {"compute"}
    assert declarations_of(Child) == {}


@pytest.mark.parametrize("kind", ["async", "generator"])
def test_compute_method_must_be_a_plain_function(kind):
    with pytest.raises(TypeError, match="compute methods run synchronously"):
        if kind == "async":

            @maintained_field("count")
            async def compute(self):
                return 1

        else:

            @maintained_field("count")
            def compute(self):
                yield 1


def test_pk_in_a_path_is_the_primary_key():
    from maintained_fields.graph import _resolve
    from tests.testapp.models import Lab

    hops = _resolve(Lab, "studies__pk")
    assert [hop.kind for hop in hops] == ["own", "reverse"] and hops[1].triggers == {"lab_id", "id"}
