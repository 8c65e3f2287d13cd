"""A tasks backend whose broker is down, for the background mode's fallback."""

from maintained_fields.conf import tasks_framework

BaseTaskBackend = tasks_framework().backends.base.BaseTaskBackend


class DownBackend(BaseTaskBackend):
    def enqueue(self, task, args, kwargs):
        raise ConnectionError("the broker is down")
