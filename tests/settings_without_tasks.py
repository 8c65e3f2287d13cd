"""The test settings on a Django with no tasks framework installed."""

from tests.settings import *  # noqa: F403

INSTALLED_APPS = [app for app in INSTALLED_APPS if not app.startswith("django_tasks")]  # noqa: F405
del TASKS  # noqa: F821
