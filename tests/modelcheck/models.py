"""The model-check schema: one small parent/child pair per relation kind.

Each maintained field reads its rows through exactly one path, and no two
relation kinds share a parent, so a write path that loses track of a row
cannot be covered for by another path recomputing the same parent.

Labels: ``counts`` (row counts), ``sums`` (sums of a field), ``names``
(values copied through forward foreign keys); own-row fields have none.
"""

from django.db import models

from maintained_fields import MaintainedManager, MaintainedModel, MaintainedModelMixin, maintained_field

# Foreign key with to_field, a chain (child count -> parent sum of counts), own-row fields,
# a forward path through to_field, and the mixin on a plain models.Model.


class Library(MaintainedModelMixin, models.Model):
    name = models.CharField(max_length=50, default="")
    book_total = models.IntegerField(default=0)

    objects = MaintainedManager()

    @maintained_field("book_total", depends_on=["shelves__book_count"], label="sums")
    def compute_book_total(self):
        return sum(self.shelves.values_list("book_count", flat=True))


class Shelf(MaintainedModel):
    code = models.CharField(max_length=20, unique=True)
    name = models.CharField(max_length=50, default="")
    library = models.ForeignKey(Library, models.SET_NULL, null=True, related_name="shelves")
    slug = models.CharField(max_length=50, default="")
    book_count = models.IntegerField(default=0)

    @maintained_field("slug", depends_on=["name"])
    def compute_slug(self):
        return self.name.lower()

    @maintained_field("book_count", depends_on=["books"], label="counts")
    def compute_book_count(self):
        return self.books.count()


class Book(MaintainedModel):
    isbn = models.CharField(max_length=20, unique=True)
    shelf = models.ForeignKey(Shelf, models.CASCADE, to_field="code", related_name="books")
    title = models.CharField(max_length=50, default="")
    title_upper = models.CharField(max_length=50, default="")
    shelf_name = models.CharField(max_length=50, default="")

    @maintained_field("title_upper", depends_on=["title"])
    def compute_title_upper(self):
        return self.title.upper()

    @maintained_field("shelf_name", depends_on=["shelf__name"], label="names")
    def compute_shelf_name(self):
        return self.shelf.name


# Foreign key to an integer primary key, counted through a path ending in the relation.


class Team(MaintainedModel):
    name = models.CharField(max_length=50, default="")
    member_count = models.IntegerField(default=0)

    @maintained_field("member_count", depends_on=["members"], label="counts")
    def compute_member_count(self):
        return self.members.count()


class Member(MaintainedModel):
    team = models.ForeignKey(Team, models.CASCADE, related_name="members")
    name = models.CharField(max_length=50, default="")


# A path ending in a field.


class Bin(MaintainedModel):
    name = models.CharField(max_length=50, default="")
    total_weight = models.IntegerField(default=0)

    @maintained_field("total_weight", depends_on=["items__weight"], label="sums")
    def compute_total_weight(self):
        return sum(self.items.values_list("weight", flat=True))


class Item(MaintainedModel):
    bin = models.ForeignKey(Bin, models.CASCADE, related_name="items")
    weight = models.IntegerField(default=0)
    note = models.CharField(max_length=50, default="")


# A nullable foreign key with SET_NULL, counted by the parent and read forward by the child.


class Owner(MaintainedModel):
    name = models.CharField(max_length=50, default="")
    pet_count = models.IntegerField(default=0)

    @maintained_field("pet_count", depends_on=["pets"], label="counts")
    def compute_pet_count(self):
        return self.pets.count()


class Pet(MaintainedModel):
    owner = models.ForeignKey(Owner, models.SET_NULL, null=True, related_name="pets")
    name = models.CharField(max_length=50, default="")
    owner_name = models.CharField(max_length=50, default="")

    @maintained_field("owner_name", depends_on=["owner__name"], label="names")
    def compute_owner_name(self):
        return self.owner.name if self.owner_id else ""


# Two hops: Region <- City <- Shop, read from both ends.


class Region(MaintainedModel):
    name = models.CharField(max_length=50, default="")
    shop_count = models.IntegerField(default=0)

    @maintained_field("shop_count", depends_on=["cities__shops"], label="counts")
    def compute_shop_count(self):
        return Shop.objects.filter(city__region=self).count()


class City(MaintainedModel):
    region = models.ForeignKey(Region, models.CASCADE, related_name="cities")
    name = models.CharField(max_length=50, default="")


class Shop(MaintainedModel):
    city = models.ForeignKey(City, models.CASCADE, related_name="shops")
    name = models.CharField(max_length=50, default="")
    region_name = models.CharField(max_length=50, default="")

    @maintained_field("region_name", depends_on=["city__region__name"], label="names")
    def compute_region_name(self):
        return self.city.region.name


