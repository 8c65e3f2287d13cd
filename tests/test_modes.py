"""The three modes and how override_autoupdate scopes combine."""

import logging
from unittest import TestCase as PlainTestCase

import pytest
from django.core.management import BaseCommand, call_command
from django.db import connection, transaction
from django.test import TestCase, override_settings
from django.test.utils import CaptureQueriesContext

from maintained_fields import get_autoupdate_mode, override_autoupdate
from tests.conftest import fresh
from tests.testapp.models import Sample, Study


class TestArguments:
    def test_unknown_mode_is_rejected_at_the_call(self):
        with pytest.raises(ValueError, match="'deffered'.*'immediate', 'deferred', 'disabled'"):
            override_autoupdate(mode="deffered")

    @pytest.mark.parametrize("labels", [5, [None], ["counts", 5]])
    def test_labels_must_be_strings(self, labels):
        with pytest.raises(ValueError, match="a label string or a list of them"):
            override_autoupdate(labels=labels)

    def test_labels_must_not_be_empty(self):
        with pytest.raises(ValueError, match="mode='disabled'"):
            override_autoupdate(labels=[])

    def test_a_single_label_string_is_one_label(self, db):
        with override_autoupdate(labels="counts") as scope:
            assert scope.labels == frozenset({"counts"})

    def test_disable_when_is_for_decorators(self):
        with pytest.raises(TypeError, match="only as a decorator"):
            with override_autoupdate(mode="deferred", disable_when="dry_run"):
                pass

    def test_cannot_decorate_other_classes(self):
        with pytest.raises(TypeError, match="unittest.TestCase"):
            override_autoupdate(mode="disabled")(type("Loader", (), {}))


class TestModeInForce:
    def test_default_comes_from_settings(self):
        assert get_autoupdate_mode() == "immediate"
        with override_settings(MAINTAINED_FIELDS={"DEFAULT_MODE": "disabled"}):
            assert get_autoupdate_mode() == "disabled"
        assert get_autoupdate_mode() == "immediate"

    def test_scopes_nest_and_unwind(self):
        with override_autoupdate(mode="deferred"):
            with override_autoupdate(mode="disabled"):
                assert get_autoupdate_mode() == "disabled"
                with override_autoupdate(labels=["counts"]):
                    assert get_autoupdate_mode() == "disabled"
            assert get_autoupdate_mode() == "deferred"
        assert get_autoupdate_mode() == "immediate"

    def test_nothing_survives_an_exception(self):
        with pytest.raises(KeyError):
            with override_autoupdate(mode="disabled"):
                raise KeyError
        assert get_autoupdate_mode() == "immediate"

    def test_one_object_can_be_reentered(self):
        disabled = override_autoupdate(mode="disabled")
        with disabled:
            with override_autoupdate(mode="immediate"):
                with disabled:
                    assert get_autoupdate_mode() == "disabled"
                assert get_autoupdate_mode() == "immediate"
            assert get_autoupdate_mode() == "disabled"

    def test_exiting_out_of_order_is_an_error_that_leaves_no_scope_behind(self):
        outer, inner = override_autoupdate(mode="disabled"), override_autoupdate(mode="deferred")
        outer.__enter__()
        inner.__enter__()
        with pytest.raises(RuntimeError, match="reverse order"):
            outer.__exit__(None, None, None)
        inner.__exit__(None, None, None)
        assert get_autoupdate_mode() == "immediate"


@pytest.mark.django_db
class TestAGeneratorsScopeClosedInsideAnother:
    """A generator that yields inside a scope, closed while its consumer has
    a scope of its own open: the generator's scope exits out of order."""

    def test_the_scope_is_flushed_and_does_not_outlive_the_blocks(self, study, django_capture_on_commit_callbacks):
        def rows():
            with override_autoupdate(mode="deferred"):
                Sample.objects.create(study=study, name="in the generator")
                yield 1

        generator = rows()
        next(generator)
        # Flushed as a scope an exception ends: on commit, inside a transaction.
        with django_capture_on_commit_callbacks(execute=True), override_autoupdate(mode="disabled"):
            with pytest.raises(RuntimeError, match="not the innermost"):
                generator.close()
            assert get_autoupdate_mode() == "disabled"
        assert get_autoupdate_mode() == "immediate"
        assert fresh(study).sample_count == 1
        Sample.objects.create(study=study, name="after")
        assert fresh(study).sample_count == 2


