"""A migration operation that recomputes maintained fields."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import apps as installed_apps
from django.db import models
from django.db.migrations.operations.base import Operation

from .conf import get_config
from .graph import get_graph
from .writes import batches, update_rows


class RecomputeMaintainedFields(Operation):
    """Recompute maintained fields of one model in a migration.

    Put it in the migration that adds a maintained column, after the
    ``AddField``::

        operations = [
            migrations.AddField("study", "sample_count", models.IntegerField(default=0)),
            RecomputeMaintainedFields("study", fields=["sample_count"]),
        ]

    The rows are the migration's historical ones, which lack the decorated
    methods: the model's current ``@maintained_field`` methods are run on them,
    so a method should reach other rows through ``self``'s relations.  Values
    that change are not propagated to other models; list one operation per
    model, children before parents.  Reversing it does nothing.
    """

    reversible = True
    reduces_to_sql = False

    def __init__(self, model_name: str, fields: Sequence[str] | None = None) -> None:
        if not isinstance(model_name, str) or not model_name:
            raise TypeError(f"RecomputeMaintainedFields() takes a model name first, e.g. 'Study', not {model_name!r}.")
        if isinstance(fields, str) or (fields is not None and not all(isinstance(f, str) and f for f in fields)):
            raise TypeError(
                f"RecomputeMaintainedFields({model_name!r}) takes fields as a list of field names, "
                f"e.g. fields=[{fields!r}], not {fields!r}."
            )
        self.model_name = model_name
        self.fields = list(fields) if fields is not None else None

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        kwargs = {} if self.fields is None else {"fields": self.fields}
        return self.__class__.__qualname__, [self.model_name], kwargs

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        historical = to_state.apps.get_model(app_label, self.model_name)
        db = schema_editor.connection.alias
        if not self.allow_migrate_model(db, historical):
            return
        current = installed_apps.get_model(app_label, self.model_name)._meta.concrete_model
        specs = [spec for spec in get_graph().specs if spec.model is current]
        if self.fields is not None:
            unknown = sorted(set(self.fields) - {spec.field.name for spec in specs})
            if unknown:
                raise ValueError(
                    f"RecomputeMaintainedFields({self.model_name!r}): {', '.join(unknown)} "
                    f"is not a maintained field of {current._meta.label}."
                )
            specs = [spec for spec in specs if spec.field.name in self.fields]
        size = get_config()["BATCH_SIZE"]
        for batch in batches(models.QuerySet(historical, using=db), size):
            update_rows(historical, db, batch, lambda row: specs, size)

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        pass

    def describe(self) -> str:
        return f"Recompute maintained fields of {self.model_name}"

    @property
    def migration_name_fragment(self) -> str:
        return f"recompute_{self.model_name.lower()}"
