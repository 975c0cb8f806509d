"""Where things are, for tests in any folder: the checkout (``ROOT``), this tests folder, and the
real Graph Challenge data beside the checkout. One place, so moving a test file never changes what
a path means."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
SHARED = ROOT.parent / "shared" / "graphchallenge"


def script_env(**extra: str) -> dict[str, str]:
    """This process's environment plus ``extra``, with this folder first on ``PYTHONPATH``: for a
    test file run as a script in a child, whose own folder alone would not find the helpers here."""
    path = [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, **extra, "PYTHONPATH": os.pathsep.join(path)}
