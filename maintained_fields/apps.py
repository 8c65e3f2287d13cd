from django.apps import AppConfig, apps


class MaintainedFieldsConfig(AppConfig):
    name = "maintained_fields"
    verbose_name = "Maintained fields"

    def ready(self) -> None:
        from django.db import connections
        from django.db.backends.signals import connection_created

        from . import checks, conf, graph, tracking  # noqa: F401  (conf validates the setting)
        from .writes import add_sqlite_functions

        connection_created.connect(add_sqlite_functions, dispatch_uid="maintained_fields.sqlite_functions")
        for connection in connections.all(initialized_only=True):
            if connection.connection is not None:  # opened before this app was ready
                add_sqlite_functions(None, connection)
        all_models = apps.get_models(include_auto_created=True)
        tracking.connect(graph.load(), all_models)
