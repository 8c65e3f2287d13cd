#!/usr/bin/env python
"""Run the test suite: ``python runtests.py [pytest arguments]``.

The database is SQLite in memory unless DATABASE_URL names another one.
"""

import os
import sys
from importlib.util import find_spec

if __name__ == "__main__":
    if not (find_spec("pytest") and find_spec("pytest_django")):
        sys.exit(
            "The test dependencies are missing: pip install -e '.[test]' "
            "(the README's test command does this in a virtual environment)."
        )
    import pytest

    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    sys.exit(pytest.main(sys.argv[1:]))
