"""Cold against warm invocations of the functions, served locally by the template's index.py.

Starts the local stack (embedded NATS and S3, 4 worker instances, a coordinator), pushes the
shared net for 4 workers, and sends the same request several times: the first finds every worker
cold (it downloads its shard), the others warm (shards kept in memory).

    .venv/bin/python benchmarks/functions.py [--data ../shared/graphchallenge] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from fsd.localstack import LocalStack
from fsd.model import load_images, load_network

ROOT = Path(__file__).resolve().parents[1]


def _post(url: str, request: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    body = json.dumps(request).encode()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    t0 = time.perf_counter()
    with opener.open(urllib.request.Request(url, data=body), timeout=300) as resp:
        reply: dict[str, Any] = json.loads(resp.read())
    return time.perf_counter() - t0, reply


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "graphchallenge")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not (args.data / "neuron1024").is_dir():
        print(f"benchmark data not found at {args.data}", file=sys.stderr)
        return 2
    network = load_network(args.data)
    images = load_images(args.data, network.neurons)
    ok = True
    with LocalStack(workers=4) as stack:
        stack.push(network, "gc1024", [4], images)
        for channel in ("nats", "s3"):
            request = {
                "model": "gc1024",
                "workers": 4,
                "channel": channel,
                "images": {"stored": True},
            }
            for _ in range(args.repeat):
                wall, reply = _post(stack.url, request)
                cache = reply.get("shard_cache", {})
                ok &= bool(reply.get("correct"))
                state = "cold" if cache.get("miss") else "warm"
                print(
                    f"{channel:<5} {state}  request {wall:6.3f} s"
                    f"  inference {reply['seconds']:6.3f} s"
                    f"  shard load max {cache.get('load_seconds_max', 0):.3f} s"
                    f"  correct={reply.get('correct')}",
                    flush=True,
                )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
