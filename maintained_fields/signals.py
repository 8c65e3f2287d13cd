"""Signals the package sends."""

from django.dispatch import Signal

#: Sent after each batch of maintained values is written, with ``sender``
#: the model class, ``pks`` the primary keys of the rows written, ``fields``
#: the names of the fields written, and ``using`` the database alias.
maintained_values_written = Signal(use_caching=True)
