"""Sphinx configuration.

The build needs only the ``docs`` extra, and no network: the intersphinx
inventories of Python and Django come from Debian's documentation packages
(``apt-get install python3-doc python-django-doc``), read from disk.
"""

import glob
import os
import re
import sys
import tempfile
import zlib

sys.path.insert(0, os.path.abspath(".."))

import django  # noqa: E402
from django.conf import settings  # noqa: E402

# autodoc imports the package, whose modules need configured settings; the
# test settings would need the test extra, so the docs have their own.
settings.configure(
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "maintained_fields"],
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
)
django.setup()

import maintained_fields  # noqa: E402

project = "django-maintained-fields"
author = "The django-maintained-fields developers"
release = maintained_fields.__version__
version = ".".join(release.split(".")[:2])
extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
html_theme = "alabaster"
exclude_patterns = ["_build"]
nitpicky = True

DJANGO_DOCS = "https://docs.djangoproject.com/en/5.2/"


def _python_inventory():
    """Debian's inventory of the Python documentation (python3-doc), newest version first."""
    found = glob.glob("/usr/share/doc/python3.*/html/objects.inv")
    found.sort(key=lambda path: [int(n) for n in re.findall(r"\d+", path)])
    return found[-1] if found else None


def _django_inventory():
    """Debian's inventory of the Django documentation (python-django-doc), with djangoproject.com's URLs.

    Debian builds Django's docs with Sphinx's ``html`` builder (``ref/models/querysets.html#...``);
    docs.djangoproject.com serves the ``dirhtml`` layout (``ref/models/querysets/#...``).  The
    inventory is rewritten to the latter, in a temporary file.  Debian 12's package documents
    Django 3.2: the objects referenced here have kept their names and pages since.
    """
    source = "/usr/share/doc/python-django-doc/html/objects.inv"
    if not os.path.exists(source):
        return None
    with open(source, "rb") as f:
        header = b"".join(f.readline() for _ in range(4))
        body = zlib.decompress(f.read()).decode()
    uri = re.compile(r"^(\S+ \S+:\S+ -?\d+ )(\S*?)((?:index)?\.html)(#\S*)?( .*)$", re.MULTILINE)
    body = uri.sub(lambda m: f"{m[1]}{m[2]}{'' if not m[2] or m[2].endswith('/') else '/'}{m[4] or ''}{m[5]}", body)
    target = os.path.join(tempfile.gettempdir(), f"django-maintained-fields-django-{os.getuid()}.inv")
    with open(target, "wb") as f:
        f.write(header + zlib.compress(body.encode()))
    return target


_inventories = {"python3-doc": _python_inventory(), "python-django-doc": _django_inventory()}
_missing = " ".join(package for package, path in _inventories.items() if not path)
if _missing:
    raise RuntimeError(f"The docs link to Python's and Django's: install their inventories, apt-get install {_missing}")

intersphinx_mapping = {
    "python": ("https://docs.python.org/3/", _inventories["python3-doc"]),
    "django": (DJANGO_DOCS, _inventories["python-django-doc"]),
}

# Type hints name classes by the module that defines them; Django documents
# them under the module users import them from.
_DOCUMENTED_AS = {
    "django.db.models.base.Model": "django.db.models.Model",
    "django.db.models.fields.Field": "django.db.models.Field",
    "django.db.models.manager.Manager": "django.db.models.Manager",
    "django.contrib.admin.sites.AdminSite": "django.contrib.admin.AdminSite",
}


def _documented_as(app, env, node, contnode):
    name = node.get("reftarget", "")
    if name.startswith("maintained_fields.") and _is_type_variable(name):
        return contnode  # a type variable of a signature (the decorated method's type) has no page of its own
    target = _DOCUMENTED_AS.get(name)
    if target is None:
        return None
    from sphinx.ext.intersphinx import missing_reference

    node["reftarget"] = target
    return missing_reference(app, env, node, contnode)


def _is_type_variable(name):
    import importlib
    import typing

    module, _, attribute = name.rpartition(".")
    try:
        return isinstance(getattr(importlib.import_module(module), attribute), typing.TypeVar)
    except (ImportError, AttributeError):
        return False


def setup(app):
    app.connect("missing-reference", _documented_as, priority=400)
