"""An override never leaks into another thread, task or request, and never
survives its scope. Each test runs real threads or real event loops, with
barriers or events so that the scopes overlap in time."""

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.core.exceptions import SynchronousOnlyOperation

from maintained_fields import get_autoupdate_mode, override_autoupdate
from tests.conftest import fresh
from tests.testapp.models import Sample, Study

MODES = ["immediate", "deferred", "disabled"]


def run_in_threads(count, target):
    results, errors = [None] * count, []

    def run(index):
        try:
            results[index] = target(index)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    if errors:
        raise errors[0]
    return results


class TestThreads:
    def test_overlapping_scopes_in_threads_see_their_own_mode(self):
        count = 9
        barrier = threading.Barrier(count, timeout=10)

        def work(index):
            mode = MODES[index % 3]
            with override_autoupdate(mode=mode):
                barrier.wait()  # every thread is inside its scope now
                seen = get_autoupdate_mode()
                barrier.wait()
            return seen, get_autoupdate_mode()

        results = run_in_threads(count, work)
        assert results == [(MODES[i % 3], "immediate") for i in range(count)]

    def test_a_new_thread_starts_at_the_settings_default(self):
        with override_autoupdate(mode="disabled"):
            assert run_in_threads(1, lambda _: get_autoupdate_mode()) == ["immediate"]

    def test_copy_context_carries_the_override_into_a_thread(self):
        with override_autoupdate(mode="disabled"):
            context = contextvars.copy_context()
        results = run_in_threads(1, lambda _: context.run(get_autoupdate_mode))
        assert results == ["disabled"]

    def test_one_decorated_function_runs_in_many_threads_at_once(self):
        count = 8
        barrier = threading.Barrier(count, timeout=10)

        @override_autoupdate(mode="deferred", disable_when="dry_run")
        def handle(dry_run=False):
            barrier.wait()
            return get_autoupdate_mode()

        results = run_in_threads(count, lambda i: handle(dry_run=bool(i % 2)))
        assert results == ["disabled" if i % 2 else "deferred" for i in range(count)]

    def test_an_exception_leaves_nothing_for_the_next_job_on_the_same_worker(self):
        # A WSGI worker thread serves request after request in one context.
        @override_autoupdate(mode="disabled")
        def failing_request():
            raise RuntimeError("validation failed")

        with ThreadPoolExecutor(max_workers=1) as worker:
            with pytest.raises(RuntimeError):
                worker.submit(failing_request).result()
            assert worker.submit(get_autoupdate_mode).result() == "immediate"


class TestAsyncTasks:
    def test_interleaved_tasks_see_only_their_own_overrides(self):
        async def task(mode, entered, proceed):
            async with override_autoupdate(mode=mode):
                entered.set()
                await proceed.wait()
                seen = get_autoupdate_mode()
            return seen, get_autoupdate_mode()

        async def main():
            async with override_autoupdate(mode="disabled"):
                events = [(asyncio.Event(), asyncio.Event()) for _ in MODES]
                tasks = [asyncio.create_task(task(m, *e)) for m, e in zip(MODES, events)]
                await asyncio.gather(*(entered.wait() for entered, _ in events))
                assert get_autoupdate_mode() == "disabled"  # children's scopes are theirs
                for _, proceed in reversed(events):
                    proceed.set()
                    await asyncio.sleep(0)
                return await asyncio.gather(*tasks)

        results = asyncio.run(main())
        # Each task inherited "disabled" at creation, then saw its own mode.
        assert results == [(mode, "disabled") for mode in MODES]

    def test_a_task_created_outside_any_scope_keeps_the_default(self):
        async def main():
            started = asyncio.Event()

            async def observer():
                started.set()
                await asyncio.sleep(0.01)
                return get_autoupdate_mode()

            task = asyncio.create_task(observer())
            await started.wait()
            async with override_autoupdate(mode="disabled"):
                return await task

        assert asyncio.run(main()) == "immediate"

    def test_decorated_coroutine_holds_the_override_inside_its_body(self):
        @override_autoupdate(mode="disabled")
        async def view():
            await asyncio.sleep(0)
            return get_autoupdate_mode()

        async def main():
            return await view(), get_autoupdate_mode()

        assert asyncio.run(main()) == ("disabled", "immediate")

    def test_sync_to_async_and_async_to_sync_see_the_callers_mode(self):
        async def inner_async():
            return get_autoupdate_mode()

        def sync_code():
            return get_autoupdate_mode(), async_to_sync(inner_async)()

        async def main():
            async with override_autoupdate(mode="disabled"):
                return await sync_to_async(sync_code)()

        assert asyncio.run(main()) == ("disabled", "disabled")

    def test_plain_with_inside_an_event_loop_exits_quietly_when_nothing_is_pending(self):
        async def main():
            with override_autoupdate(mode="deferred"):
                pass
            return get_autoupdate_mode()

        assert asyncio.run(main()) == "immediate"


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_executor_connections")
class TestAsyncDatabase:
    def test_async_with_flushes_through_sync_to_async(self, study):
        async def main():
            async with override_autoupdate(mode="deferred"):
                for name in "abc":
                    await Sample.objects.acreate(study_id=study.pk, name=name)
                during = (await Study.objects.aget(pk=study.pk)).sample_count
            return during, (await Study.objects.aget(pk=study.pk)).sample_count

        assert asyncio.run(main()) == (0, 3)

    def test_saves_in_sync_to_async_join_the_callers_buffer(self, study):
        def save_sample():
            Sample(study_id=study.pk, name="a").save()
            return fresh(study).sample_count

        @override_autoupdate(mode="deferred")
        async def view():
            return await sync_to_async(save_sample)()

        assert asyncio.run(view()) == 0
        assert fresh(study).sample_count == 1

    def test_concurrent_tasks_keep_separate_buffers(self, lab):
        first, second = Study.objects.create(name="1"), Study.objects.create(name="2")

        async def load(study_pk, done, wait_for):
            async with override_autoupdate(mode="deferred"):
                await Sample.objects.acreate(study_id=study_pk, name="x")
                done.set()
                await wait_for.wait()
            return (await Study.objects.aget(pk=study_pk)).sample_count

        async def main():
            first_saved, second_saved = asyncio.Event(), asyncio.Event()
            task_one = asyncio.create_task(load(first.pk, first_saved, second_saved))
            second_release = asyncio.Event()
            task_two = asyncio.create_task(load(second.pk, second_saved, second_release))
            one = await task_one
            # The first task's flush must not have touched the second task's rows.
            second_before = (await Study.objects.aget(pk=second.pk)).sample_count
            second_release.set()
            return one, second_before, await task_two

        assert asyncio.run(main()) == (1, 0, 1)

    def test_plain_with_with_pending_work_in_an_event_loop_is_a_clear_error(self, study):
        async def main():
            with override_autoupdate(mode="deferred"):
                await Sample.objects.acreate(study_id=study.pk, name="a")

        with pytest.raises(SynchronousOnlyOperation, match="async with override_autoupdate"):
            asyncio.run(main())

    def test_plain_with_in_an_event_loop_flushes_where_django_allows_async_unsafe(self, study, monkeypatch):
        # Jupyter and notebook shells set Django's own opt-out; honour it as Django does.
        monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

        async def main():
            with override_autoupdate(mode="deferred"):
                Sample.objects.create(study_id=study.pk, name="a")
                assert Study.objects.get(pk=study.pk).sample_count == 0

        asyncio.run(main())
        assert Study.objects.get(pk=study.pk).sample_count == 1
