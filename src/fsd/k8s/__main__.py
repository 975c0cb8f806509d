"""``python -m fsd.k8s``: run the operator (standalone: one replica, no peering).

Watches every namespace unless ``--namespace`` is given; serves kopf's liveness probe on
``--liveness`` (default ``http://0.0.0.0:8080/healthz``). Settings come from the environment
(:mod:`fsd.k8s.config`); the Kubernetes API from the in-cluster config or the kubeconfig.
"""

from __future__ import annotations

import argparse
import logging

import kopf

from fsd.k8s.handlers import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fsd.k8s", description=__doc__)
    parser.add_argument("-n", "--namespace", action="append", default=[], help="watch only these")
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    kopf.run(
        registry=register(kopf.get_default_registry()),
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness or None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
