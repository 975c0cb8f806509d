"""The model's recent inference latency, for ``status.lastLatencySeconds``.

The coordinator function exposes ``fsd_request_seconds`` (fsd.observe) on ``/metrics``, which the
gateway reaches at ``/function/<coordinator>/metrics``. Between two looks, the new requests' mean
latency is (sum now - sum then) / (count now - count then); nothing new, nothing to report. With
several coordinator replicas the gateway answers from one of them: a sample, not the fleet.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Totals = tuple[float, float]  # (sum of seconds, number of requests)


def coordinator_totals(exposition: str) -> Totals | None:
    """Sum and count of the coordinator's requests in a Prometheus text exposition."""
    total = count = 0.0
    found = False
    try:
        for family in text_string_to_metric_families(exposition):
            if family.name != "fsd_request_seconds":
                continue
            for sample in family.samples:
                if sample.labels.get("function") != "coordinator":
                    continue
                if sample.name.endswith("_sum"):
                    total += sample.value
                    found = True
                elif sample.name.endswith("_count"):
                    count += sample.value
    except ValueError:  # not an exposition: no sample
        return None
    return (total, count) if found else None


def recent_latency(now: Totals, before: Totals | None) -> float | None:
    """Mean seconds of the requests since ``before`` (all of them when None); None if none."""
    total, count = now
    if before is not None and count >= before[1]:
        total, count = total - before[0], count - before[1]
    return total / count if count > 0 else None
