import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.serverproject.settings")
app = Celery("serverproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["tests.serverproject"])
if os.environ.get("MAINTAINED_FIELDS_BACKGROUND") == "celery":
    app.autodiscover_tasks(["maintained_fields"])
