import pytest

from tests.testapp.models import Lab, Study


@pytest.fixture
def lab(db):
    return Lab.objects.create(name="North")


@pytest.fixture
def study(lab):
    return Study.objects.create(name="Soil survey", lab=lab)


def fresh(instance):
    """The row as the database holds it now."""
    return type(instance)._base_manager.get(pk=instance.pk)


@pytest.fixture
def sql():
    """Capture the SQL run inside ``with sql() as queries:`` (a list of strings).

    MySQL's backquotes are written as double quotes, so that one expected
    statement fits every database.
    """
    from contextlib import contextmanager

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    @contextmanager
    def capture():
        statements = []
        with CaptureQueriesContext(connection) as context:
            yield statements
        statements.extend(q["sql"].replace("`", '"') for q in context.captured_queries)

    return capture


@pytest.fixture
def close_executor_connections():
    """sync_to_async runs the ORM in a long-lived executor thread: close its
    connection after the test, so the test database can be dropped."""
    yield
    import asyncio

    from asgiref.sync import sync_to_async
    from django.db import connections

    asyncio.run(sync_to_async(connections.close_all)())
