"""The background mode: what is enqueued, when, with which arguments, and
what the task leaves in the columns (counted here, not by the package)."""

import json
import logging

import pytest
from django.db import transaction
from django.test import override_settings

from maintained_fields import get_autoupdate_mode, override_autoupdate
from maintained_fields.conf import tasks_framework
from tests.testapp.models import Lab, Sample, Study

DUMMY = {"TASKS_BACKEND": "dummy"}


@pytest.fixture
def queue():
    """The dummy backend's enqueued results, emptied before and after."""
    backend = tasks_framework().task_backends["dummy"]
    backend.clear()
    yield backend.results
    backend.clear()


def counts():
    """Each study's stored sample_count, and what it must hold."""
    return {
        study.pk: (study.sample_count, Sample.objects.filter(study=study).count())
        for study in Study.objects.all()
    }


def drift():
    return {pk: pair for pk, pair in counts().items() if pair[0] != pair[1]}


def run(results):
    """Run the enqueued tasks as a worker would, from their JSON arguments."""
    from maintained_fields.tasks import recompute_recorded

    for result in results:
        args = json.loads(json.dumps(list(result.args)))
        recompute_recorded.call(*args)


@pytest.fixture
def study(db):
    return Study.objects.create(name="Study", lab=Lab.objects.create(name="Lab"))


class TestMode:
    def test_reported_and_scoped(self, db):
        with override_autoupdate(mode="background"):
            assert get_autoupdate_mode() == "background"
        with override_settings(MAINTAINED_FIELDS={"DEFAULT_MODE": "background"}):
            assert get_autoupdate_mode() == "background"


@pytest.fixture
def dummy(settings):
    """Tasks go to the dummy backend, which keeps them for the test to run."""
    settings.MAINTAINED_FIELDS = DUMMY


@pytest.mark.usefixtures("dummy")
class TestScope:
    def test_the_writer_recomputes_nothing_and_the_task_everything(self, study, queue,
                                                                   django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=True):
            with override_autoupdate(mode="background"):
                for n in range(3):
                    Sample.objects.create(study=study, name=f"s{n}")
            assert drift() == {study.pk: (0, 3)}
            assert queue == []  # enqueued on commit, not before
        assert len(queue) == 1
        assert drift() == {study.pk: (0, 3)}
        run(queue)
        assert drift() == {}
        assert Lab.objects.get().sample_total == 3

    def test_the_arguments_are_json(self, study, queue, django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=True):
            with override_autoupdate(mode="background", labels=["counts"]):
                Sample.objects.create(study=study, name="a")
        (result,) = queue
        database, labels, records = result.args
        assert json.loads(json.dumps(result.args)) == [database, labels, records]
        assert (database, labels) == ("default", ["counts"])
        assert ["testapp.Study", "sample_count", "samples", 0, [study.pk]] in records

    def test_a_rollback_enqueues_nothing(self, study, queue, django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=True):
            with pytest.raises(KeyError):
                with transaction.atomic(), override_autoupdate(mode="background"):
                    Sample.objects.create(study=study, name="a")
                    raise KeyError
        assert queue == []

    def test_the_task_is_idempotent(self, study, queue, django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=True):
            with override_autoupdate(mode="background"):
                first = Sample.objects.create(study=study, name="a")
                Sample.objects.create(study=study, name="b")
        run(queue)
        first.delete()  # immediate: the study is right again at once
        run(queue)  # a late duplicate of the same task
        assert drift() == {}
        Study.objects.filter(pk=study.pk).delete()
        run(queue)  # the rows are gone: nothing to do, no error
        assert Study.objects.count() == 0

    def test_large_work_is_split(self, db, queue, monkeypatch, django_capture_on_commit_callbacks):
        monkeypatch.setattr("maintained_fields.background.KEYS_PER_TASK", 2)
        lab = Lab.objects.create(name="Lab")
        studies = [Study.objects.create(name=f"S{n}", lab=lab) for n in range(5)]
        with django_capture_on_commit_callbacks(execute=True):
            with override_autoupdate(mode="background", labels=["counts"]):
                for study in studies:
                    Sample.objects.create(study=study, name="a")
        assert len(queue) >= 3
        assert all(sum(len(entry[-1]) for entry in result.args[2]) <= 2 for result in queue)
        run(queue)
        assert drift() == {}


