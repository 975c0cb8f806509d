"""Request bodies parsed with limits, then checked against a JSON Schema shipped in the package.

``json.loads`` alone accepts ``NaN`` and ``Infinity``, turns ``1e400`` into ``inf``, raises a bare
ValueError on a 5000-digit integer and a RecursionError on deep nesting; JSON Schema's
``integer`` accepts ``1e300``. Here every number is finite, every integer a Python ``int`` of at
most :data:`MAX_INT_DIGITS` digits, nesting at most :data:`MAX_DEPTH` deep, and the schemas'
``integer`` means an ``int`` (never a float, never a bool); anything else is an
:class:`~fsd.errors.InputError` naming the problem.
"""

from __future__ import annotations

import itertools
import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from fsd.errors import InputError

MAX_DEPTH = 16
"""Deepest nesting of objects and arrays accepted (the schemas need 3)."""
MAX_INT_DIGITS = 20
"""Longest integer literal accepted (an int64 has 19 digits)."""


class MalformedJSON(InputError):
    """The body is not strict, finite JSON within the parser's limits."""


def _no_constant(name: str) -> Any:
    raise MalformedJSON(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise MalformedJSON(f"number {text[:30]} is out of range")
    return value


def _short_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise MalformedJSON(f"integer of {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _depth(value: Any) -> int:
    """How deep ``value`` nests (a scalar is 0), without recursion; stops past the limit."""
    if not isinstance(value, dict | list):
        return 0
    deepest = 0
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack and deepest <= MAX_DEPTH:
        item, level = stack.pop()
        deepest = max(deepest, level)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, level + 1) for c in children if isinstance(c, dict | list))
    return deepest


def load_json(body: bytes) -> Any:
    """The JSON value of ``body``; MalformedJSON when it is not strict JSON within the limits."""
    try:
        value = json.loads(
            body,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_short_int,
        )
    except RecursionError:
        raise MalformedJSON(f"nested deeper than {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedJSON(str(exc)) from None
    if _depth(value) > MAX_DEPTH:
        raise MalformedJSON(f"nested deeper than {MAX_DEPTH} levels")
    return value


def _is_int(_checker: object, instance: object) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


_STRICT = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_int),
)


@cache
def validator(path: Path) -> jsonschema.protocols.Validator:
    """The schema at ``path`` (checked once), where ``integer`` means a Python int."""
    schema = json.loads(path.read_text())
    _STRICT.check_schema(schema)
    checker: jsonschema.protocols.Validator = _STRICT(schema)
    return checker


def problem(path: Path, instance: Any) -> str | None:
    """The first schema violation of ``instance`` as ``where: what``, or None."""
    found = itertools.islice(validator(path).iter_errors(instance), 20)
    errors = sorted(found, key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return None
    first = errors[0]
    where = "/".join(str(p) for p in first.absolute_path) or "request"
    return f"{where}: {first.message[:300]}"
