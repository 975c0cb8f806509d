"""MPI baseline: fsd's model-parallel inference over Open MPI, beside fsd on the same partition.

What it isolates: communication. Both sides cut the network with the same plan
(:func:`fsd.partition.make_plan`, min-comm) into the same shards (:func:`fsd.shard.build_shards`,
written once with :func:`fsd.shard.shard_to_bytes` and read back by each rank) and compute every
layer with the same compiled kernels (:mod:`fsd.kernels`: ``partial_product``, ``finish_layer``,
``gather_columns``, ``coo_to_csr``) in the same order as fsd's worker loop (:mod:`fsd.worker`):
send the boundary block first, multiply the local inputs while messages travel, then fold in what
arrived. What differs is the transport: here each rank sends each peer, point to point
(``Isend``; ``Probe`` + ``Recv``), exactly the activations the plan says it needs (the shard's
selection maps, which :func:`build_shards` derives from ``plan.layers[k].pairs``), as one raw
buffer; fsd frames, seals (HMAC), compresses (zstd, when it pays) and checks every message it
receives, and goes through its channel (mailbox files, or a NATS server).

Timing, like fsd's: from rank 0 holding all images to rank 0 holding every image's result (rank 0
sends each rank its input columns, every rank runs every layer, rank 0 gathers (alive rows, row
sums)); loading, planning, cutting and kernel compilation are outside, each run starts after a
barrier. Rank 0 is also worker 0: MPI has no separate coordinator process, fsd has one. The
contenders take turns (one MPI run, then one run of each fsd variant, ``--repeat`` turns), so a
machine whose load drifts treats them alike; each row keeps its best run.

    .venv/bin/python benchmarks/mpi_baseline.py [--data ../shared/graphchallenge] [--ranks 2,4]
        [--repeat 3] [--generate 16384] [--generate-layers 120] [--generate-images 1000]
        [--only-generated]

The driver (this command) plans and cuts, runs ``mpirun -n P`` of this script in rank mode
(``--rank-dir``) and fsd (:func:`fsd.run.run`) on the local and NATS channels with the
same P and partition (NATS with and without zstd), and prints a markdown table for
docs/benchmarks.md; exits 1 if any run is wrong. As root, mpirun needs ``--allow-run-as-root``
(added then); ``--oversubscribe`` lets 4 ranks share 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

import fsd
from fsd import kernels
from fsd.channels import ChannelConfig
from fsd.coordinator import RunConfig, serve, split_inputs
from fsd.model import Images, Network, load_images, load_network
from fsd.model.generate import generate
from fsd.partition import Plan, make_plan
from fsd.run import Job, Local
from fsd.run import run as fsd_run
from fsd.shard import LayerShard, Shard, build_shards, shard_from_bytes, shard_to_bytes
from fsd.worker import result_rows

ROOT = Path(__file__).resolve().parents[1]
PARTITION = "min-comm"
DTYPE = "float32"
TAG_INPUT = 0  # tags: 0 the inputs, 1..depth layer k's activations, depth + 1 the results
_U16 = np.empty(0, np.uint16)
_U32 = np.empty(0, np.uint32)

Csr = kernels.Csr


# -- messages: flat numpy buffers, no pickle ------------------------------------------------------


def pack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Arrays as one uint8 buffer: their lengths (int64 each), then their bytes in order."""
    head = np.array([len(a) for a in arrays], np.int64).view(np.uint8)
    return np.concatenate([head, *(np.ascontiguousarray(a).view(np.uint8) for a in arrays)])


def unpack(buf: np.ndarray, dtypes: Sequence[np.dtype[Any]]) -> list[np.ndarray]:
    """Inverse of :func:`pack`, given each array's dtype (both sides know them)."""
    n = len(dtypes)
    lengths = buf[: 8 * n].view(np.int64)
    out, at = [], 8 * n
    for length, dtype in zip(lengths, dtypes, strict=True):
        size = int(length) * dtype.itemsize
        out.append(buf[at : at + size].view(dtype))
        at += size
    if at != len(buf):
        raise ValueError(f"a buffer of {len(buf)} bytes holds {at}")
    return out


