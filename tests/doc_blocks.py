"""The code blocks of docs/*.rst and README.md, and the doc blocks that define models.

A block is known by (file name, its index among the file's code blocks, its
first line): an edit that moves or rewrites a block changes its key, and
tests/test_docs.py then fails until the block is classified again.
"""

import re
from collections import namedtuple
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
Block = namedtuple("Block", "key language text")

# The blocks that define models, run in order as the models module of a test
# app (so the tables exist and the package's graph includes them).  Blocks of
# one page share one namespace, as a reader reads them.
MODEL_BLOCKS = {
    "tests.docs_readme": [("README.md", 0, "from django.db import models")],
    "tests.docs_quickstart": [
        ("quickstart.rst", 3, "from django.db import models"),
        ("quickstart.rst", 4, "from maintained_fields import MaintainedManager"),
    ],
    "tests.docs_expressions": [("quickstart.rst", 5, "from django.db import models")],
    "tests.docs_migrating": [("migrating.rst", 1, "from django.db import models")],
}


def sources():
    return [*sorted((ROOT / "docs").glob("*.rst")), ROOT / "README.md"]


def _rst_blocks(path):
    lines = path.read_text().splitlines()
    found = []
    for number, line in enumerate(lines):
        directive = re.match(r"\s*\.\. (code-block|code)::\s*(\S*)", line)
        if directive:
            language = directive[2] or "python"
        elif line.rstrip().endswith("::") and not re.match(r"\s*\.\. ", line):
            language = "python"  # a literal block: Sphinx highlights it as Python
        else:
            continue
        indent = len(line) - len(line.lstrip())
        body = []
        for following in lines[number + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        body = [b for b in body if not re.match(r"\s*:\w[\w-]*:", b)]  # directive options
        text = _dedent(body)
        found.append((language, text))
    return found


def _markdown_blocks(path):
    return [(m[1] or "text", m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```", path.read_text(), re.S | re.M)]


def _dedent(lines):
    import textwrap

    return textwrap.dedent("\n".join(lines)).strip("\n") + "\n"


def blocks():
    """Every code block of the docs and the README, in order, with its key."""
    result = []
    for path in sources():
        parsed = _markdown_blocks(path) if path.suffix == ".md" else _rst_blocks(path)
        for index, (language, text) in enumerate(parsed):
            result.append(Block((path.name, index, text.splitlines()[0].strip()), language, text))
    return result


def block(key):
    """The text of the block with this key; KeyError if the docs no longer have it."""
    for found in blocks():
        if found.key == key:
            return found.text
    raise KeyError(f"no code block {key} in the docs: tests/doc_blocks.py must follow the docs")


def define_models(namespace):
    """Run the doc blocks of the app whose models module ``namespace`` is."""
    app = namespace["__name__"].rpartition(".")[0]
    for key in MODEL_BLOCKS[app]:
        exec(compile(block(key), f"<{key[0]} block {key[1]}>", "exec"), namespace)