@pytest.mark.usefixtures("dummy")
class TestNesting:
    def test_inside_deferred_it_joins_the_deferred_buffer(self, study, queue,
                                                           django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=True):
            with override_autoupdate(mode="deferred"):
                with override_autoupdate(mode="background"):
                    Sample.objects.create(study=study, name="a")
                assert drift() == {study.pk: (0, 1)}
            assert drift() == {}
        assert queue == []

    def test_deferred_inside_background_flushes_at_its_own_end(self, study, queue,
                                                                django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=True):
            with override_autoupdate(mode="background"):
                with override_autoupdate(mode="deferred"):
                    Sample.objects.create(study=study, name="a")
                assert drift() == {}
        assert queue == []

    def test_disabled_inside_background_records_nothing(self, study, queue,
                                                         django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=True):
            with override_autoupdate(mode="background"):
                with override_autoupdate(mode="disabled"):
                    Sample.objects.create(study=study, name="a")
        assert queue == []
        assert drift() == {study.pk: (0, 1)}


@pytest.fixture
def background_default(settings):
    settings.MAINTAINED_FIELDS = {**DUMMY, "DEFAULT_MODE": "background"}


@pytest.mark.usefixtures("background_default")
@pytest.mark.django_db(transaction=True)  # commits for real: the outermost transaction is the test's own
class TestDefaultMode:
    @pytest.fixture
    def study(self, queue):
        with override_autoupdate(mode="immediate"):
            return Study.objects.create(name="Study", lab=Lab.objects.create(name="Lab"))

    def test_one_task_per_transaction_on_commit(self, study, queue):
        with transaction.atomic():
            Sample.objects.create(study=study, name="a")
            Sample.objects.create(study=study, name="b")
            assert queue == []
        assert len(queue) == 1
        run(queue)
        assert drift() == {}

    def test_a_rolled_back_transaction_leaves_nothing_behind(self, study, queue):
        with pytest.raises(KeyError):
            with transaction.atomic():
                Sample.objects.create(study=study, name="gone")
                raise KeyError
        assert queue == []
        with transaction.atomic():
            Sample.objects.create(study=study, name="kept")
        assert len(queue) == 1
        run(queue)
        assert drift() == {}

    def test_a_write_in_autocommit_is_enqueued_at_once(self, study, queue):
        Sample.objects.create(study=study, name="a")
        assert len(queue) == 1
        run(queue)
        assert drift() == {}


def test_a_failed_enqueue_is_done_at_once_and_logged(study, settings, caplog, django_capture_on_commit_callbacks):
    settings.MAINTAINED_FIELDS = {"TASKS_BACKEND": "down"}
    settings.TASKS = {**settings.TASKS, "down": {"BACKEND": "tests.broken_tasks.DownBackend"}}
    with caplog.at_level(logging.WARNING, logger="maintained_fields"):
        with django_capture_on_commit_callbacks(execute=True):
            with override_autoupdate(mode="background"):
                Sample.objects.create(study=study, name="a")
    assert drift() == {}
    assert "Could not enqueue" in caplog.text and "broker is down" in caplog.text