def position_dtype(wanted: int) -> np.dtype[Any]:
    """What gather_columns writes positions as: u16 when the peer's list is short (as fsd)."""
    return np.dtype(np.uint16) if wanted <= 1 << 16 else np.dtype(np.uint32)


def activations(y: Csr, selmap: np.ndarray, wanted: int) -> np.ndarray:
    """The buffer for one peer: (rows with any, counts, positions, values) of the columns it
    needs, exactly as fsd's worker gathers them (``fsd.worker._activations``)."""
    like = _U16 if position_dtype(wanted) == np.uint16 else _U32
    return pack(kernels.gather_columns(*y, selmap, like))


def assemble(layer: LayerShard, got: dict[int, np.ndarray], images: int, dtype: str) -> Csr:
    """The received block, sources stacked in order (fsd's ``_assemble`` without its checks:
    MPI ranks of one job trust each other)."""
    rows, cols, vals = [], [], []
    ends = [*layer.offsets[1:], layer.n_remote]
    for src, off, end in zip(layer.sources, layer.offsets, ends, strict=True):
        types = [np.dtype(np.uint32), np.dtype(np.uint32), position_dtype(end - off)]
        r, n, c, v = unpack(got[src], [*types, np.dtype(dtype)])
        rows.append(np.repeat(r, n))
        cols.append(c.astype(np.uint32) + np.uint32(off))
        vals.append(v)
    csr: Csr = kernels.coo_to_csr(
        images, np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    )
    return csr


def result_arrays(y: Csr) -> list[np.ndarray]:
    """(alive rows u32, their float64 sums): what a worker reports (fsd's RESULT rows)."""
    return list(result_rows(y))


# -- the layer loop, over any point-to-point link -------------------------------------------------


class Link(Protocol):
    """Point-to-point sends and receives of uint8 buffers, by peer and tag."""

    def send(self, dst: int, tag: int, buf: np.ndarray) -> None: ...

    def recv(self, src: int, tag: int) -> np.ndarray: ...


@dataclass
class Counters:
    """One rank's traffic and time in one run (what crossed between ranks, raw buffer bytes)."""

    act_bytes: int = 0
    act_messages: int = 0
    other_bytes: int = 0  # inputs and results
    compute: float = 0.0
    comm: float = 0.0


def send_layer(shard: Shard, k: int, y: Csr, link: Link, counters: Counters) -> None:
    """Send layer k's peers (0-based k) what they need of ``y`` (tag k + 1), empty or not: every
    receiver waits on every source the plan names (fsd does the same)."""
    t = time.perf_counter()
    for dst, selmap, wanted in shard.layers[k].sends:
        buf = activations(y, selmap, wanted)
        link.send(dst, k + 1, buf)
        counters.act_bytes += len(buf)
        counters.act_messages += 1
    counters.comm += time.perf_counter() - t


def run_layer(
    shard: Shard,
    k: int,
    y: Csr,
    link: Link,
    counters: Counters,
    images: int,
    bias: float,
    ymax: float,
    dtype: str,
) -> Csr:
    """Layer k + 1 on this rank: fsd's worker loop (``fsd.worker._run``) with MPI underneath."""
    layer = shard.layers[k]
    depth = len(shard.layers)
    t0 = time.perf_counter()
    zs: list[Csr] = []
    x = kernels.empty_csr(images, np.dtype(dtype))
    if layer.sources:
        zs = [kernels.partial_product(*y, *part.w_local, part.width) for part in layer.parts]
        t1 = time.perf_counter()
        got = {src: link.recv(src, k + 1) for src in layer.sources}
        t2 = time.perf_counter()
        x = assemble(layer, got, images, dtype)
        counters.comm += t2 - t1
        counters.compute += (t1 - t0) + (time.perf_counter() - t2)
    empty = kernels.empty_csr(images, np.dtype(dtype))
    outs = []
    sent_next = k + 1 == depth
    for i, part in enumerate(layer.parts):
        t3 = time.perf_counter()
        if layer.sources:
            out = kernels.finish_layer(*zs[i], *x, *part.w_remote, part.width, bias, ymax)
        else:
            out = kernels.finish_layer(*empty, *y, *part.w_local, part.width, bias, ymax)
        counters.compute += time.perf_counter() - t3
        outs.append(out)
        if i == 0 and layer.n_boundary and not sent_next:
            send_layer(shard, k + 1, out, link, counters)  # boundary first, interior meanwhile
            sent_next = True
    t4 = time.perf_counter()
    y = outs[0] if len(outs) == 1 else kernels.hstack(*outs[0], *outs[1], layer.parts[0].width)
    counters.compute += time.perf_counter() - t4
    if not sent_next:
        send_layer(shard, k + 1, y, link, counters)
    return y


