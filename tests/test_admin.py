"""Curators editing in the admin: values stay right, and can be repaired there."""

import re

import pytest
from django.contrib.auth.models import Permission, User

from maintained_fields import override_autoupdate
from tests.conftest import fresh
from tests.testapp.models import Sample, Study, Tag

pytestmark = pytest.mark.django_db


def test_maintained_fields_are_read_only(admin_client, study):
    page = admin_client.get(f"/admin/testapp/study/{study.pk}/change/").content.decode()
    assert 'name="name"' in page
    assert 'name="sample_count"' not in page and 'name="summary"' not in page
    assert "Soil survey: 0 samples" in page  # shown, not editable


def test_maintained_fields_of_an_inline_are_read_only(admin_client, study):
    Sample.objects.create(study=study, name="a1")
    page = admin_client.get(f"/admin/testapp/study/{study.pk}/change/").content.decode()
    assert 'name="samples-0-name"' in page
    assert 'name="samples-0-code"' not in page  # the mixin on an inline: shown, not editable
    assert "A1" in page


def test_editing_in_the_admin_with_inlines_and_many_to_many(admin_client, study):
    tag = Tag.objects.create(name="red")
    response = admin_client.post(
        f"/admin/testapp/study/{study.pk}/change/",
        {
            "name": "Renamed",
            "lab": study.lab_id,
            "tags": [tag.pk],
            "samples-TOTAL_FORMS": "1",
            "samples-INITIAL_FORMS": "0",
            "samples-0-name": "new sample",
            "samples-0-weight": "2.5",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    study = fresh(study)
    assert (study.name, study.sample_count, study.tag_names, study.slug) == ("Renamed", 1, "red", "renamed")
    assert Sample.objects.get().study_name == "Renamed"
    assert fresh(tag).study_count == 1


def test_recompute_action(admin_client, lab):
    with override_autoupdate(mode="disabled"):
        study = Study.objects.create(name="Loaded", lab=lab)
        Sample.objects.create(study=study, name="a")
    response = admin_client.post(
        "/admin/testapp/study/",
        {"action": "recompute_maintained_fields", "_selected_action": [study.pk]},
        follow=True,
    )
    assert "Recomputed the maintained fields of 1 study." in response.content.decode()
    assert fresh(study).sample_count == 1
    assert fresh(lab).sample_total == 1


def test_maintained_fields_are_read_only_in_declaration_order(admin_client, study):
    page = admin_client.get(f"/admin/testapp/study/{study.pk}/change/").content.decode()
    shown = re.findall(r'class="form-row field-(\w+)', page)
    # StudyAdmin's own readonly_fields ("slug") first, then Study's other
    # maintained fields as the model declares them.
    assert shown[shown.index("slug"):] == [
        "slug", "sample_count", "total_weight", "aliquot_volume", "tag_names", "project_names", "summary"
    ]


def test_recompute_action_needs_change_permission(client, lab):
    with override_autoupdate(mode="disabled"):
        study = Study.objects.create(name="Loaded", lab=lab)
        Sample.objects.create(study=study, name="a")
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_study", content_type__app_label="testapp"))
    client.force_login(viewer)
    page = client.get("/admin/testapp/study/").content.decode()
    assert f"/admin/testapp/study/{study.pk}/change/" in page  # the viewer sees the list...
    assert "recompute_maintained_fields" not in page  # ...but is not offered the action
    response = client.post(
        "/admin/testapp/study/",
        {"action": "recompute_maintained_fields", "_selected_action": [study.pk]},
        follow=True,
    )
    assert "Recomputed the maintained fields" not in response.content.decode()
    assert fresh(study).sample_count == 0  # still stale: nothing was recomputed
