"""Admin support: maintained fields shown read-only, and an action to recompute them."""

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import model_ngettext
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from .graph import get_graph
from .propagation import process, recompute_records
from .writes import keys


@admin.action(description="Recompute maintained fields of the selected %(verbose_name_plural)s", permissions=["change"])
def recompute_maintained_fields(
    modeladmin: "admin.ModelAdmin[Any]", request: HttpRequest, queryset: "QuerySet[Any]"
) -> None:
    node = get_graph().node(queryset.model)
    specs = (*node.own_row, *node.related) if node else ()
    pks = list(keys(queryset.model, queryset.values_list("pk", flat=True)))
    process(queryset.db, None, recompute_records(specs, pks))
    modeladmin.message_user(
        request,
        f"Recomputed the maintained fields of {len(pks)} {model_ngettext(queryset.model._meta, len(pks))}.",
        messages.SUCCESS,
    )


class MaintainedModelAdminMixin:
    """For a ``ModelAdmin`` of a model with maintained fields.

    The maintained fields are shown read-only (the library writes them) and
    the action list gains "Recompute maintained fields", which repairs the
    selected rows and what depends on them.
    """

    # ModelAdmin's, which this mixin is combined with.
    model: type[Model]
    actions: Any

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        """The admin's own read-only fields, then the model's maintained fields
        in the order the model declares them."""
        fields = tuple(super().get_readonly_fields(request, obj))  # type: ignore[misc]
        node = get_graph().node(self.model)
        maintained = {s.field.name for s in (*node.own_row, *node.related)} if node else set()
        declared = [field.name for field in self.model._meta.fields]
        return fields + tuple(name for name in declared if name in maintained and name not in fields)

    def __init__(self, model: type[Model], admin_site: admin.AdminSite) -> None:
        super().__init__(model, admin_site)  # type: ignore[call-arg]  # ModelAdmin's, after this mixin
        # None turns a ModelAdmin's actions off; an inline has none.
        if getattr(self, "actions", None) is not None:
            self.actions = (*self.actions, recompute_maintained_fields)
