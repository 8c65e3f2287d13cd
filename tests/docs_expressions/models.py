"""Models defined by code blocks of the docs, run from the docs themselves (tests/doc_blocks.py)."""

from tests.doc_blocks import define_models

define_models(globals())
