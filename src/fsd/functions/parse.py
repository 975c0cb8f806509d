"""Request bodies parsed with limits, then checked against a JSON Schema shipped in the package.

``json.loads`` alone accepts ``NaN`` and ``Infinity``, turns ``1e400`` into ``inf``, raises a bare
ValueError on a 5000-digit integer and a RecursionError on deep nesting; JSON Schema's
``integer`` accepts ``1e300``. Here every number is finite, every integer a Python ``int`` of at
most :data:`MAX_INT_DIGITS` digits, a body holds at most :data:`MAX_CONTAINERS` objects and
arrays nested at most :data:`MAX_DEPTH` deep (counted before parsing), and the schemas'
``integer`` means an ``int`` (never a float, never a bool); anything else is an
:class:`~fsd.errors.InputError` naming the problem.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from fsd.channels import REMOTE_CHANNELS
from fsd.errors import InputError

MAX_DEPTH = 16
"""Deepest nesting of objects and arrays accepted (the schemas need 3)."""
MAX_INT_DIGITS = 20
"""Longest integer literal accepted (an int64 has 19 digits)."""
MAX_CONTAINERS = 1000
"""Most objects and arrays in one body (the schemas need fewer than 10)."""


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


# a JSON string literal (what is inside may hold brackets that are not structure)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _structure(body: bytes) -> None:
    """Refuse too many or too deeply nested objects and arrays, before any is built.

    Counted on the bytes with string literals taken out, in C but for the final loop, which
    sees at most 2 * MAX_CONTAINERS brackets: a body of a million empty arrays (hundreds of MB
    once parsed) or nested 100 000 deep costs a few milliseconds to refuse.
    """
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") > MAX_CONTAINERS:
        raise MalformedJSON(f"more than {MAX_CONTAINERS} objects and arrays")
    depth = 0
    for byte in brackets:
        depth += 1 if byte in b"[{" else -1
        if depth > MAX_DEPTH:
            raise MalformedJSON(f"nested deeper than {MAX_DEPTH} levels")


def load_json(body: bytes) -> Any:
    """The JSON value of ``body``; MalformedJSON when it is not strict JSON within the limits."""
    _structure(body)
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
    return value


def _is_int(_checker: object, instance: object) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


_STRICT = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_int),
)


ENUMS: dict[str, tuple[str, ...]] = {"channels": REMOTE_CHANNELS}
"""What a schema's ``"x-fsd-enum"`` names: its ``enum`` is replaced by these values when loaded,
so the transport registry decides the channels a request may name (the files list them too,
for readers of the published schemas)."""


def _fill_enums(node: Any) -> None:
    if isinstance(node, dict):
        if "x-fsd-enum" in node:
            node["enum"] = list(ENUMS[node["x-fsd-enum"]])
        for value in node.values():
            _fill_enums(value)
    elif isinstance(node, list):
        for value in node:
            _fill_enums(value)


@cache
def _schema(path: Path) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(path.read_text())
    _fill_enums(schema)
    _STRICT.check_schema(schema)
    return schema


@cache
def validator(path: Path) -> jsonschema.protocols.Validator:
    """The schema at ``path`` (checked once), where ``integer`` means a Python int."""
    checker: jsonschema.protocols.Validator = _STRICT(_schema(path))
    return checker


def problem(path: Path, instance: Any, bulk: tuple[tuple[str, ...], ...] = ()) -> str | None:
    """The first schema violation of ``instance`` as ``where: what``, or None.

    ``bulk`` names arrays of numbers (paths of object keys) that may hold a million items:
    those are checked here against their schema's ``maxItems`` and ``items`` (type, minimum,
    maximum) at C speed, then left out of the schema pass, where jsonschema would spend about
    5 us per item (15 s on a 16 MiB body).
    """
    schema = _schema(path)
    light = instance
    for where in bulk:
        items = _get(instance, where)
        if isinstance(items, list):
            sub = _subschema(schema, where)
            found = _numbers("/".join(where), items, sub)
            if found:
                return found
            light = _put(light, where, [])
    found_errors = itertools.islice(validator(path).iter_errors(light), 20)
    errors = sorted(found_errors, key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return None
    first = errors[0]
    where_ = "/".join(str(p) for p in first.absolute_path) or "request"
    return f"{where_}: {first.message[:300]}"


def _get(instance: Any, where: tuple[str, ...]) -> Any:
    for key in where:
        if not isinstance(instance, dict):
            return None
        instance = instance.get(key)
    return instance


def _put(instance: Any, where: tuple[str, ...], value: Any) -> Any:
    """A copy of ``instance`` with ``value`` at ``where`` (the containers on the way copied)."""
    if not where:
        return value
    out = dict(instance)
    out[where[0]] = _put(instance[where[0]], where[1:], value)
    return out


def _subschema(schema: dict[str, Any], where: tuple[str, ...]) -> dict[str, Any]:
    for key in where:
        schema = schema["properties"][key]
    return schema


def _numbers(name: str, items: list[Any], schema: dict[str, Any]) -> str | None:
    """``items`` against an array schema of integers or numbers with bounds."""
    most = schema.get("maxItems")
    if most is not None and len(items) > most:
        return f"{name}: {len(items)} items, more than the maximum of {most}"
    item = schema["items"]
    kind = item["type"]
    allowed = (int,) if kind == "integer" else (int, float)
    bad = next((i for i, x in enumerate(items) if type(x) not in allowed), None)
    if bad is not None:
        return f"{name}/{bad}: {repr(items[bad])[:30]} is not of type {kind!r}"
    if not items:
        return None
    low, high = item.get("minimum", -math.inf), item.get("maximum", math.inf)
    if min(items) < low or max(items) > high:
        i, x = next((i, x) for i, x in enumerate(items) if not low <= x <= high)
        side = (
            f"less than the minimum of {low}" if x < low else f"greater than the maximum of {high}"
        )
        return f"{name}/{i}: {x} is {side}"
    return None
