"""One lookup for every registry of backends: a table of name -> ``module:attribute``.

Only a module the table names is ever imported, and only when its backend is first used, so a
backend's client library loads with it; any other name is an :class:`InputError` naming the
choices, before anything is imported or connected.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from fsd.errors import InputError


def load(table: Mapping[str, str], kind: str, what: str) -> Any:
    """The object ``table`` names for ``kind`` (``what`` names the seam in the message)."""
    if kind not in table:
        raise InputError(f"unknown {what} {kind!r}; choose one of {', '.join(table)}")
    module, _, name = table[kind].partition(":")
    return getattr(importlib.import_module(module), name)