# -- rank mode (under mpirun) ---------------------------------------------------------------------


class MpiLink:
    """:class:`Link` over MPI: ``Isend`` (buffers kept until ``wait``), ``Probe`` then ``Recv``."""

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI

        self._mpi = MPI
        self.comm = comm
        self.pending: list[tuple[Any, np.ndarray]] = []

    def send(self, dst: int, tag: int, buf: np.ndarray) -> None:
        request = self.comm.Isend([buf, self._mpi.BYTE], dest=dst, tag=tag)
        self.pending.append((request, buf))

    def recv(self, src: int, tag: int) -> np.ndarray:
        status = self._mpi.Status()
        self.comm.Probe(source=src, tag=tag, status=status)
        buf = np.empty(status.Get_count(self._mpi.BYTE), np.uint8)
        self.comm.Recv([buf, self._mpi.BYTE], source=src, tag=tag)
        return buf

    def wait(self) -> None:
        self._mpi.Request.Waitall([r for r, _ in self.pending])
        self.pending.clear()


def _one_run(
    shard: Shard, meta: dict[str, Any], inputs: list[list[np.ndarray]], link: MpiLink
) -> tuple[float, Counters, list[np.ndarray]]:
    """One timed inference on this rank; rank 0 returns every rank's results, others their own."""
    comm = link.comm
    me, ranks = comm.Get_rank(), comm.Get_size()
    images, depth, dtype = int(meta["images"]), int(meta["depth"]), str(meta["dtype"])
    counters = Counters()
    comm.Barrier()
    t0 = time.perf_counter()
    if me == 0:
        for p in range(1, ranks):
            buf = pack(inputs[p])
            link.send(p, TAG_INPUT, buf)
            counters.other_bytes += len(buf)
        mine = inputs[0]
    else:
        types = [np.dtype(np.uint32), np.dtype(np.uint32), np.dtype(dtype)]
        mine = unpack(link.recv(0, TAG_INPUT), types)
    y: Csr = kernels.coo_to_csr(images, *mine)
    send_layer(shard, 0, y, link, counters)
    for k in range(depth):
        y = run_layer(
            shard, k, y, link, counters, images, float(meta["bias"]), float(meta["ymax"]), dtype
        )
    result = result_arrays(y)
    if me == 0:
        alive, sums = [result[0]], [result[1]]
        for p in range(1, ranks):
            got = link.recv(p, depth + 1)
            a, s = unpack(got, [np.dtype(np.uint32), np.dtype(np.float64)])
            alive.append(a)
            sums.append(s)
        result = [np.concatenate(alive), np.concatenate(sums)]
    else:
        buf = pack(result)
        link.send(0, depth + 1, buf)
        counters.other_bytes += len(buf)
    link.wait()
    return time.perf_counter() - t0, counters, result