def test_with_the_immediate_backend_the_columns_are_right_after_commit(study, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        with override_autoupdate(mode="background"):
            Sample.objects.create(study=study, name="a")
        assert drift() == {study.pk: (0, 1)}
    assert drift() == {}


def test_the_check_says_background_columns_are_eventually_consistent(study, settings):
    from django.core.management import CommandError, call_command

    settings.MAINTAINED_FIELDS = {**DUMMY, "DEFAULT_MODE": "background"}
    Sample.objects.create(study=study, name="pending")  # its task is in the dummy queue
    with pytest.raises(CommandError, match=r"\d+ maintained value.*'background'.*queue is empty"):
        call_command("check_maintained_fields", stdout=__import__("io").StringIO())


def test_an_unknown_backend_alias_is_a_failed_enqueue(study, settings, caplog, django_capture_on_commit_callbacks):
    settings.MAINTAINED_FIELDS = {"TASKS_BACKEND": "nowhere"}
    with caplog.at_level(logging.WARNING, logger="maintained_fields"):
        with django_capture_on_commit_callbacks(execute=True):
            with override_autoupdate(mode="background"):
                Sample.objects.create(study=study, name="a")
    assert drift() == {}
    assert "Could not enqueue" in caplog.text and "nowhere" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_under_manual_transactions_the_writer_recomputes(settings, queue):
    # Nothing tells when such a transaction commits: a worker could read the rows before it.
    settings.MAINTAINED_FIELDS = {**DUMMY, "DEFAULT_MODE": "background"}
    with override_autoupdate(mode="immediate"):
        study = Study.objects.create(name="Study", lab=Lab.objects.create(name="Lab"))
    transaction.set_autocommit(False)
    try:
        Sample.objects.create(study=study, name="a")
        assert drift() == {}
        transaction.commit()
    finally:
        transaction.set_autocommit(True)
    assert queue == []
    assert drift() == {}


@pytest.mark.parametrize(
    "config, named",
    [({"TASKS_BACKEND": "nope"}, "TASKS_BACKEND'] is 'nope'"),
     ({"TASKS_BACKEND": "dummy", "TASKS_QUEUE": "nope"}, "TASKS_QUEUE'] is 'nope'")],
)
def test_the_check_names_an_unusable_backend_or_queue(settings, config, named):
    from maintained_fields.checks import check_tasks

    settings.MAINTAINED_FIELDS = config
    errors = check_tasks()
    assert [e.id for e in errors] == ["maintained_fields.E010"] and named in errors[0].msg


def test_the_check_accepts_the_test_settings(settings):
    from maintained_fields.checks import check_tasks

    settings.MAINTAINED_FIELDS = {**DUMMY, "TASKS_QUEUE": "default", "TASKS_PRIORITY": 5}
    assert check_tasks() == []


@pytest.fixture
def queued_in_the_database(settings):
    """The default mode is background, through django-tasks-db's backend,
    whose queue is a table of the test database."""
    settings.TASKS = {**settings.TASKS, "database": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    settings.MAINTAINED_FIELDS = {"TASKS_BACKEND": "database", "DEFAULT_MODE": "background"}


@pytest.mark.usefixtures("queued_in_the_database")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("write", ["create", "move", "delete", "queryset delete"])
def test_in_autocommit_a_write_and_its_task_commit_together(write):
    """A process that dies between the write's commit and the enqueue
    would lose the work: with the queue in the same database, there is no
    such moment."""
    import importlib

    from django.db import connection
    from django_tasks_db.models import DBTaskResult

    with override_autoupdate(mode="immediate"):
        lab = Lab.objects.create(name="Lab")
        first, second = (Study.objects.create(name=name, lab=lab) for name in "AB")
        sample = Sample.objects.create(study=first, name="s")
    seen = []

    def enqueued(sender, task_result, **kwargs):
        seen.append((connection.in_atomic_block, Sample.objects.filter(name="new").exists(),
                     Sample.objects.filter(pk=sample.pk).values_list("study", flat=True).first()))

    signals = importlib.import_module(tasks_framework().__name__ + ".signals")
    signals.task_enqueued.connect(enqueued)
    try:
        if write == "create":
            Sample.objects.create(study=second, name="new")
            expected = (True, True, first.pk)
        elif write == "move":
            sample.study = second
            sample.save()
            expected = (True, False, second.pk)
        elif write == "delete":
            sample.delete()
            expected = (True, False, None)
        else:
            Sample.objects.filter(pk=sample.pk).delete()
            expected = (True, False, None)
    finally:
        signals.task_enqueued.disconnect(enqueued)
    assert seen == [expected]  # one task, enqueued inside the write's transaction
    assert not connection.in_atomic_block
    run([row.task_result for row in DBTaskResult.objects.all()])
    assert drift() == {}