@pytest.mark.django_db
class TestDisabled:
    def test_nothing_is_maintained(self, lab, study):
        with override_autoupdate(mode="disabled"):
            sample = Sample.objects.create(study=study, name="a")
        assert fresh(sample).code == ""
        assert fresh(study).sample_count == 0

    def test_default_disabled_through_settings(self, study):
        with override_settings(MAINTAINED_FIELDS={"DEFAULT_MODE": "disabled"}):
            Sample.objects.create(study=study, name="a")
        assert fresh(study).sample_count == 0


@pytest.mark.django_db
class TestDeferred:
    def test_nothing_is_recomputed_until_the_scope_ends(self, lab, study):
        with CaptureQueriesContext(connection) as queries:
            with override_autoupdate(mode="deferred"):
                for name in "abcdefghij":
                    Sample.objects.create(study=study, name=name)
                during = [q["sql"] for q in queries.captured_queries]
                assert fresh(study).sample_count == 0
        # Recording costs no query: one INSERT per save and nothing else (but, on
        # MySQL and MariaDB inside a transaction, the parent locked before it).
        inserts = [q for q in during if q.startswith("INSERT")]
        locks = [q for q in during if q.endswith("FOR UPDATE") and connection.vendor == "mysql"]
        assert len(inserts) == 10 and len(inserts) + len(locks) == len(during)
        assert fresh(study).sample_count == 10
        assert fresh(lab).sample_total == 10
        assert Sample.objects.filter(code="A").exists()

    def test_each_affected_row_is_written_once(self, lab, study, sql):
        other = Study.objects.create(name="other", lab=lab)
        with sql() as queries:
            with override_autoupdate(mode="deferred"):
                for index in range(20):
                    Sample.objects.create(study=study if index % 2 else other, name=str(index))
        study_updates = [q for q in queries if q.startswith('UPDATE "testapp_study" SET "sample_count"')]
        lab_updates = [q for q in queries if q.startswith('UPDATE "testapp_lab"')]
        assert len(study_updates) == 1  # both studies in one batched UPDATE
        assert len(lab_updates) == 1
        assert fresh(lab).sample_total == 20

    def test_nested_deferred_joins_the_outer_buffer(self, study):
        with override_autoupdate(mode="deferred"):
            with override_autoupdate(mode="deferred"):
                Sample.objects.create(study=study, name="a")
            assert fresh(study).sample_count == 0
        assert fresh(study).sample_count == 1

    def test_deferred_inside_immediate_flushes_at_its_own_exit(self, study):
        with override_autoupdate(mode="deferred"):
            with override_autoupdate(mode="immediate"):
                with override_autoupdate(mode="deferred"):
                    Sample.objects.create(study=study, name="a")
                assert fresh(study).sample_count == 1

    def test_inner_immediate_updates_at_once(self, study):
        with override_autoupdate(mode="deferred"):
            with override_autoupdate(mode="immediate"):
                Sample.objects.create(study=study, name="a")
                assert fresh(study).sample_count == 1

    def test_inner_disabled_records_nothing(self, study):
        with override_autoupdate(mode="deferred"):
            with override_autoupdate(mode="disabled"):
                Sample.objects.create(study=study, name="a")
        assert fresh(study).sample_count == 0

    def test_labels_recorded_are_flushed_under_that_filter(self, study):
        with override_autoupdate(mode="deferred"):
            with override_autoupdate(labels=["weights"]):
                Sample.objects.create(study=study, name="a", weight=4)
        assert fresh(study).total_weight == 4
        assert fresh(study).sample_count == 0

    def test_deletes_and_moves_are_recorded(self, lab, study):
        other = Study.objects.create(name="other", lab=lab)
        keep = Sample.objects.create(study=study, name="keep")
        gone = Sample.objects.create(study=study, name="gone")
        with override_autoupdate(mode="deferred"):
            gone.delete()
            keep.study = other
            keep.save()
        assert (fresh(study).sample_count, fresh(other).sample_count) == (0, 1)
        assert fresh(keep).study_name == "other"

    def test_flush_uses_the_database_the_rows_were_written_to(self, study, sql):
        with override_autoupdate(mode="deferred"):
            Sample.objects.using("default").create(study=study, name="a")
        assert fresh(study).sample_count == 1


