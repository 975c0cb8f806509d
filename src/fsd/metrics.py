"""What a run reports: per-layer timings, traffic, the challenge metric, as JSON or a table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fsd.cost import Cost


@dataclass
class LayerMetrics:
    """One layer, each field the maximum over workers (the slowest worker sets the pace)."""

    layer: int
    compute_s: float
    comm_s: float
    bytes: int


@dataclass
class RunResult:
    categories: np.ndarray  # sorted 1-based ids of images alive after the last layer
    row_sums: np.ndarray  # final activation sum of each of those images
    seconds: float
    images: int
    edges: int
    workers: int
    channel: str
    partition: str
    dtype: str
    bytes_sent: int
    messages: int
    activation_bytes: int
    planned_volume: int
    comm_share: float  # communication share of total worker time
    plan_seconds: float
    per_layer: list[LayerMetrics] = field(default_factory=list)
    correct: bool | None = None
    checked_against: str | None = None  # "truth" or "oracle"
    load_seconds: float = 0.0
    ops: dict[str, int] = field(default_factory=dict)  # counted by name (Channel.OPS)
    frames_rejected: int = 0  # frames dropped by any endpoint: forged, damaged, misplaced
    cost: Cost | None = None
    # per worker and layer: seconds computing and communicating, shape (workers, layers)
    worker_compute: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    worker_comm: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    run_id: str = ""
    worker_replies: dict[int, dict[str, Any]] = field(default_factory=dict)  # remote launchers
    function_seconds: list[float] = field(default_factory=list)  # coordinator first, then workers
    peak_rss_mb: float = 0.0  # the largest process of the run, coordinator included
    process_rss_mb: list[float] = field(default_factory=list)  # coordinator first, then workers
    # replicas x partitions (model-parallel workers per replica), and layers a worker holds
    parallelism: dict[str, Any] = field(default_factory=dict)

    @property
    def edges_per_second(self) -> float:
        """The Graph Challenge metric: images x total edges / inference seconds."""
        return self.images * self.edges / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "categories": [int(c) for c in self.categories],
            "n_categories": len(self.categories),
            "correct": self.correct,
            "checked_against": self.checked_against,
            "seconds": round(self.seconds, 6),
            "load_seconds": round(self.load_seconds, 6),
            "plan_seconds": round(self.plan_seconds, 6),
            "edges_per_second": self.edges_per_second,
            "images": self.images,
            "workers": self.workers,
            "parallelism": dict(self.parallelism),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "process_rss_mb": [round(mb, 1) for mb in self.process_rss_mb],
            "function_seconds": [round(s, 6) for s in self.function_seconds],
            "channel": self.channel,
            "partition": self.partition,
            "dtype": self.dtype,
            "bytes_sent": self.bytes_sent,
            "activation_bytes": self.activation_bytes,
            "messages": self.messages,
            "planned_volume": self.planned_volume,
            "comm_share": round(self.comm_share, 4),
            **self._shard_cache(),
            "requests": dict(self.ops),
            "frames_rejected": self.frames_rejected,
            "cost_usd": self.cost.to_json() if self.cost is not None else None,
            "per_layer": [
                {
                    "layer": m.layer,
                    "compute_s": round(m.compute_s, 6),
                    "comm_s": round(m.comm_s, 6),
                    "bytes": m.bytes,
                }
                for m in self.per_layer
            ],
        }

    def _shard_cache(self) -> dict[str, Any]:
        """For function runs: how many workers found their shard warm, and load times."""
        if not self.worker_replies:
            return {}
        replies = self.worker_replies.values()
        return {
            "shard_cache": {
                "hit": sum(1 for r in replies if r.get("shard_cache") == "hit"),
                "miss": sum(1 for r in replies if r.get("shard_cache") == "miss"),
                "load_seconds_max": max(float(r.get("shard_load_seconds", 0.0)) for r in replies),
            }
        }

    def summary(self) -> str:
        """A short human table."""
        return summary(self.to_json())


def _parallelism_row(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """How the workers were used, when the answer says (an older coordinator may not)."""
    par = data.get("parallelism")
    if not isinstance(par, Mapping) or not par:
        return []
    text = (
        f"{par.get('replicas')} replica(s) x {par.get('partitions')} partition(s), "
        f"{par.get('window')} layer(s) held"
    )
    if data.get("peak_rss_mb"):
        text += f"; peak {data['peak_rss_mb']:.0f} MB per process"
    return [("parallelism", text)]


def summary(data: Mapping[str, Any]) -> str:
    """A short human table of a run's JSON: :meth:`RunResult.to_json`, or a coordinator
    function's answer (the same fields), so a local and a remote run print alike."""
    verdict = {True: "yes", False: "NO", None: "not checked"}[data["correct"]]
    if data["checked_against"]:
        verdict += f" (against {data['checked_against']})"
    rows = [
        ("categories", f"{data['n_categories']} of {data['images']} images"),
        ("correct", verdict),
        ("inference", f"{data['seconds']:.3f} s"),
        ("loading", f"{data['load_seconds']:.3f} s (+ planning {data['plan_seconds']:.3f} s)"),
        ("rate", f"{data['edges_per_second'] / 1e9:.3f} G edges/s"),
        ("workers", f"{data['workers']} ({data['partition']} partition, {data['dtype']})"),
        *_parallelism_row(data),
        ("channel", str(data["channel"])),
        ("traffic", f"{data['bytes_sent'] / 1e6:.2f} MB in {data['messages']} messages"),
        ("communication", f"{100 * data['comm_share']:.1f}% of worker time"),
    ]
    cost = data.get("cost_usd")
    if cost is not None:
        rows.append(("cost", f"${cost['total_usd']:.8f} at AWS list prices"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
