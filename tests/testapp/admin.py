from django.contrib import admin

from maintained_fields import MaintainedModelAdminMixin

from .models import Sample, Study, Tag


class SampleInline(MaintainedModelAdminMixin, admin.TabularInline):
    model = Sample
    fields = ["name", "weight", "code"]
    extra = 1


@admin.register(Study)
class StudyAdmin(MaintainedModelAdminMixin, admin.ModelAdmin):
    inlines = [SampleInline]
    readonly_fields = ["slug"]


admin.site.register(Tag)
