"""A function on the fsd-python3-http template (``faas-cli new --lang fsd-python3-http NAME``).

``event`` has ``body`` (bytes), ``headers``, ``method``, ``query`` and ``path``; ``context`` has
``hostname``. Return a dict ``{"statusCode", "body", "headers"}`` (a dict or list body is sent as
JSON), a ``str`` or ``bytes``. The template's index.py states the whole contract.
"""

from __future__ import annotations

from typing import Any


def handle(event: Any, context: Any) -> dict[str, Any]:
    return {"statusCode": 200, "body": {"message": "Hello from fsd-python3-http"}}
