"""Schemas that isolate one relation kind each.

Every maintained field here has exactly one path to what it reads, so no
other path can read a foreign key or a row on its behalf: a write path that
loses track of something shows up as a wrong value.
"""

from django.db import models

from maintained_fields import MaintainedManager, MaintainedModel, MaintainedModelMixin, maintained_field


class Shelf(MaintainedModel):
    """Counts its boxes through a path that ends in the relation."""

    name = models.CharField(max_length=50, default="")
    box_count = models.IntegerField(default=0)

    @maintained_field("box_count", depends_on=["boxes"])
    def compute_box_count(self):
        return self.boxes.count()


class Box(MaintainedModel):
    shelf = models.ForeignKey(Shelf, models.SET_NULL, null=True, related_name="boxes")
    name = models.CharField(max_length=50, default="")


class Rack(MaintainedModelMixin, models.Model):
    """The same as Shelf, through the mixin, over plain children with and
    without the package's manager."""

    plain_count = models.IntegerField(default=0)
    managed_count = models.IntegerField(default=0)

    @maintained_field("plain_count", depends_on=["plain_items"])
    def compute_plain_count(self):
        return self.plain_items.count()

    @maintained_field("managed_count", depends_on=["managed_items"])
    def compute_managed_count(self):
        return self.managed_items.count()


class PlainItem(models.Model):
    rack = models.ForeignKey(Rack, models.SET_NULL, null=True, related_name="plain_items")


class ManagedItem(models.Model):
    rack = models.ForeignKey(Rack, models.SET_NULL, null=True, related_name="managed_items")

    objects = MaintainedManager()

    class Meta:
        base_manager_name = "objects"


class Account(MaintainedModel):
    """Children point at a unique field that is not the primary key."""

    code = models.CharField(max_length=20, unique=True)
    number = models.IntegerField(unique=True)
    entry_count = models.IntegerField(default=0)
    posting_count = models.IntegerField(default=0)

    @maintained_field("entry_count", depends_on=["entries"])
    def compute_entry_count(self):
        return self.entries.count()

    @maintained_field("posting_count", depends_on=["postings"])
    def compute_posting_count(self):
        return self.postings.count()


class Entry(MaintainedModel):
    account = models.ForeignKey(Account, models.CASCADE, to_field="code", related_name="entries")
    account_code = models.CharField(max_length=20, default="")

    @maintained_field("account_code", depends_on=["account__code"])
    def compute_account_code(self):
        return self.account.code


class Posting(MaintainedModel):
    account = models.ForeignKey(Account, models.CASCADE, to_field="number", related_name="postings")


class Person(MaintainedModel):
    """A symmetrical many-to-many relation to itself.  The path ends in a field:
    ``"friends"`` alone would count the friends' own friend_count, a cycle."""

    name = models.CharField(max_length=20, default="")
    friends = models.ManyToManyField("self")
    friend_count = models.IntegerField(default=0)

    @maintained_field("friend_count", depends_on=["friends__name"])
    def compute_friend_count(self):
        return self.friends.count()


class Order(MaintainedModel):
    """Its lines and a unique reference, for bulk_create(update_conflicts=True)."""

    line_count = models.IntegerField(default=0)
    total = models.IntegerField(default=0)

    @maintained_field("line_count", depends_on=["lines"])
    def compute_line_count(self):
        return self.lines.count()

    @maintained_field("total", depends_on=["lines__amount"])
    def compute_total(self):
        return sum(self.lines.values_list("amount", flat=True))


class Line(MaintainedModel):
    order = models.ForeignKey(Order, models.CASCADE, related_name="lines")
    reference = models.CharField(max_length=20, unique=True)
    amount = models.IntegerField(default=0)
    label = models.CharField(max_length=20, default="")

    @maintained_field("label", depends_on=["reference", "amount"])
    def compute_label(self):
        return f"{self.reference}:{self.amount}"[:20]


class Note(MaintainedModel):
    """A computed value longer than its column."""

    text = models.CharField(max_length=40, default="")
    shout = models.CharField(max_length=10, default="")

    @maintained_field("shout", depends_on=["text"])
    def compute_shout(self):
        return self.text.upper()


class Invoice(MaintainedModel):
    """Counts line items whose primary key is composite."""

    item_count = models.IntegerField(default=0)
    total = models.IntegerField(default=0)

    @maintained_field("item_count", depends_on=["items"])
    def compute_item_count(self):
        return self.items.count()

    @maintained_field("total", depends_on=["items__amount"])
    def compute_total(self):
        return sum(self.items.values_list("amount", flat=True))


class InvoiceItem(MaintainedModel):
    pk = models.CompositePrimaryKey("invoice", "line_no")
    invoice = models.ForeignKey(Invoice, models.CASCADE, related_name="items")
    line_no = models.IntegerField()
    amount = models.IntegerField(default=0)
    text = models.CharField(max_length=20, default="")
    code = models.CharField(max_length=20, default="")

    @maintained_field("code", depends_on=["text"])
    def compute_code(self):
        return self.text.upper()


class Sign(MaintainedModel):
    """Own-row fields in a chain: shout reads slug, which reads name."""

    name = models.CharField(max_length=30)
    code = models.CharField(max_length=10, unique=True, null=True)
    slug = models.CharField(max_length=30, default="")
    shout = models.CharField(max_length=31, default="")

    @maintained_field("slug", depends_on=["name"])
    def compute_slug(self):
        return self.name.lower()

    @maintained_field("shout", depends_on=["slug"])
    def compute_shout(self):
        return self.slug.upper() + "!"


class Team(MaintainedModel):
    name = models.CharField(max_length=20)
    member_count = models.IntegerField(default=0)
    member_names = models.CharField(max_length=200, default="")

    @maintained_field("member_count", depends_on=["members"])
    def compute_member_count(self):
        return self.members.count()

    @maintained_field("member_names", depends_on=["members__name"])
    def compute_member_names(self):
        return ",".join(sorted(self.members.values_list("name", flat=True)))


def fallback_team():
    return Team.objects.get(name="fallback").pk


class Member(MaintainedModel):
    """Moved to another team when its team is deleted."""

    name = models.CharField(max_length=20)
    team = models.ForeignKey(Team, models.SET(fallback_team), related_name="members")


class Article(MaintainedModel):
    topics = models.ManyToManyField("Topic", related_name="articles")


class Topic(MaintainedModel):
    article_count = models.IntegerField(default=0)

    @maintained_field("article_count", depends_on=["articles"])
    def compute_article_count(self):
        return self.articles.count()


class Book(MaintainedModel):
    """Reads its shelf through a forward foreign key."""

    isbn = models.CharField(max_length=13, unique=True)
    shelf = models.ForeignKey(Shelf, models.CASCADE)
    shelf_name = models.CharField(max_length=50, default="")

    @maintained_field("shelf_name", depends_on=["shelf__name"])
    def compute_shelf_name(self):
        return self.shelf.name
