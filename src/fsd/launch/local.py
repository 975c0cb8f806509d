"""Local launcher: each worker is a forked process (it inherits its shard, or streams it from a
local folder store: see ``fsd.coordinator.prepare``; nothing is serialised)."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Sequence
from typing import Any, Self

from fsd import lifetime
from fsd.channels import open_channel
from fsd.launch.base import Launcher, LauncherOptions
from fsd.task import WorkerTask
from fsd.worker import run_worker

log = logging.getLogger(__name__)


_PR_SET_NAME = 15  # <linux/prctl.h>


def _name_process(name: str) -> None:
    """Show ``name`` (at most 15 bytes) as the process's name in ps, top and /proc/PID/comm,
    so that one forked worker can be told from another (where there is prctl; else nothing)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def _entry(task: WorkerTask, progress: Any, last_words: Any, parent: int) -> None:
    # die with the coordinator even when it is SIGKILLed, and let SIGTERM kill a worker at once
    # (a fork inherits the coordinator's handler, which would unwind the coordinator's state)
    lifetime.die_with_parent()
    if os.getppid() != parent:
        os._exit(1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _name_process(f"fsd-worker-{task.worker}")

    def on_layer(layer: int) -> None:
        progress[task.worker] = layer

    try:
        with open_channel(task.channel, task.run, task.worker) as channel:
            run_worker(task, channel, on_layer)
    except BaseException as exc:
        # run_worker reported it over the channel when it could; this pipe is for when it could
        # not (the channel itself failed), so the coordinator can still say why
        last_words.put((task.worker, f"{type(exc).__name__}: {exc}"))
        os._exit(1)
    os._exit(0)


class LocalLauncher(Launcher):
    """Forks one process per worker; needs no settings, no secret beyond the run's own."""

    LOCAL = True

    def __init__(self) -> None:
        super().__init__()
        self._ctx = mp.get_context("fork")
        self._procs: list[mp.process.BaseProcess] = []
        self._progress: Any = None
        self._last_words = self._ctx.SimpleQueue()
        self._why: dict[int, str] = {}

    @classmethod
    def create(
        cls, options: LauncherOptions, *, secret: bytes, timeout: float, fanout: int
    ) -> Self:
        """Forked workers are timed by the coordinator, get the run's own secret with their
        task, and are all started by it (no tree)."""
        return cls()

    def launch(self, tasks: Sequence[WorkerTask]) -> None:
        self._progress = self._ctx.Array("i", len(tasks), lock=False)
        for task in tasks:
            proc = self._ctx.Process(
                target=_entry,
                args=(task, self._progress, self._last_words, os.getpid()),
                name=f"fsd-worker-{task.worker}",
            )
            proc.start()
            self._procs.append(proc)

    def failures(self) -> dict[int, str]:
        while not self._last_words.empty():
            worker, why = self._last_words.get()
            self._why[worker] = why
        return {
            i: self._why.get(i, f"process exited with code {p.exitcode}")
            for i, p in enumerate(self._procs)
            if p.exitcode not in (None, 0)
        }

    def progress(self) -> int:
        return min(self._progress) if self._progress is not None and len(self._progress) else -1

    def worker_progress(self) -> dict[int, int]:
        return dict(enumerate(self._progress)) if self._progress is not None else {}

    def abort(self) -> None:
        """Kill every worker at once: a failed run has nothing left to wait for."""
        self.close(grace=0.0)

    def close(self, grace: float = 2.0) -> None:
        """Give workers ``grace`` seconds in all to exit, then kill the rest."""
        deadline = time.monotonic() + grace
        for proc in self._procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._procs = []
        self._last_words.close()
