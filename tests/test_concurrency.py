"""Eight processes write children of the same three parents at once; the
parents' maintained values end right, with no deadlock."""

import pytest
from django.core.management import call_command
from django.db import connection

from tests.concurrency import database_url, run_workers
from tests.testapp.models import Lab, Sample, Study

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor == "sqlite",
        reason="concurrent writers need a database server: set DATABASE_URL (CI runs PostgreSQL and MariaDB)",
    ),
]


@pytest.mark.parametrize("mode", ["immediate", "deferred"])
def test_concurrent_writers_converge(mode):
    lab = Lab.objects.create(name="shared")
    for name in "abc":
        Study.objects.create(name=name, lab=lab)
    results = run_workers(database_url(connection.settings_dict), mode, workers=8, operations=40)
    failures = [output for code, output in results if code != 0]
    assert failures == [], failures[0][-3000:]  # a deadlock would fail a worker
    assert Sample.objects.exists()
    call_command("check_maintained_fields")  # raises CommandError on any drift
    assert Lab.objects.get().sample_total == Sample.objects.count()
