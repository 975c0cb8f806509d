"""The model's recent inference latency on OpenFaaS, for ``status.lastLatencySeconds``, asked from
Prometheus (the operator's OpenFaaS platform, :mod:`fsd.k8s.openfaas`, reads it).

:func:`last_latency` asks Prometheus' HTTP API (``GET /api/v1/query``) for the mean seconds of the
coordinator function's requests over the last five minutes, from the OpenFaaS gateway's own
histogram: every gateway replica observes every request it proxies, whichever function replica
served it, so the answer covers the whole fleet. Upstream (openfaas/faas at 8d803bf, 2026-07):

* ``gateway/metrics/metrics.go``, ``BuildMetricsOptions``: the histogram
  ``gateway_functions_seconds`` with labels ``function_name`` and ``code``;
* ``gateway/handlers/notifiers.go``, ``PrometheusFunctionNotifier.Notify``: observed when a request
  completes, ``function_name`` being ``<name>.<namespace>`` (the gateway appends its default
  function namespace to a bare name), so ``<function>.<namespace>`` names one function in any
  namespace.

The query is ``sum(rate(..._sum[5m])) / sum(rate(..._count[5m]))``: summed over status codes and
gateway replicas, then divided, which is the mean latency and not a mean of means. Latency is a
nicety of the status: no traffic in the window (0/0 is NaN), an unreachable or slow Prometheus, or
an answer that is not one finite, non-negative number all give None, and nothing here raises.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from typing import Any, Final
from urllib.parse import urlsplit

import urllib3

from fsd.bounded import read_within
from fsd.redact import redact, redact_text

log = logging.getLogger(__name__)

WINDOW: Final = "5m"
METRIC: Final = "gateway_functions_seconds"
QUERY: Final = (
    'sum(rate({metric}_sum{{function_name="{label}"}}[{window}]))'
    ' / sum(rate({metric}_count{{function_name="{label}"}}[{window}]))'
)
MAX_ANSWER: Final = 64 * 1024
"""Bytes of an answer read at most: a one-sample vector is a few hundred."""

# a Kubernetes name (DNS-1123 label): all a function or namespace name may be, and nothing that
# could close the PromQL string it goes into
_NAME: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def latency_query(function: str, namespace: str) -> str:
    """The PromQL of :func:`last_latency` (``function`` and ``namespace`` already checked)."""
    return QUERY.format(metric=METRIC, label=f"{function}.{namespace}", window=WINDOW)


def last_latency(
    prometheus_url: str, function: str, namespace: str, *, timeout: float
) -> float | None:
    """Mean seconds of ``function``'s requests in ``namespace`` over the last five minutes.

    None when there was no traffic, Prometheus cannot be reached in ``timeout`` seconds, or its
    answer is not one finite, non-negative number; an empty ``prometheus_url`` turns it off.
    Never raises.
    """
    if not prometheus_url:
        return None
    if not (_NAME.fullmatch(function) and _NAME.fullmatch(namespace)):
        log.warning("no latency for %r in %r: not Kubernetes names", function[:80], namespace[:80])
        return None
    if not (math.isfinite(timeout) and timeout > 0):
        log.warning("no latency: the timeout must be a positive number of seconds, not %r", timeout)
        return None
    if not _http_url(prometheus_url):
        where = redact(prometheus_url)
        log.warning("no latency: the Prometheus URL must be http(s)://host[:port]: %s", where)
        return None
    try:
        body = _get(prometheus_url, latency_query(function, namespace), timeout)
    except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        where, why = redact(prometheus_url), redact_text(str(exc))[:300]
        log.info("no latency from Prometheus %s: %s: %s", where, type(exc).__name__, why)
        return None
    value = _one_value(body)
    if value is None:
        log.debug("no latency for %s.%s in Prometheus' answer", function, namespace)
    return value


def _http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port out of range, a bad IPv6 literal
        return False


def _get(prometheus_url: str, query: str, timeout: float) -> bytes | None:
    """The body of Prometheus' answer: None if not a 200, longer than :data:`MAX_ANSWER` bytes,
    or slower than about twice ``timeout`` in all (a server trickling bytes is cut off too)."""
    deadline = time.monotonic() + 2 * timeout
    parts = urlsplit(prometheus_url)
    headers = {"Accept": "application/json"}
    if parts.username is not None:  # http://user:password@host: basic auth, never in the URL sent
        userinfo = f"{parts.username}:{parts.password or ''}"
        headers.update(urllib3.make_headers(basic_auth=userinfo))
        netloc = parts.hostname or ""
        netloc = f"[{netloc}]" if ":" in netloc else netloc
        parts = parts._replace(netloc=f"{netloc}:{parts.port}" if parts.port else netloc)
    url = f"{parts.geturl().rstrip('/')}/api/v1/query"
    with urllib3.PoolManager(
        retries=urllib3.Retry(total=0, redirect=False),  # a redirect is an odd answer, not followed
        timeout=urllib3.Timeout(connect=min(timeout, 5.0), read=timeout),
    ) as http:
        response = http.request(
            "GET", url, fields={"query": query}, headers=headers, preload_content=False
        )
        try:
            if response.status != 200:
                log.info("Prometheus answered HTTP %d to the latency query", response.status)
                return None
            try:
                body = read_within(response, MAX_ANSWER, deadline)
            except TimeoutError:
                log.info("Prometheus took too long to answer the latency query")
                return None
            return body if len(body) <= MAX_ANSWER else None
        finally:
            response.release_conn()


def _one_value(body: bytes | None) -> float | None:
    """The one finite, non-negative sample of an instant-vector answer, else None.

    Checked field by field: ``{"status": "success", "data": {"resultType": "vector", "result":
    [{"metric": {}, "value": [<time>, "<number>"]}]}}`` (Prometheus' HTTP API, "Instant queries").
    """
    if body is None:
        return None
    try:
        answer: Any = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(answer, dict) or answer.get("status") != "success":
        return None
    data = answer.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        return None
    result = data.get("result")
    if not isinstance(result, list) or len(result) != 1 or not isinstance(result[0], dict):
        return None  # empty: no such series (no traffic ever); several: not our sum()
    sample = result[0].get("value")
    if not isinstance(sample, list) or len(sample) != 2 or not isinstance(sample[1], str):
        return None
    try:
        value = float(sample[1])
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