def rank_main(folder: Path, repeat: int) -> int:
    """Run ``repeat`` inferences on this rank; rank 0 writes result.json."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    me, ranks = comm.Get_rank(), comm.Get_size()
    meta = json.loads((folder / "meta.json").read_text())
    if ranks != int(meta["ranks"]):
        raise SystemExit(f"the shards are cut for {meta['ranks']} ranks, mpirun started {ranks}")
    shard = shard_from_bytes((folder / f"shard{me}.npz").read_bytes(), me, ranks)
    kernels.warm_up(meta["dtype"])
    inputs: list[list[np.ndarray]] = []
    if me == 0:
        with np.load(folder / "images.npz") as z:
            matrix = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
            inputs = split_inputs(matrix, z["owners0"], ranks, meta["dtype"])
    link = MpiLink(comm)
    runs = []
    for _ in range(repeat):
        seconds, counters, result = _one_run(shard, meta, inputs, link)
        mine = np.array(
            [
                counters.act_bytes,
                counters.act_messages,
                counters.other_bytes,
                counters.compute,
                counters.comm,
                seconds,
            ],
            np.float64,
        )
        every = np.empty((ranks, len(mine)), np.float64) if me == 0 else None
        comm.Gather(mine, every, root=0)
        if me == 0:
            assert every is not None
            alive = result[0].astype(np.int64)
            sums = np.zeros(int(meta["images"]))
            np.add.at(sums, alive, result[1])
            categories = np.unique(alive) + 1
            runs.append(
                {
                    "seconds": seconds,
                    "categories": categories.tolist(),
                    "row_sums": sums[categories - 1].tolist(),
                    "activation_bytes": int(every[:, 0].sum()),
                    "activation_messages": int(every[:, 1].sum()),
                    "bytes": int(every[:, 0].sum() + every[:, 2].sum()),
                    "compute": every[:, 3].tolist(),
                    "comm": every[:, 4].tolist(),
                }
            )
    if me == 0:
        library = MPI.Get_library_version().splitlines()[0].strip()
        out = {"ranks": ranks, "library": library, "runs": runs}
        (folder / "result.json").write_text(json.dumps(out))
    return 0


# -- driver --------------------------------------------------------------------------------------


def mpi_missing() -> str:
    """Why MPI cannot run here, or "" (checked before minutes of loading and planning)."""
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed: pip install -e '.[bench]'"
    if shutil.which("mpirun") is None:
        return "no mpirun: apt-get install -y openmpi-bin libopenmpi-dev"
    return ""


def mpirun_command(ranks: int, folder: Path, repeat: int) -> list[str]:
    """mpirun of this script in rank mode; as root Open MPI refuses to start without the flag."""
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise SystemExit(mpi_missing())
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    script = str(Path(__file__).resolve())
    rank = ["--rank-dir", str(folder), "--repeat", str(repeat)]
    return [mpirun, *root, "--oversubscribe", "-n", str(ranks), sys.executable, script, *rank]


def write_cut(folder: Path, network: Network, images: sp.csr_matrix, plan: Plan) -> int:
    """What the ranks read: one fsd shard each, the images and input owners, the run's constants.
    Returns the shards' total bytes."""
    shards = build_shards(network, plan, np.dtype(DTYPE))
    for shard in shards:
        (folder / f"shard{shard.worker}.npz").write_bytes(shard_to_bytes(shard))
    m = sp.csr_matrix(images).astype(np.float32)
    np.savez(
        folder / "images.npz",
        data=m.data,
        indices=m.indices,
        indptr=m.indptr,
        shape=np.array(m.shape),
        owners0=plan.owners[0],
    )
    meta = {
        "ranks": plan.workers,
        "images": int(m.shape[0]),
        "depth": network.depth,
        "bias": network.bias,
        "ymax": network.ymax,
        "dtype": DTYPE,
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return sum(s.nbytes for s in shards)


@contextlib.contextmanager
def mpi_cut(
    network: Network, images: sp.csr_matrix, plan: Plan
) -> Iterator[Callable[[int], list[dict[str, Any]]]]:
    """The plan's shards written once; yields ``launch(repeat)``: one mpirun -n P of that many
    timed runs, returning each run's figures."""
    with tempfile.TemporaryDirectory(prefix="fsd-mpi-") as tmp:
        folder = Path(tmp)
        write_cut(folder, network, images, plan)
        # the ranks import the same fsd as this driver (a worktree's src before the venv's)
        paths = [str(Path(fsd.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}

        def launch(repeat: int) -> list[dict[str, Any]]:
            (folder / "result.json").unlink(missing_ok=True)
            command = mpirun_command(plan.workers, folder, repeat)
            done = subprocess.run(command, env=env, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"mpirun -n {plan.workers} exited {done.returncode}")
            out = json.loads((folder / "result.json").read_text())
            runs: list[dict[str, Any]] = out["runs"]
            for r in runs:
                r["library"], r["ranks"] = out["library"], out["ranks"]
            return runs

        yield launch


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run, with every run's seconds and whether all gave the same categories."""
    best = min(runs, key=lambda r: r["seconds"])
    same = all(r["categories"] == best["categories"] for r in runs)
    return {**best, "all_seconds": [r["seconds"] for r in runs], "runs_agree": same}


def run_mpi(network: Network, images: sp.csr_matrix, plan: Plan, repeat: int) -> dict[str, Any]:
    """mpirun -n P over the plan's shards, ``repeat`` runs in one launch; the best of them."""
    with mpi_cut(network, images, plan) as launch:
        return best_of(launch(repeat))


def fsd_figures(network: Network, images: Images, config: RunConfig) -> dict[str, Any]:
    """One fsd run, every worker a partition as MPI's ranks are (:func:`fsd.run.run`: it plans
    and checks against the truth again, outside its seconds)."""
    result = fsd_run(Job(Local(network, images), config, partitions=config.workers))
    return {
        "seconds": result.seconds,
        "categories": result.categories.tolist(),
        "row_sums": result.row_sums.tolist(),
        "activation_bytes": result.activation_bytes,
        "activation_messages": result.messages - 2 * result.workers,
        "bytes": result.bytes_sent,
        "planned_volume": result.planned_volume,
        "compute": result.worker_compute.sum(axis=1).tolist(),
        "comm": result.worker_comm.sum(axis=1).tolist(),
    }


def compare(
    name: str, network: Network, images: Images, ranks: Sequence[int], repeat: int
) -> list[dict[str, Any]]:
    """For each P: MPI, then fsd on the local channel and on NATS (one embedded nats-server; with
    and without zstd, so the bytes compare like with like), all on the same plan, in ``repeat``
    rounds of one run each (so a machine whose load drifts treats every contender alike)."""
    truth = images.truth[network.depth].tolist()
    rows: list[dict[str, Any]] = []
    with serve(RunConfig(channel="nats", channel_config=ChannelConfig("nats"))) as nats_config:
        channels = {
            "fsd local": ChannelConfig("local"),
            "fsd nats": nats_config,
            "fsd nats, no zstd": dataclasses.replace(nats_config, compress=False),
        }
        for p in ranks:
            t = time.perf_counter()
            plan = make_plan(network, p, PARTITION)
            print(f"{name} P={p}: planned in {time.perf_counter() - t:.1f} s", flush=True)
            runs: dict[str, list[dict[str, Any]]] = {"mpi": [], **{k: [] for k in channels}}
            with mpi_cut(network, images.matrix, plan) as launch:
                for turn in range(repeat):
                    runs["mpi"] += launch(1)
                    for label, cc in channels.items():
                        config = RunConfig(
                            workers=p, channel=cc.kind, partition=PARTITION, channel_config=cc
                        )
                        runs[label].append(fsd_figures(network, images, config))
                    now = "  ".join(f"{k} {v[-1]['seconds']:.3f}" for k, v in runs.items())
                    print(f"  turn {turn + 1}: {now}", flush=True)
            mpi = best_of(runs["mpi"])
            for label, each in runs.items():
                rows.append(_row(name, p, label, best_of(each), mpi, truth, plan))
    return rows


def _row(
    name: str,
    p: int,
    label: str,
    r: dict[str, Any],
    mpi: dict[str, Any],
    truth: list[int],
    plan: Plan,
) -> dict[str, Any]:
    sums, ref = np.array(r["row_sums"]), np.array(mpi["row_sums"])
    row = {
        "net": name,
        "ranks": p,
        "run": label,
        "seconds": round(r["seconds"], 4),
        "all_seconds": [round(s, 4) for s in r["all_seconds"]],
        "runs_agree": r["runs_agree"],
        "activation_bytes": r["activation_bytes"],
        "activation_messages": r["activation_messages"],
        "bytes": r["bytes"],
        "exact": r["categories"] == truth and r["runs_agree"],
        "row_sums_vs_mpi": (
            float(np.abs(sums - ref).max() / max(1.0, np.abs(ref).max()))
            if len(sums) == len(ref)
            else None
        ),
        "planned_volume": r.get("planned_volume", plan.total_volume),
        "comm_share": round(sum(r["comm"]) / (sum(r["comm"]) + sum(r["compute"])), 3),
        "ratio": round(r["seconds"] / mpi["seconds"], 2),
    }
    if "library" in r:
        row["library"] = r["library"]
    print(
        f"  {label:<18} {row['seconds']:8.3f} s  {row['ratio']:5.2f}x mpi  "
        f"act bytes {row['activation_bytes']:>12,}  exact={row['exact']}  "
        f"planned volume {row['planned_volume']:,}",
        flush=True,
    )
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table for docs/benchmarks.md: best and median of the turns, each against MPI's."""
    lines = [
        "| net | P | run | best s | / MPI | median s | / MPI | activation bytes | messages "
        "| all bytes | comm share | exact |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    mpi = {(r["net"], r["ranks"]): r for r in rows if r["run"] == "mpi"}
    for r in rows:
        median = statistics.median(r["all_seconds"])
        mpi_median = statistics.median(mpi[r["net"], r["ranks"]]["all_seconds"])
        cells = [
            r["net"],
            str(r["ranks"]),
            r["run"],
            f"{r['seconds']:.3f}",
            f"{r['ratio']:.2f}x",
            f"{median:.3f}",
            f"{median / mpi_median:.2f}x",
            f"{r['activation_bytes']:,}",
            f"{r['activation_messages']:,}",
            f"{r['bytes']:,}",
            f"{r['comm_share']:.2f}",
            "yes" if r["exact"] else "NO",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "graphchallenge")
    parser.add_argument("--ranks", type=_ints, default=[2, 4], help="comma list of P")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (the best is kept)")
    parser.add_argument("--generate", type=int, default=0, help="also a generated net of N neurons")
    parser.add_argument("--only-generated", action="store_true", help="skip the challenge net")
    parser.add_argument("--generate-layers", type=int, default=120)
    parser.add_argument("--generate-images", type=int, default=1000)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "mpi_baseline.json"
    )
    parser.add_argument("--rank-dir", type=Path, help=argparse.SUPPRESS)  # set by the driver
    args = parser.parse_args(argv)
    if args.rank_dir is not None:
        return rank_main(args.rank_dir, args.repeat)
    missing = mpi_missing()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    nets: list[tuple[str, Callable[[], tuple[Network, Images]]]] = []
    if (args.data / "neuron1024").is_dir() and not args.only_generated:
        nets.append(
            (
                "1024x120",
                lambda: (load_network(args.data), load_images(args.data, 1024)),
            )
        )
    elif not args.only_generated:
        print(f"no challenge data at {args.data}: generated net only", flush=True)
    if args.generate:
        n, layers, count = args.generate, args.generate_layers, args.generate_images
        nets.append((f"{n}x{layers} generated", lambda: generate(n, layers, count)))
    if not nets:
        print("nothing to run: give --data or --generate", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    for name, load in nets:
        network, images = load()
        print(f"{name}: {network.edges:,} edges, {images.count} images", flush=True)
        rows += compare(name, network, images, args.ranks, args.repeat)
    table = markdown(rows)
    print()
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "table": table}, indent=2))
    return 0 if all(r["exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