# Plain children with the package's manager (bulk writes count) ...


class Basket(MaintainedModel):
    name = models.CharField(max_length=50, default="")
    fruit_weight = models.IntegerField(default=0)

    @maintained_field("fruit_weight", depends_on=["fruits__weight"], label="sums")
    def compute_fruit_weight(self):
        return sum(self.fruits.values_list("weight", flat=True))


class Fruit(models.Model):
    basket = models.ForeignKey(Basket, models.SET_NULL, null=True, related_name="fruits")
    weight = models.IntegerField(default=0)

    objects = MaintainedManager()

    class Meta:
        base_manager_name = "objects"


# ... and without it (only save(), delete() and related managers count).


class Crate(MaintainedModel):
    name = models.CharField(max_length=50, default="")
    egg_count = models.IntegerField(default=0)

    @maintained_field("egg_count", depends_on=["eggs"], label="counts")
    def compute_egg_count(self):
        return self.eggs.count()


class Egg(models.Model):
    crate = models.ForeignKey(Crate, models.SET_NULL, null=True, related_name="eggs")
    size = models.IntegerField(default=0)


# Many-to-many, counted from both sides.  One side ends its path in "__id": counting over
# the relation from both sides is a cycle (E004), since each count would read the other.


class Course(MaintainedModel):
    title = models.CharField(max_length=50, default="")
    student_count = models.IntegerField(default=0)

    @maintained_field("student_count", depends_on=["students__id"], label="counts")
    def compute_student_count(self):
        return self.students.count()


class Student(MaintainedModel):
    name = models.CharField(max_length=50, default="")
    courses = models.ManyToManyField(Course, related_name="students", blank=True)
    course_count = models.IntegerField(default=0)

    @maintained_field("course_count", depends_on=["courses"], label="counts")
    def compute_course_count(self):
        return self.courses.count()


# Many-to-many, a path ending in a field of the other side.


class Tag(MaintainedModel):
    name = models.CharField(max_length=50, default="")


class Article(MaintainedModel):
    title = models.CharField(max_length=50, default="")
    tags = models.ManyToManyField(Tag, related_name="articles", blank=True)
    tag_names = models.CharField(max_length=500, default="")

    @maintained_field("tag_names", depends_on=["tags__name"], label="names")
    def compute_tag_names(self):
        return ",".join(sorted(self.tags.values_list("name", flat=True)))


# A symmetrical many-to-many to self ("friends" alone is a cycle, E004).


class Person(MaintainedModel):
    name = models.CharField(max_length=50, default="")
    friends = models.ManyToManyField("self", blank=True)
    friend_count = models.IntegerField(default=0)

    @maintained_field("friend_count", depends_on=["friends__id"], label="counts")
    def compute_friend_count(self):
        return self.friends.count()


# A many-to-many with a custom through model, counted from both sides.


class Athlete(MaintainedModel):
    name = models.CharField(max_length=50, default="")
    club_count = models.IntegerField(default=0)

    @maintained_field("club_count", depends_on=["clubs"], label="counts")
    def compute_club_count(self):
        return self.clubs.count()


class Club(MaintainedModel):
    name = models.CharField(max_length=50, default="")
    athletes = models.ManyToManyField(Athlete, through="Membership", related_name="clubs", blank=True)
    athlete_count = models.IntegerField(default=0)

    @maintained_field("athlete_count", depends_on=["athletes__id"], label="counts")
    def compute_athlete_count(self):
        return self.athletes.count()


class Membership(models.Model):
    club = models.ForeignKey(Club, models.CASCADE)
    athlete = models.ForeignKey(Athlete, models.CASCADE)
    role = models.CharField(max_length=20, default="member")

    objects = MaintainedManager()

    class Meta:
        base_manager_name = "objects"


# A self-referential tree.  Over "children" (or "children__parent") the package reports a
# cycle (E004): the children's own child_count would count.  "children__id" counts rows
# joining and leaving only.


class Node(MaintainedModel):
    parent = models.ForeignKey("self", models.CASCADE, null=True, related_name="children")
    name = models.CharField(max_length=50, default="")
    child_count = models.IntegerField(default=0)

    @maintained_field("child_count", depends_on=["children__id"], label="counts")
    def compute_child_count(self):
        return self.children.count()


# A child with a composite primary key that includes its foreign key.


class Order(MaintainedModel):
    name = models.CharField(max_length=50, default="")
    line_count = models.IntegerField(default=0)

    @maintained_field("line_count", depends_on=["lines"], label="counts")
    def compute_line_count(self):
        return self.lines.count()


class OrderLine(MaintainedModel):
    pk = models.CompositePrimaryKey("order", "line_no")
    order = models.ForeignKey(Order, models.CASCADE, related_name="lines")
    line_no = models.IntegerField()
    qty = models.IntegerField(default=0)
