"""What authenticating every frame costs: NATS, 2 workers, min-comm, side by side.

Three variants run in turns on the shared Graph Challenge net (2000 images), each in its own
process with its own embedded nats-server, so they share the machine the same way:

* ``current``: this tree, every frame sealed and verified (HMAC-SHA256, fsd.auth);
* ``no-mac``: this tree with the MAC replaced by a constant tag (sealing and the NATS dedupe id
  cost nothing; everything else identical): the price of the cryptography alone;
* ``before``: the code before frames were authenticated (``--before REF``, a git commit of this
  repository, checked out into a temporary worktree): the price of the whole change.

Each variant runs ``--runs`` inferences per turn, ``--turns`` turns; the report is each variant's
median and best inference seconds and the ratios to ``current``. Loading and planning are
excluded, as everywhere in the benchmarks.

    .venv/bin/python benchmarks/auth.py [--turns 3] [--runs 5] [--before 68b2c34]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "68b2c34"  # the last commit whose frames carried no MAC
WORKERS = 2


def _measure(data: Path, runs: int, stub_mac: bool) -> list[float]:
    """Inference seconds of ``runs`` NATS runs (in this process; used by the child processes)."""
    import numpy as np

    from fsd.channels import ChannelConfig
    from fsd.channels.nats import NatsOptions
    from fsd.coordinator import RunConfig, infer, prepare
    from fsd.embedded.nats import NatsServer
    from fsd.model import load_images, load_network

    if stub_mac:
        from fsd import wire
        from fsd.channels import base

        tag = bytes(32)
        wire.seal = lambda frame, key: b"".join([frame, tag])  # type: ignore[assignment]
        wire.unseal = lambda data, key: memoryview(data)[:-32]  # type: ignore[assignment]
        base.Channel._slot_id = lambda self, slot: f"{self.run.hex()}{slot}"  # type: ignore[method-assign]
    network = load_network(data)
    images = load_images(data, 1024)
    times = []
    with NatsServer() as server:
        config = RunConfig(
            workers=WORKERS,
            partition="min-comm",
            channel="nats",
            channel_config=ChannelConfig(
                "nats", server.url, options=NatsOptions(token=server.token)
            ),
        )
        prepared = prepare(network, config)
        infer(prepared, images.matrix, config)  # warm-up: stream, consumers, page cache
        for _ in range(runs):
            result = infer(prepared, images.matrix, config)
            if not np.array_equal(result.categories, images.truth[120]):
                raise SystemExit("wrong answer")
            times.append(result.seconds)
    return times


def _child(variant: str, src: Path, data: Path, runs: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    args = [sys.executable, __file__, "--child", variant, "--data", str(data), "--runs", str(runs)]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-2000:]}")
    times: list[float] = json.loads(out.stdout.strip().splitlines()[-1])
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "graphchallenge")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--before", default=BEFORE, help="git ref without MACs ('' to skip)")
    parser.add_argument("--child", choices=["current", "no-mac"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (args.data / "neuron1024").is_dir():
        print(f"benchmark data not found at {args.data}", file=sys.stderr)
        return 2
    if args.child:
        print(json.dumps(_measure(args.data, args.runs, args.child == "no-mac")))
        return 0
    variants: dict[str, Path] = {"current": ROOT / "src", "no-mac": ROOT / "src"}
    worktree = None
    if args.before and shutil.which("git") and (ROOT / ".git").exists():
        worktree = Path(tempfile.mkdtemp(prefix="fsd-before-"))
        made = subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.before],
            capture_output=True,
            text=True,
            check=False,
        )
        if made.returncode == 0:
            variants["before"] = worktree / "src"
        else:
            print(f"skipping 'before': {made.stderr.strip()}", file=sys.stderr)
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        names = list(variants)
        for turn in range(args.turns):
            # each turn starts with another variant, so none always runs first (or last)
            order = names[turn % len(names) :] + names[: turn % len(names)]
            for name in order:
                src = variants[name]
                child = "no-mac" if name == "no-mac" else "current"
                times[name] += _child(child, src, args.data, args.runs)
                print(f"turn {turn + 1}: {name:<8} median {statistics.median(times[name]):.4f} s")
    finally:
        if worktree is not None:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                capture_output=True,
                check=False,
            )
            shutil.rmtree(worktree, ignore_errors=True)
    current = statistics.median(times["current"])
    report: dict[str, Any] = {}
    print(f"\n| NATS, {WORKERS} workers, min-comm | median s | best s | current vs this |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        overhead = (current / median - 1) * 100
        report[name] = {"median": median, "best": min(values), "runs": len(values)}
        shown = "-" if name == "current" else f"{overhead:+.1f}%"
        print(f"| {name} | {median:.4f} | {min(values):.4f} | {shown} |")
    out = ROOT / "benchmarks" / "results" / "auth.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
