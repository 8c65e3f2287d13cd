"""What the package tells observers: a signal per batch written, a log line per flush."""

import logging

import pytest

from maintained_fields import maintained_values_written, override_autoupdate
from tests.ownrow.models import Bin
from tests.testapp.models import Lab, Sample, Study

pytestmark = pytest.mark.django_db


@pytest.fixture
def written():
    seen = []

    def receiver(sender, pks, fields, using, **kwargs):
        seen.append((sender, sorted(pks), fields, using))

    maintained_values_written.connect(receiver)
    yield seen
    maintained_values_written.disconnect(receiver)


def test_signal_after_each_batch_written(lab, written):
    first, second = Study.objects.create(name="1", lab=lab), Study.objects.create(name="2", lab=lab)
    written.clear()
    with override_autoupdate(mode="deferred"):
        Sample.objects.create(study=first, name="a")
        Sample.objects.create(study=second, name="b")
    assert (Study, sorted([first.pk, second.pk]), ["sample_count"], "default") in written
    assert (Lab, [lab.pk], ["sample_total"], "default") in written


def test_nothing_is_sent_when_no_value_changes(study, written):
    sample = Sample.objects.create(study=study, name="a")
    written.clear()
    sample.save()
    assert written == []


def test_a_row_the_work_reaches_but_leaves_as_it_was_is_not_announced(written):
    # A sale moved between two stores of one region: both stores' counts
    # change, the region's total does not, though the work recomputes it
    # (on PostgreSQL, in the same message as the stores).
    from tests.chain.models import Region, Sale, Store

    region = Region.objects.create()
    first, second = (Store.objects.create(region=region) for _ in range(2))
    sale = Sale.objects.create(store=first)
    written.clear()
    sale.store = second
    sale.save()
    assert [(sender, pks, fields) for sender, pks, fields, _ in written] == [
        (Store, sorted([first.pk, second.pk]), ["sale_count"])
    ]
    assert Region.objects.get().sale_total == 1


def test_only_the_fields_that_changed_are_named(written):
    # A part reweighed: of its crate's aggregates, the count and the maximum
    # stay as they were.
    from tests.expressions.models import Crate, Depot, Part

    crate = Crate.objects.create(depot=Depot.objects.create())
    light, _ = Part.objects.create(crate=crate, weight=1), Part.objects.create(crate=crate, weight=3)
    written.clear()
    light.weight = 2
    light.save()
    assert [(sender, pks, fields) for sender, pks, fields, _ in written] == [
        (Crate, [crate.pk], ["mean_float", "mean_weight", "total_weight"])
    ]


def test_a_change_of_an_aggregate_the_grandparent_does_not_read_stops_at_the_parent(written):
    from decimal import Decimal

    from tests.chain.models import Fleet, Sailor, Ship

    ship = Ship.objects.create(fleet=Fleet.objects.create())
    sailor = Sailor.objects.create(ship=ship, wage=Decimal("1.00"))
    written.clear()
    sailor.wage = Decimal("2.00")
    sailor.save()
    assert [(sender, pks, fields) for sender, pks, fields, _ in written] == [(Ship, [ship.pk], ["payroll"])]


def test_a_flush_is_logged_with_counts_and_time(lab, study, caplog):
    with caplog.at_level(logging.INFO, logger="maintained_fields"):
        with override_autoupdate(mode="deferred"):
            for name in "abc":
                Sample.objects.create(study=study, name=name)
    [record] = [r for r in caplog.records if r.name == "maintained_fields"]
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert message.startswith("Maintained fields on 'default': recomputed ")
    assert "testapp.Study 1" in message and "testapp.Lab 1" in message and "testapp.Sample 3" in message
    assert message.endswith("s.")


def test_a_flush_tells_receivers_of_values_that_lead_nowhere(written):
    # A flush that writes values nothing reads only counts the rows it
    # changes, unless a receiver (or a dry run) wants their keys.
    with override_autoupdate(mode="deferred"):
        bins = [Bin.objects.create(qty=qty) for qty in (5, 50)]
    assert [(sender, pks, fields) for sender, pks, fields, _ in written] == [(Bin, [b.pk for b in bins], ["size"])]
    assert list(Bin.objects.order_by("qty").values_list("size", flat=True)) == ["small", "big"]


@pytest.mark.parametrize("how", ["instance", "queryset"])
@pytest.mark.parametrize("mode", ["immediate", "deferred"])
def test_a_row_deleted_with_its_children_is_not_recomputed_nor_announced(how, mode, written):
    """Found by an outside tester: a basket counts its items and nothing
    reads the basket, so Django's delete announces only the items it
    cascades to; their work recomputed the basket before its own row went,
    and the signal named a key the delete() had removed on its return."""
    from tests.composite.models import Basket, BasketItem

    basket, kept = Basket.objects.create(name="gone"), Basket.objects.create(name="kept")
    for n in (1, 2):
        BasketItem.objects.create(basket=basket, n=n, qty=n)
    BasketItem.objects.create(basket=kept, n=1, qty=5)
    written.clear()
    with override_autoupdate(mode=mode):
        if how == "instance":
            basket.delete()
        else:
            Basket.objects.filter(name="gone").delete()
    assert [entry for entry in written if entry[0] is Basket] == []
    assert list(Basket.objects.values_list("name", "item_count", "qty_total")) == [("kept", 1, 5)]
