"""Function configuration: environment variables plus OpenFaaS secrets mounted as files.

OpenFaaS mounts each secret named in stack.yml at ``/var/openfaas/secrets/<name>``; they map onto
the same variables the CLI reads, so one code path configures both (``FSD_SECRETS_DIR`` moves the
folder, for tests and the local stack).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SECRETS_DIR = "/var/openfaas/secrets"

EXEC_MARGIN = 5.0
"""Seconds a function keeps between its longest timeout (``FSD_MAX_TIMEOUT``) and of-watchdog's
``exec_timeout``: the time to give up and answer. One value for the functions, which refuse less
(:mod:`fsd.functions.config`), and the operator, which sets both (:mod:`fsd.k8s.desired`)."""

#: secret file name -> the variable it sets (a creds file is passed by path, not content)
SECRET_VARS = {
    "fsd-nats-token": "FSD_NATS_TOKEN",
    "fsd-nats-user": "FSD_NATS_USER",
    "fsd-nats-password": "FSD_NATS_PASSWORD",
    "fsd-s3-access-key": "AWS_ACCESS_KEY_ID",
    "fsd-s3-secret-key": "AWS_SECRET_ACCESS_KEY",
    "fsd-gateway-password": "FSD_GATEWAY_PASSWORD",
    "fsd-run-key": "FSD_RUN_KEY",
}
CREDS_FILE = "fsd-nats-credentials"


def function_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment with every mounted secret filled in (secrets win over variables)."""
    env = dict(os.environ if environ is None else environ)
    folder = Path(env.get("FSD_SECRETS_DIR", SECRETS_DIR))
    for name, var in SECRET_VARS.items():
        path = folder / name
        if path.is_file():
            env[var] = path.read_text().strip()
    if (folder / CREDS_FILE).is_file():
        env["FSD_NATS_CREDS"] = str(folder / CREDS_FILE)
    return env