@pytest.mark.django_db(transaction=True)
class TestDeferredExceptions:
    def test_outside_a_transaction_work_done_before_the_error_is_flushed(self, study):
        with pytest.raises(ZeroDivisionError):
            with override_autoupdate(mode="deferred"):
                Sample.objects.create(study=study, name="a")
                1 / 0
        assert fresh(study).sample_count == 1

    def test_inside_a_transaction_a_rollback_discards_the_work(self, study):
        with pytest.raises(ZeroDivisionError):
            with transaction.atomic():
                with override_autoupdate(mode="deferred"):
                    Sample.objects.create(study=study, name="a")
                    1 / 0
        assert not Sample.objects.exists()
        assert fresh(study).sample_count == 0

    def test_inside_a_transaction_the_work_is_flushed_on_commit(self, study):
        with transaction.atomic():
            try:
                with override_autoupdate(mode="deferred"):
                    Sample.objects.create(study=study, name="a")
                    raise ValueError
            except ValueError:
                pass
            assert fresh(study).sample_count == 0
        assert fresh(study).sample_count == 1

    def test_a_flush_error_is_logged_and_the_original_exception_propagates(self, study, monkeypatch, caplog):
        monkeypatch.setattr(Study, "compute_sample_count", lambda self: 1 / 0)
        with caplog.at_level(logging.ERROR, logger="maintained_fields"):
            with pytest.raises(KeyError):
                with override_autoupdate(mode="deferred"):
                    Sample.objects.create(study=study, name="a")
                    raise KeyError("original")
        assert "rebuild_maintained_fields" in caplog.text
        assert "ZeroDivisionError" in caplog.text

    def test_a_flush_error_on_a_clean_exit_is_raised(self, study, monkeypatch):
        monkeypatch.setattr(Study, "compute_sample_count", lambda self: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            with override_autoupdate(mode="deferred"):
                Sample.objects.create(study=study, name="a")


@pytest.mark.django_db
class TestDecorators:
    def test_function(self, study):
        @override_autoupdate(mode="deferred")
        def load():
            Sample.objects.create(study=study, name="a")
            assert get_autoupdate_mode() == "deferred"
            return fresh(study).sample_count

        assert load() == 0
        assert fresh(study).sample_count == 1

    def test_disable_when_dry_run(self, study):
        @override_autoupdate(mode="deferred", disable_when="dry_run")
        def load(dry_run=False):
            Sample.objects.create(study=study, name="x")
            return get_autoupdate_mode()

        assert load(dry_run=True) == "disabled"
        assert fresh(study).sample_count == 0
        assert load() == "deferred"
        assert fresh(study).sample_count == 2

    def test_disable_when_reads_positional_and_default_arguments(self, study):
        @override_autoupdate(mode="deferred", disable_when="dry_run")
        def load(path, dry_run=False):
            return get_autoupdate_mode()

        @override_autoupdate(mode="deferred", disable_when="dry_run")
        def validate(path, dry_run=True):
            return get_autoupdate_mode()

        assert (load("a.xlsx", True), load("a.xlsx", False), load("a.xlsx")) == ("disabled", "deferred", "deferred")
        assert (validate("a.xlsx"), validate("a.xlsx", dry_run=False)) == ("disabled", "deferred")

    def test_disable_when_must_name_a_parameter(self):
        with pytest.raises(TypeError, match=r"load\(path, dryrun=False\), which has no parameter 'dry_run'"):

            @override_autoupdate(mode="deferred", disable_when="dry_run")
            def load(path, dryrun=False):
                pass

    def test_generator_functions_are_refused(self):
        with pytest.raises(TypeError, match="generator function .*rows\\(\\).*around the loop"):

            @override_autoupdate(mode="deferred")
            def rows():
                yield 1

        with pytest.raises(TypeError, match="generator function"):

            @override_autoupdate(mode="deferred")
            async def arows():
                yield 1

    def test_management_command_dry_run_option(self, study):
        class Command(BaseCommand):
            def add_arguments(self, parser):
                parser.add_argument("--dry-run", action="store_true")

            @override_autoupdate(mode="deferred", disable_when="dry_run")
            def handle(self, *args, **options):
                Sample.objects.create(study=study, name="x")
                self.stdout.write(get_autoupdate_mode())

        from io import StringIO

        out = StringIO()
        call_command(Command(), "--dry-run", stdout=out)
        call_command(Command(), stdout=out)
        assert out.getvalue().split() == ["disabled", "deferred"]
        assert fresh(study).sample_count == 2


@override_autoupdate(mode="disabled")
class TestDecoratedTestCase(TestCase):
    @classmethod
    def setUpTestData(cls):
        cls.mode_in_set_up_test_data = get_autoupdate_mode()
        cls.study = Study.objects.create(name="s")
        Sample.objects.create(study=cls.study, name="a")

    def test_set_up_test_data_ran_in_the_mode(self):
        self.assertEqual(self.mode_in_set_up_test_data, "disabled")
        self.assertEqual(fresh(self.study).sample_count, 0)

    def test_each_test_runs_in_the_mode(self):
        self.assertEqual(get_autoupdate_mode(), "disabled")


@override_autoupdate(mode="deferred")
class TestDeferredTestCase(TestCase):
    @classmethod
    def setUpTestData(cls):
        cls.study = Study.objects.create(name="s")
        Sample.objects.create(study=cls.study, name="a")

    def test_work_from_set_up_test_data_was_flushed(self):
        self.assertEqual(fresh(self.study).sample_count, 1)
        Sample.objects.create(study=self.study, name="b")
        self.assertEqual(fresh(self.study).sample_count, 1)


def test_decorated_test_case_leaves_nothing_behind():
    assert get_autoupdate_mode() == "immediate"


@override_autoupdate(mode="disabled")
class TestPlainUnittestCase(PlainTestCase):
    def test_plain_unittest_case(self):
        self.assertEqual(get_autoupdate_mode(), "disabled")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["deferred", "deferred, raising", "immediate"])
@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_under_manual_transaction_management(how, end):
    # From an outside tester: under set_autocommit(False) on MariaDB, a
    # deferred scope's flush set the isolation level inside the open
    # transaction and failed; raising, it also left the connection unusable.
    # Such a transaction is the user's: the work joins it, and shares its fate.
    study = Study.objects.create(name="Study")
    transaction.set_autocommit(False)
    try:
        Study.objects.count()  # the transaction has begun
        try:
            with override_autoupdate(mode=how.split(",")[0]):
                Sample.objects.create(study=study, name="a")
                Sample.objects.create(study=study, name="b")
                if how.endswith("raising"):
                    raise KeyError("the loader's error")
        except KeyError:
            pass
        getattr(transaction, end)()
    finally:
        transaction.set_autocommit(True)
    expected = Sample.objects.filter(study=study).count()
    assert expected == (2 if end == "commit" else 0)
    assert Study.objects.get(pk=study.pk).sample_count == expected
