"""Settings for the test suite: SQLite unless DATABASE_URL names another database.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test python runtests.py
    DATABASE_URL=mysql://root@127.0.0.1:3306/test python runtests.py
"""

import os
import sys
from pathlib import Path

import dj_database_url
import django

SECRET_KEY = "tests"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "maintained_fields",
    "tests.testapp",
    "tests.drift",
    "tests.expressions",
    "tests.modelcheck",
    "tests.ownrow",
    "tests.composite",
    "tests.chain",
    "tests.columns",
    # Models defined by the docs' own code blocks (tests/doc_blocks.py).
    "tests.docs_readme",
    "tests.docs_quickstart",
    "tests.docs_expressions",
    "tests.docs_migrating",
]
# The example project's tracebase app (TraceBase's schema and loader, tests/test_tracebase.py),
# imported from example/ as the example project imports it.
EXAMPLE = Path(__file__).resolve().parent.parent / "example"
if (EXAMPLE / "tracebase").is_dir():
    sys.path.append(str(EXAMPLE))
    INSTALLED_APPS.append("tracebase")
# The background mode's tasks: Django's own framework from 6.0, its backport before.
TASKS_PACKAGE = "django.tasks" if django.VERSION >= (6, 0) else "django_tasks"
if TASKS_PACKAGE == "django_tasks":
    INSTALLED_APPS.append("django_tasks")
# The table of django-tasks-db, whose worker the background tests run on PostgreSQL.
INSTALLED_APPS.append("django_tasks_db")
TASKS = {
    "default": {"BACKEND": f"{TASKS_PACKAGE}.backends.immediate.ImmediateBackend"},
    "dummy": {"BACKEND": f"{TASKS_PACKAGE}.backends.dummy.DummyBackend"},
}
DATABASES = {"default": dj_database_url.parse(os.environ.get("DATABASE_URL") or "sqlite://:memory:")}
if DATABASES["default"]["ENGINE"].endswith("mysql"):
    DATABASES["default"]["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
# A second database, for the tests of work written where its rows live; named
# after the first, so that runs against two database names share nothing.
DATABASES["other"] = {
    **DATABASES["default"],
    "NAME": ":memory:" if DATABASES["default"]["NAME"] == ":memory:" else f"{DATABASES['default']['NAME']}_other",
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING_CONFIG = None
ROOT_URLCONF = "tests.urls"
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
