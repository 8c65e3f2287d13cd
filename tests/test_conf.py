"""MAINTAINED_FIELDS: merged with the defaults, validated at start-up and when read."""

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from maintained_fields import get_autoupdate_mode
from maintained_fields.conf import get_config


def test_partial_dict_keeps_the_other_defaults():
    with override_settings(MAINTAINED_FIELDS={"BATCH_SIZE": 7}):
        assert get_config() == {
            "DEFAULT_MODE": "immediate",
            "BATCH_SIZE": 7,
            "LOCK_ROWS": True,
            "TASKS_BACKEND": None,
            "TASKS_QUEUE": None,
            "TASKS_PRIORITY": None,
        }


def test_missing_setting_means_the_defaults():
    with override_settings():
        from django.conf import settings

        del settings.MAINTAINED_FIELDS
        assert get_config()["DEFAULT_MODE"] == "immediate"


@pytest.mark.parametrize(
    "value, message",
    [
        ({"DEFUALT_MODE": "disabled"}, "unknown key(s) 'DEFUALT_MODE'"),
        ({"DEFAULT_MODE": "off"}, "DEFAULT_MODE'] is 'off'; use 'immediate', 'background' or 'disabled'"),
        ({"DEFAULT_MODE": "deferred"}, "the default has no end"),
        ({"BATCH_SIZE": 0}, "BATCH_SIZE'] is 0; use a positive integer"),
        ({"LOCK_ROWS": "yes"}, "LOCK_ROWS'] is 'yes'; use True or False"),
        (["DEFAULT_MODE"], "must be a dict, not list"),
        (None, "must be a dict, not None. To keep every default, leave the setting out or set it to {}"),
        ({"TASKS_PRIORITY": 101}, "TASKS_PRIORITY'] is 101; use an integer from -100 to 100"),
        ({"TASKS_PRIORITY": "high"}, "TASKS_PRIORITY'] is 'high'"),
        ({"TASKS_BACKEND": ""}, "TASKS_BACKEND'] is ''; use an alias of the TASKS setting"),
        ({"TASKS_QUEUE": 3}, "TASKS_QUEUE'] is 3; use a queue name"),
    ],
)
def test_bad_settings_name_the_key(value, message):
    with override_settings(MAINTAINED_FIELDS=value):
        with pytest.raises(ImproperlyConfigured) as excinfo:
            get_autoupdate_mode()
    assert message in str(excinfo.value)


def test_bad_settings_fail_at_start_up(tmp_path):
    import subprocess
    import sys

    (tmp_path / "bad_settings.py").write_text(
        "from tests.settings import *\nMAINTAINED_FIELDS = {'DEFAULT_MODE': 'sometimes'}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "bad_settings",
             "PYTHONPATH": f"{tmp_path}:{__import__('os').getcwd()}"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured: MAINTAINED_FIELDS['DEFAULT_MODE'] is 'sometimes'" in result.stderr


def test_the_background_mode_without_a_tasks_framework_says_what_to_install():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['django.tasks'] = sys.modules['django_tasks'] = None\n"
        "import django; django.setup()\n"
        "from maintained_fields import override_autoupdate\n"
        "override_autoupdate(mode='background')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "tests.settings_without_tasks"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "pip install django-tasks" in result.stderr
