"""The server project: the test app's models behind views and Celery tasks.

The database is the one DATABASE_URL names (the test database, or a SQLite
file in WAL mode for a run on SQLite); Celery uses Redis on loopback.
"""

import os

import dj_database_url
import django

SECRET_KEY = "server-tests"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "maintained_fields", "tests.testapp"]
ROOT_URLCONF = "tests.serverproject.urls"
WSGI_APPLICATION = "tests.serverproject.wsgi.application"
ASGI_APPLICATION = "tests.serverproject.asgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
MIDDLEWARE = []
DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=0)}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Several processes write one file: queue on the write lock rather than fail.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 60,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14")
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
LOGGING_CONFIG = None

# The background mode's end-to-end test: writes in the background mode,
# recomputed by a worker of django-tasks-db ("db") or of Celery through
# django-tasks-fennel ("celery").  benchmarks/background.py sets the
# default mode of each of its runs.
BACKGROUND = os.environ.get("MAINTAINED_FIELDS_BACKGROUND")
MAINTAINED_FIELDS = {
    "DEFAULT_MODE": os.environ.get("MAINTAINED_FIELDS_DEFAULT_MODE") or ("background" if BACKGROUND else "immediate")
}
if BACKGROUND:
    if django.VERSION < (6, 0):
        INSTALLED_APPS.append("django_tasks")
    if BACKGROUND == "db":
        INSTALLED_APPS.append("django_tasks_db")
        TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    else:
        INSTALLED_APPS.append("django_tasks_fennel")
        TASKS = {"default": {"BACKEND": "django_tasks_fennel.CeleryBackend"}}
