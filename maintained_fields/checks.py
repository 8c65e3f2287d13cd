"""System checks for declarations: ``maintained_fields.E001`` to ``E005``.

| id   | problem                                                        |
| E001 | the maintained field is not a writable column of the model     |
| E002 | a ``depends_on`` path does not resolve                         |
| E003 | two methods maintain one field                                 |
| E004 | maintained fields depend on each other in a cycle              |
| E005 | the model's save() does not run MaintainedModelMixin's         |
"""

from __future__ import annotations

from typing import Any

from django.core import checks

from .graph import get_graph


@checks.register(checks.Tags.models)
def check_declarations(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors = get_graph().errors
    if app_configs is None:
        return list(errors)
    return [e for e in errors if e.obj._meta.app_config in app_configs]
