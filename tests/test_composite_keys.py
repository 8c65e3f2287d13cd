"""Children with a composite primary key, in every mode: what each column
must hold is counted here from the rows.  Found by an outside tester: every
mode failed on them (a single-row UPDATE built for one key column)."""

import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from maintained_fields import mark_changed, override_autoupdate
from maintained_fields.conf import tasks_framework
from tests.composite.models import Basket, BasketItem, Cart, CartItem, Crate, Slot

MODES = ["immediate", "deferred", "background"]


@pytest.fixture
def queue(settings, db):
    settings.MAINTAINED_FIELDS = {"TASKS_BACKEND": "dummy"}
    backend = tasks_framework().task_backends["dummy"]
    backend.clear()
    yield backend
    backend.clear()


def settle(queue):
    """Run what the background mode enqueued, as a worker would."""
    from maintained_fields.tasks import recompute_recorded

    results, queue.results[:] = list(queue.results), []
    for result in results:
        recompute_recorded.call(*json.loads(json.dumps(list(result.args))))


def wrong():
    """Every maintained value that differs from what the rows say."""
    found = []
    for basket in Basket.objects.all():
        items = BasketItem.objects.filter(basket=basket)
        expected = (sum(items.values_list("qty", flat=True)), items.count())
        if (basket.qty_total, basket.item_count) != expected:
            found.append((basket.pk, basket.qty_total, basket.item_count, expected))
    found += [(i.pk, i.code) for i in BasketItem.objects.all() if i.code != i.sku.upper()]
    found += [(i.pk, i.cart_name) for i in CartItem.objects.select_related("cart") if i.cart_name != i.cart.name]
    found += [(s.pk, s.crate_code) for s in Slot.objects.select_related("crate") if s.crate_code != s.crate.code]
    found += [(c.pk, c.slot_count) for c in Crate.objects.all() if c.slot_count != Slot.objects.filter(crate=c).count()]
    return found


@pytest.fixture
def run(queue, django_capture_on_commit_callbacks):
    """run(mode, work): work() in the mode, committed (the test's transaction
    stands for the outermost one), what it enqueued run; then no drift."""

    def run(mode, work):
        with django_capture_on_commit_callbacks(execute=True):
            with override_autoupdate(mode=mode):
                work()
        settle(queue)
        assert wrong() == []

    return run


@pytest.mark.parametrize("mode", MODES)
def test_creates_saves_and_renames(mode, run):
    basket, cart = Basket.objects.create(name="b"), Cart.objects.create(name="c")
    run(mode, lambda: BasketItem.objects.create(basket=basket, n=1, sku="x", qty=2))
    run(mode, lambda: BasketItem.objects.create(basket=basket, n=2, sku="y", qty=3))
    item = BasketItem.objects.get(basket=basket, n=1)
    item.qty, item.sku = 5, "z"
    run(mode, item.save)
    run(mode, lambda: CartItem.objects.create(cart=cart, n=1))
    run(mode, lambda: Cart.objects.filter(pk=cart.pk).update(name="c2"))
    run(mode, lambda: BasketItem.objects.filter(basket=basket, n=2).delete())
    assert Basket.objects.get().qty_total == 5


@pytest.mark.parametrize("mode", MODES)
def test_an_update_that_changes_the_key(mode, run):
    basket = Basket.objects.create(name="b")

    def work():
        for n in (1, 2, 3):
            BasketItem.objects.create(basket=basket, n=n, sku=f"s{n}")
        BasketItem.objects.filter(basket=basket, n=1).update(n=9)

    run(mode, work)
    assert BasketItem.objects.get(basket=basket, n=9).code == "S1"


@pytest.mark.parametrize("mode", MODES)
def test_a_key_whose_foreign_key_is_a_uuid(mode, run):
    """Found by an outside tester: on SQLite and MariaDB, Django reads such
    a key with values_list("pk") as text, and every write that reached the
    slots, the rebuild and the deep check failed with a KeyError."""
    crate = Crate.objects.create(code="C1")
    run(mode, lambda: [Slot.objects.create(crate=crate, pos=n) for n in (1, 2)])
    run(mode, lambda: Crate.objects.filter(pk=crate.pk).update(code="C2"))
    crate.code = "C3"
    run(mode, crate.save)
    assert sorted(Slot.objects.values_list("crate_code", flat=True)) == ["C3", "C3"]
    with override_autoupdate(mode="disabled"):
        Crate.objects.filter(pk=crate.pk).update(code="C4")
    with pytest.raises(CommandError):
        call_command("check_maintained_fields", "composite.Slot", "--deep", stdout=io.StringIO())
    call_command("rebuild_maintained_fields", "composite.Slot", "--verbosity", "0")
    assert wrong() == []


def test_slots_marked_after_raw_writes(db):
    """Found by an outside tester: marked as instances, such slots failed
    on SQLite and MariaDB (a KeyError; a TypeError comparing a UUID with
    text when a deferred scope ended)."""
    first, second = Crate.objects.create(code="A"), Crate.objects.create(code="B")
    slots = [Slot.objects.create(crate=first, pos=n) for n in (1, 2)]
    table = connection.ops.quote_name(Slot._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET crate_code = 'stale'")
    mark_changed(slots)
    assert wrong() == []
    moved = slots[0]
    with override_autoupdate(mode="deferred"):
        mark_changed(moved)
        with connection.cursor() as cursor:
            key = Crate._meta.pk.get_db_prep_value(second.pk, connection)
            cursor.execute(f"UPDATE {table} SET crate_id = %s WHERE pos = 1", [key])
        mark_changed(Slot.objects.filter(pos=1))
    assert wrong() == []
    assert dict(Crate.objects.values_list("code", "slot_count")) == {"A": 1, "B": 1}


def test_a_rebuild_repairs_them(db):
    basket, cart = Basket.objects.create(name="b"), Cart.objects.create(name="c")
    with override_autoupdate(mode="disabled"):
        for n in range(1, 8):
            BasketItem.objects.create(basket=basket, n=n, sku=f"s{n}", qty=n)
            CartItem.objects.create(cart=cart, n=n)
    call_command("rebuild_maintained_fields", "--batch-size", "3", "--verbosity", "0")
    assert wrong() == []


def test_counting_them_passes_the_checks():
    from django.core import checks

    # Count("items") depends on the children's key, two columns here.
    found = [m for m in checks.run_checks() if m.id.startswith("maintained_fields") and "composite." in str(m.obj)]
    assert found == []
