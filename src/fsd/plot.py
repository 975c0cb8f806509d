"""A per-worker timeline of a run: where each worker spent its time, layer after layer.

The table of :meth:`fsd.metrics.RunResult.summary` gives totals; the timeline shows *which* worker
is the straggler and whether layers are compute- or communication-bound. matplotlib is an optional
dependency (``fsd[plot]``), imported only when a plot is drawn, so fsd runs without it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from fsd.errors import InputError
from fsd.metrics import RunResult

COMPUTE_COLOUR = "tab:blue"
COMM_COLOUR = "tab:orange"
_HINT = "matplotlib is needed for plots: pip install 'fsd[plot]'"


def check_available() -> None:
    """Raise InputError with the install hint if matplotlib is missing (before a long run)."""
    if importlib.util.find_spec("matplotlib") is None:
        raise InputError(_HINT)


def check_path(path: Path) -> None:
    """Raise InputError unless ``path`` is a .png file whose folder exists (before a long run)."""
    if path.suffix.lower() != ".png":
        raise InputError(f"plot file must end in .png: {path}")
    if path.is_dir():
        raise InputError(f"plot file is a directory: {path}")
    if not path.parent.is_dir():
        raise InputError(f"folder of the plot file does not exist: {path.parent}")


def _segments(compute: np.ndarray, comm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start times of one worker's compute and comm segments, each layer being compute then comm.

    Returns (compute_starts, comm_starts); widths are ``compute`` and ``comm`` themselves.
    """
    durations = np.column_stack([compute, comm]).ravel()  # c1, m1, c2, m2, ...
    starts = np.cumsum(durations) - durations
    return starts[0::2], starts[1::2]


def timeline(result: RunResult, path: Path | str, model: str | None = None) -> Path:
    """Draw each worker's layers as consecutive compute and comm bars; save a PNG at ``path``.

    Uses the Agg canvas directly (no pyplot), so it never opens a window nor changes the global
    matplotlib backend, and works in threads and on headless servers.
    """
    path = Path(path)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
        from matplotlib.patches import Patch  # noqa: PLC0415
    except ImportError:
        raise InputError(_HINT) from None
    compute = np.asarray(result.worker_compute, dtype=float)
    comm = np.asarray(result.worker_comm, dtype=float)
    if compute.ndim != 2 or compute.shape != comm.shape or compute.size == 0:
        raise InputError(
            f"no per-worker timings to plot (compute {compute.shape}, comm {comm.shape})"
        )
    workers, layers = compute.shape
    figure = Figure(figsize=(11, 1.5 + 0.5 * workers), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for w in range(workers):
        c_starts, m_starts = _segments(compute[w], comm[w])
        for starts, widths, colour in (
            (c_starts, compute[w], COMPUTE_COLOUR),
            (m_starts, comm[w], COMM_COLOUR),
        ):
            axes.broken_barh(
                list(zip(starts.tolist(), widths.tolist(), strict=True)),
                (w - 0.4, 0.8),
                facecolors=colour,
                edgecolors="white",  # a thin line between layers
                linewidth=0.3,
            )
    axes.set_yticks(range(workers), [f"worker {w}" for w in range(workers)])
    axes.invert_yaxis()  # worker 0 on top
    axes.set_xlabel("seconds (worker time, layers in order)")
    axes.set_ylabel("worker")
    axes.set_xlim(0, max(float((compute + comm).sum(axis=1).max()), 1e-9))
    axes.legend(
        handles=[
            Patch(color=COMPUTE_COLOUR, label="compute"),
            Patch(color=COMM_COLOUR, label="communication"),
        ],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),  # outside the axes: never hides a bar
    )
    axes.set_title(
        f"{model or 'model'}: {layers} layers, channel {result.channel}, "
        f"{result.workers} workers, {result.seconds:.3f} s"
    )
    try:
        figure.savefig(path, format="png", dpi=100)
    except OSError as exc:
        raise InputError(f"cannot write plot {path}: {exc.strerror or exc}") from None
    return path
