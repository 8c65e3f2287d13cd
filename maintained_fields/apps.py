from django.apps import AppConfig, apps


class MaintainedFieldsConfig(AppConfig):
    name = "maintained_fields"
    verbose_name = "Maintained fields"

    def ready(self) -> None:
        from . import checks, conf, graph, tracking  # noqa: F401  (conf validates the setting)

        all_models = apps.get_models(include_auto_created=True)
        tracking.connect(graph.load(), all_models)
