"""A Lambda function's own configuration: its environment, secrets from Secrets Manager.

Lambda mounts no secret files, so the deployment's secrets live in one Secrets Manager secret
whose ARN is ``FSD_SECRETS_ARN``: a JSON object keyed by the same names as the OpenFaaS secret
files (:data:`fsd.variables.SECRET_VARS`: ``fsd-run-key``, ``fsd-nats-token``, ...). It is read
once per warm instance. Nothing comes from the event; nothing is written (Lambda has only /tmp,
and no /dev/shm). Every variable: docs/configuration.md (from :data:`VARIABLES` and the functions').
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from fsd import settings
from fsd.errors import FsdError
from fsd.settings import Variable
from fsd.variables import SECRET_VARS, function_env

VARIABLES = (
    Variable(
        "FSD_SECRETS_ARN",
        "the Secrets Manager secret holding the deployment's secrets: a JSON object keyed by "
        "the secret files' names (`fsd-run-key`, ...); they win over variables",
    ),
)
"""What the Lambda handlers read besides the functions' variables (they set ``FSD_LAUNCHER``
to ``lambda`` and ``exec_timeout`` from the time Lambda leaves an invocation)."""
TITLE = "Lambda handlers"
ABOUT = (
    "Read by `fsd.aws.settings` (besides the functions' variables): Lambda mounts no secret files."
)
SHORT = "Lambda"
"""docs/configuration.md's table of :data:`VARIABLES` (:data:`fsd.configdoc.ENTRY_POINTS`)."""


class SecretsUnavailable(FsdError):
    """The secret named by ``FSD_SECRETS_ARN`` cannot be read or is not a JSON object."""


@functools.cache
def _secrets(arn: str) -> dict[str, str]:
    import boto3  # noqa: PLC0415 (only when a secret is configured)
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    try:
        value = boto3.client("secretsmanager").get_secret_value(SecretId=arn)
        data = json.loads(value.get("SecretString") or "")
    except (BotoCoreError, ClientError, ValueError) as exc:
        raise SecretsUnavailable(f"cannot read FSD_SECRETS_ARN: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise SecretsUnavailable("FSD_SECRETS_ARN: the secret is not a JSON object")
    return {SECRET_VARS[k]: str(v).strip() for k, v in data.items() if k in SECRET_VARS}


def lambda_env(context: Any, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """This function's settings: the environment, the secrets (they win), ``FSD_LAUNCHER``
    ``lambda``, and ``exec_timeout`` from the time Lambda leaves this invocation, so that
    :class:`fsd.functions.config.Limits` refuses a timeout the function could not keep."""
    env = function_env(os.environ if environ is None else environ)
    arn = settings.text(env, "FSD_SECRETS_ARN")
    if arn:
        env.update(_secrets(arn))
    env["FSD_LAUNCHER"] = "lambda"
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if callable(remaining):
        millis = remaining()
        if isinstance(millis, int | float) and math.isfinite(millis) and millis > 0:
            env["exec_timeout"] = str(int(millis // 1000))
    return env
