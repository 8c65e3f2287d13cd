"""What the installed distribution says about itself: version, supported versions, type hints.

These read the installed metadata, so in CI's run against the built wheel
they check the wheel itself.
"""

import re
from importlib import metadata, resources
from pathlib import Path

import maintained_fields

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION = "django-maintained-fields"


def classifiers():
    return metadata.metadata(DISTRIBUTION).get_all("Classifier")


def ci_matrix():
    """The (Python, Django) versions .ci/run tests: ("3.11", "5.2"), ..."""
    combos = re.findall(r'"(3\.\d+) >=(\d+\.\d+),<\S+ ', (ROOT / ".ci" / "run").read_text())
    assert combos, "no Python and Django combinations found in .ci/run"
    return combos


def test_the_distribution_and_the_package_have_one_version():
    assert metadata.version(DISTRIBUTION) == maintained_fields.__version__


def test_every_python_and_django_version_ci_tests_is_a_classifier():
    listed = set(classifiers())
    for python, django in ci_matrix():
        assert f"Programming Language :: Python :: {python}" in listed
        assert f"Framework :: Django :: {django}" in listed


def test_every_classifier_is_one_pypi_accepts():
    from trove_classifiers import classifiers as known

    assert set(classifiers()) <= known


def test_the_type_hints_are_shipped():
    assert resources.files("maintained_fields").joinpath("py.typed").is_file()
    assert "Typing :: Typed" in classifiers()


def test_the_changelog_has_an_entry_for_this_version():
    release = re.sub(r"\.dev\d+$", "", maintained_fields.__version__)
    assert re.search(rf"^{re.escape(release)} \(", (ROOT / "CHANGES.rst").read_text(), re.MULTILINE)
