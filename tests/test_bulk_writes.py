"""Many rows written at once, each with its own values: a deferred flush, and
an immediate update() that changes the values of many parents, store in
every column, of every type, the value of the row's own books.  The values
expected are computed here from the books the test made, not read back."""

import datetime
import io
import random
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.core.management import CommandError, call_command

from maintained_fields import override_autoupdate
from tests.columns.models import Book, Crate, Parcel, Shelf

pytestmark = pytest.mark.django_db



CENTS = Decimal("0.01")

def expected(label, books):
    """What each maintained column of a shelf holds, from its ``books`` (dicts)."""
    prices = [book["price"] for book in books]
    return {
        "first_published": min((book["published"] for book in books), default=None),
        "any_signed": any(book["signed"] for book in books),
        "mean_price": (sum(prices, Decimal(0)) / len(prices)).quantize(CENTS, ROUND_HALF_UP) if prices else None,
        "titles": ", ".join(sorted(book["title"] for book in books)),
        "summary": {"books": len(books), "label": label},
        "weight": sum(book["pages"] for book in books) * 0.25,
    }


def stored():
    columns = ["label", *expected("", [])]
    return {row[0]: dict(zip(columns[1:], row[1:])) for row in Shelf.objects.values_list(*columns)}


def books_for(rng, shelf_index):
    return [
        {
            "title": f"t{shelf_index}.{n}",
            "published": datetime.date(2000, 1, 1) + datetime.timedelta(days=rng.randrange(5000)),
            "signed": rng.random() < 0.3,
            "price": Decimal(rng.randrange(1, 10000)) / 100,
            "pages": rng.randrange(1, 900),
        }
        for n in range(rng.randrange(3))  # some shelves have none: their columns hold NULL or the empty value
    ]


@pytest.fixture
def small_batches(settings):
    # Batches of 64 rows: each flush and recompute here writes several.
    settings.MAINTAINED_FIELDS = {"BATCH_SIZE": 64}


def load(rng, shelves):
    made = {}
    for index in range(shelves):
        label, books = f"s{index}", books_for(rng, index)
        shelf = Shelf.objects.create(label=label)
        for book in books:
            Book.objects.create(shelf=shelf, **book)
        made[label] = books
    return made


def test_a_deferred_flush_of_many_rows_stores_each_row_s_own_values(small_batches):
    rng = random.Random(7)
    with override_autoupdate(mode="deferred"):
        made = load(rng, 150)
    assert stored() == {label: expected(label, books) for label, books in made.items()}


def test_an_update_changing_many_parents_at_once_stores_each_one_s_values(small_batches):
    rng = random.Random(8)
    made = load(rng, 150)
    Book.objects.update(price=Decimal("2.50"), signed=False)
    for books in made.values():
        for book in books:
            book.update(price=Decimal("2.50"), signed=False)
    gone = [label for label in made if label.endswith("7")]
    Book.objects.filter(shelf__label__in=gone).delete()
    for label in gone:
        made[label] = []
    assert stored() == {label: expected(label, books) for label, books in made.items()}


@pytest.mark.parametrize("mode", ["immediate", "deferred"])
def test_a_json_value_changed_to_one_python_calls_equal_is_written(mode):
    """``True``, ``1`` and ``1.0`` are equal in Python and three values in a
    JSON column: changing one to another, by each write path, reaches the
    columns that read it (before, none of them did, and the check saw
    nothing; from an outside tester's report)."""
    crate = Crate.objects.create(meta={"a": True})
    parcels = [Parcel.objects.create(crate=crate, payload=value) for value in (True, [True], {"n": 1})]
    with override_autoupdate(mode=mode):
        Parcel.objects.filter(pk=parcels[0].pk).update(payload=1)
        parcels[1].payload = [1.0]
        parcels[1].save()
        parcels[2].payload = {"n": 1.0}
        Parcel.objects.bulk_update([parcels[2]], ["payload"])
        Crate.objects.filter(pk=crate.pk).update(meta={"a": 1})
    payloads = list(Parcel.objects.order_by("pk").values_list("payload", flat=True))
    assert [repr(value) for value in payloads] == ["1", "[1.0]", "{'n': 1.0}"]
    assert repr(Crate.objects.get().payloads) == repr(payloads)
    assert {repr(meta) for meta in Parcel.objects.values_list("crate_meta", flat=True)} == {"{'a': 1}"}

    with override_autoupdate(mode="disabled"):
        Crate.objects.update(payloads=[True, [True], {"n": 1}])
    out = io.StringIO()
    with pytest.raises(CommandError, match="1 maintained value"):
        call_command("check_maintained_fields", "columns.Crate", stdout=out)
    assert "payloads" in out.getvalue()


@pytest.mark.parametrize("write", ["save", "bulk_update"])
def test_a_json_object_whose_keys_only_change_order_reaches_what_reads_the_order(write):
    """Python calls {"a": 1, "b": 2} and {"b": 2, "a": 1} equal; SQLite and
    MariaDB keep the order written, and a method reading it must see the
    change (an outside tester's report).  PostgreSQL's jsonb orders keys its
    own way: there the order is the database's, before and after."""
    crate = Crate.objects.create()
    parcel = Parcel.objects.create(crate=crate, payload={"a": 1, "b": 2})
    parcel.payload = {"b": 2, "a": 1}
    if write == "save":
        parcel.save()
    else:
        Parcel.objects.bulk_update([parcel], ["payload"])
    stored = Parcel.objects.values_list("payload", flat=True).get()
    assert Crate.objects.values_list("first_keys", flat=True).get() == next(iter(stored))
