"""One settings layer (issue 11, item 7): every component reads its environment through the
readers of :mod:`fsd.settings`, with one number grammar, one set of bounds checks and one message
style, and the defaults two components share are one constant, not two literals that drift.

No server is needed: every refusal here happens before any side effect.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fsd import channels, invoke, invoke_openfaas, settings, variables
from fsd.channels.nats import CLUSTER_URL as NATS_IN_CLUSTER
from fsd.errors import InputError
from fsd.functions.config import Limits, NotConfigured, platform
from fsd.k8s import desired
from fsd.k8s.config import OperatorConfig, refresh_seconds
from fsd.k8s.openfaas import GATEWAY_URL, OpenFaaSSettings, openfaas_settings
from fsd.k8s.openfaas_gateway import GATEWAY_TIMEOUT, GatewayClient
from fsd.launch.openfaas import GATEWAY_USER
from fsd.launch.openfaas import SECRETS_DIR as OPENFAAS_SECRETS
from fsd.task import WorkerTask
from paths import ROOT

STORE = {"FSD_S3_ENDPOINT": "http://s3.fsd:9000"}
SECRET = "s3cr3t-" + "v" * 40  # a value no message may repeat

#: What Python's float()/int() take and a setting must not: exponents, non-finite values, hex,
#: underscores, signs, spaces inside, other digits (Arabic-Indic), a trailing dot.
NOT_PLAIN = ["1e3", "1E2", "nan", "NaN", "inf", "-inf", "0x10", "1_000", "+5", "-5", "5 0", "5."]
NOT_PLAIN.append("\u0663")  # ARABIC-INDIC DIGIT THREE: float() reads it as 3


def number_readers() -> list[tuple[str, Callable[[dict[str, str]], object]]]:
    """Every number reader, bounded wide enough that only the grammar can refuse."""
    return [
        ("number", lambda env: settings.number(env, "FSD_X", 1.0, low=0, high=1e9)),
        ("integer", lambda env: settings.integer(env, "FSD_X", 1, low=0, high=10**9)),
        ("seconds", lambda env: settings.seconds(env, "FSD_X", 1.0, high=1e9, zero=True)),
    ]


@pytest.mark.parametrize("raw", NOT_PLAIN)
@pytest.mark.parametrize(("kind", "read"), number_readers())
def test_numbers_are_plain_decimals(kind: str, read: Callable[..., object], raw: str) -> None:
    with pytest.raises(InputError, match=r"^FSD_X must be a (whole )?number in ") as refused:
        read({"FSD_X": raw})
    assert repr(raw) in str(refused.value)  # not a secret: shown, so the mistake can be found


@pytest.mark.parametrize(
    ("raw", "value"), [("7", 7.0), (" 7 ", 7.0), ("0.25", 0.25), ("007", 7.0), ("", 1.0)]
)
def test_plain_decimals_and_blank_for_the_default(raw: str, value: float) -> None:
    assert settings.number({"FSD_X": raw}, "FSD_X", 1.0, low=0, high=10) == value
    assert settings.number({}, "FSD_X", 1.0, low=0, high=10) == 1.0


def test_bounds_are_inclusive_unless_open() -> None:
    env = {"A": "0", "B": "10", "C": "10.5", "D": "2.5"}
    assert settings.number(env, "A", 1, low=0, high=10) == 0
    assert settings.number(env, "B", 1, low=0, high=10) == 10
    refusals: list[tuple[str, Callable[[], object]]] = [
        ("C", lambda: settings.number(env, "C", 1, low=0, high=10)),
        ("A", lambda: settings.seconds(env, "A", 1.0, high=10)),  # (0, high]: 0 is no duration
        ("D", lambda: settings.integer(env, "D", 1, low=0, high=10)),
        ("B", lambda: settings.integer(env, "B", 1, low=0, high=9)),
    ]
    for name, read in refusals:
        with pytest.raises(InputError, match=f"^{name} must be"):
            read()
    assert settings.seconds(env, "A", 1.0, high=10, zero=True) == 0.0
    assert settings.integer(env, "B", 1, low=0, high=10) == 10
    assert isinstance(settings.integer(env, "B", 1, low=0, high=10), int)


def test_negatives_only_where_the_bounds_allow_them() -> None:
    assert settings.number({"X": "-2.5"}, "X", 0, low=-5, high=5) == -2.5
    with pytest.raises(InputError, match=r"^X must be"):
        settings.number({"X": "--2"}, "X", 0, low=-5, high=5)


def test_each_component_refuses_with_its_own_error_class() -> None:
    """The same bad value, the same message; a function's is NotConfigured (HTTP 503), the
    operator's InputError (it refuses to start)."""
    with pytest.raises(NotConfigured, match=r"^FSD_FANOUT must be a whole number in 0..1024"):
        Limits.from_env({"FSD_FANOUT": "1e2"})
    with pytest.raises(InputError, match=r"^FSD_FANOUT must be a whole number in 1..1024"):
        OperatorConfig.from_env({**STORE, "FSD_FANOUT": "1e2"})
    with pytest.raises(NotConfigured, match=r"^FSD_LAUNCHER must be one of openfaas, lambda"):
        platform({"FSD_LAUNCHER": "k8s"})


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("FSD_FANOUT", "1e2"),  # float() took these: the operator ran on them
        ("FSD_FANOUT", "1_0"),
        ("FSD_GATEWAY_TIMEOUT", "1e1"),
        ("FSD_MAX_INFLIGHT", "4.0"),
        ("FSD_OPERATOR_RETRY_SECONDS", "1_5"),
        ("FSD_OPERATOR_REFRESH_SECONDS", "1e1"),
        ("FSD_OPERATOR_MAX_SOURCE_MB", "1.5"),
    ],
)
def test_the_operator_takes_plain_decimals_only(name: str, raw: str) -> None:
    with pytest.raises(InputError, match=f"^{name} must be"):
        OperatorConfig.from_env({**STORE, name: raw})
    if name == "FSD_OPERATOR_REFRESH_SECONDS":  # also read before the config exists
        with pytest.raises(InputError, match=f"^{name} must be"):
            refresh_seconds({name: raw})


#: every secret a part declares: the runtime's and fsd invoke's clients' own
ALL_SECRETS = sorted(variables.SECRET_NAMES | {v.name for v in invoke.variables() if v.secret})


@pytest.mark.parametrize("name", ALL_SECRETS)
def test_a_secret_value_is_never_in_a_message(name: str) -> None:
    env = {name: SECRET}
    reads: list[Callable[[], object]] = [
        lambda: settings.number(env, name, 1, low=0, high=10),
        lambda: settings.integer(env, name, 1, low=0, high=10),
        lambda: settings.seconds(env, name, 1.0),
        lambda: settings.choice(env, name, "a", ("a", "b")),
        lambda: settings.flag(env, name),
    ]
    for read in reads:
        with pytest.raises(InputError) as refused:
            read()
        message = str(refused.value)
        assert message.startswith(f"{name} must be"), message
        assert SECRET not in message and SECRET[:8] not in message and "v" * 8 not in message


def test_the_run_key_is_a_secret_name() -> None:
    assert set(variables.SECRET_VARS.values()) <= variables.SECRET_NAMES
    # fsd invoke's, not a mounted file: its client declares it, and the CLI scrubs it
    assert "OPENFAAS_PASSWORD" in {v.name for v in invoke.variables() if v.secret}


def test_text_names_choice_and_flag() -> None:
    env = {"T": "  v  ", "B": "   ", "L": " a, ,b ,, c ", "M": " PRO ", "F": "Yes", "G": "off"}
    assert settings.text(env, "T", "d") == "v"
    assert settings.text(env, "B", "d") == "d"
    assert settings.text(env, "B", "d", keep_empty=True) == ""  # blank as "off"
    assert settings.text(env, "U", "d", keep_empty=True) == "d"
    assert settings.names(env, "L") == ("a", "b", "c")
    assert settings.names(env, "U") == ()
    assert settings.choice(env, "M", "ce", ("ce", "pro")) == "pro"
    assert settings.choice(env, "U", "ce", ("ce", "pro")) == "ce"
    assert settings.flag(env, "F") is True and settings.flag(env, "G") is False
    assert settings.flag(env, "U", True) is True
    with pytest.raises(InputError, match=r"^T must be true or false, got 'v'"):
        settings.flag(env, "T")


def _default(cls: Any, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def test_shared_defaults_are_one_value() -> None:
    """The defaults the CLI, the functions, the Lambda handlers and the operator share come from
    fsd.settings: a change there reaches every component, none keeps its own copy."""
    limits = Limits()
    assert OperatorConfig.fanout == limits.fanout == settings.FANOUT
    assert _default(WorkerTask, "layer_timeout") == limits.layer_timeout == settings.LAYER_TIMEOUT
    assert desired.DEFAULT_TIMEOUT == limits.timeout == settings.TIMEOUT
    # fsd invoke waits, for a request without timeout, as long as a coordinator may run one
    assert invoke.DEFAULT_WAIT_SECONDS == limits.max_timeout == settings.MAX_TIMEOUT
    user = GATEWAY_USER
    assert OpenFaaSSettings.gateway_user == invoke_openfaas.DEFAULT_USER == user
    assert invoke_openfaas.gateway(None, None, None, {}).user == user
    assert OpenFaaSSettings.gateway_timeout == GATEWAY_TIMEOUT
    assert OperatorConfig.from_env(STORE).transport_env["FSD_NATS_URL"] == NATS_IN_CLUSTER
    gateway = OpenFaaSSettings.function_gateway_url
    assert OpenFaaSSettings.gateway_url == gateway == GATEWAY_URL
    assert OperatorConfig.secrets_dir == variables.SECRETS_DIR == OPENFAAS_SECRETS
    assert OperatorConfig.max_inflight == settings.MAX_INFLIGHT


def _defaults_of(function: Callable[..., object]) -> dict[str, object]:
    import inspect

    return {
        k: p.default
        for k, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_gateway_client_defaults_are_the_operators() -> None:
    defaults = _defaults_of(GatewayClient.__init__)
    assert defaults["user"] == OpenFaaSSettings.gateway_user
    assert defaults["timeout"] == OpenFaaSSettings.gateway_timeout


def test_blank_means_the_default_everywhere(tmp_path: Path) -> None:
    """A variable set to blanks (a Helm value left empty, ``FOO=`` in a stack file) takes the
    default in the operator as in the functions, instead of becoming an empty user or URL."""
    blank = {
        name: "  "
        for name in (
            "FSD_OPENFAAS_URL",
            "FSD_OPENFAAS_MODE",
            "FSD_GATEWAY_USER",
            "FSD_FUNCTION_GATEWAY_URL",
            "FSD_NATS_URL",
            "FSD_SECRETS_DIR",
            "FSD_FANOUT",
        )
    }
    config = OperatorConfig.from_env({**STORE, **blank})
    assert config == OperatorConfig.from_env(STORE)
    assert openfaas_settings(config).gateway_user == GATEWAY_USER
    assert config.secrets_dir == variables.SECRETS_DIR
    assert Limits.from_env({"FSD_FANOUT": " "}).fanout == config.fanout
    # the functions read their secret files from the same folder the operator keeps them in
    assert variables.secrets_dir({"FSD_SECRETS_DIR": " "}) == Path(config.secrets_dir)
    (tmp_path / "fsd-run-key").write_text("r" * 48 + "\n")
    assert variables.function_env({"FSD_SECRETS_DIR": str(tmp_path)})["FSD_RUN_KEY"] == "r" * 48


def test_the_operator_gives_the_functions_what_they_accept() -> None:
    """The fan-out the operator sets by default is one the worker function accepts."""
    config = OperatorConfig.from_env(STORE)
    assert Limits.from_env({"FSD_FANOUT": str(config.fanout)}).fanout == config.fanout


def test_the_deployment_files_use_the_shared_defaults() -> None:
    """stack.yml, the chart, the CRD and the SAM template write down the defaults the code falls
    back on: a deployment and an unset variable mean the same thing."""
    import yaml  # type: ignore[import-untyped]

    from fsd.k8s.spec import ModelSpec

    root = ROOT
    stack = yaml.safe_load((root / "stack.yml").read_text())["functions"]
    for function in stack.values():
        env = function["environment"]
        assert env["FSD_NATS_URL"] == NATS_IN_CLUSTER
        assert env["FSD_S3_BUCKET"] == settings.BUCKET
        assert int(env["FSD_FANOUT"]) == settings.FANOUT
        assert float(env.get("FSD_TIMEOUT", settings.TIMEOUT)) == settings.TIMEOUT
    assert float(stack["coordinator"]["environment"]["FSD_LAYER_TIMEOUT"]) == settings.LAYER_TIMEOUT
    values = yaml.safe_load((root / "charts" / "fsd" / "values.yaml").read_text())
    assert values["operator"]["openfaas"]["gatewayUser"] == GATEWAY_USER
    assert values["s3"]["bucket"] == settings.BUCKET
    assert values["s3"]["region"] == settings.REGION
    crd = yaml.safe_load(
        (root / "charts" / "fsd" / "crds" / "inferencemodels.fsd.dev.yaml").read_text()
    )
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["channel"]["default"] == ModelSpec.channel == channels.DEPLOYED
    template = (root / "deploy" / "aws" / "template.yaml").read_text()
    assert f'FSD_TIMEOUT: "{settings.TIMEOUT:g}"' in template
    assert f"  Prefix:\n    Type: String\n    Default: {settings.PREFIX}\n" in template
    assert f"    MaxValue: {settings.MAX_WORKERS}\n" in template


def test_the_declared_defaults_are_the_ones_the_code_uses() -> None:
    """The declarations behind docs/configuration.md show the defaults the readers apply: the
    shared constants, so a change to one shows here rather than in a deployment."""
    from fsd import configdoc

    def shown(component: str) -> dict[str, str]:
        (part,) = [c for c in configdoc.components() if c.short == component]
        return {v.name: v.default for v in part.variables}

    functions = shown("functions")
    limits = Limits.from_env({})  # nothing in front: no watchdog lowers a timeout
    for name, value in [
        ("FSD_MAX_WORKERS", str(limits.max_workers)),
        ("FSD_MAX_IMAGES", str(limits.max_images)),
        ("FSD_TIMEOUT", f"{limits.timeout:g}"),
        ("FSD_MAX_TIMEOUT", f"{limits.max_timeout:g}"),
        ("FSD_LAYER_TIMEOUT", f"{limits.layer_timeout:g}"),
        ("FSD_FANOUT", str(limits.fanout)),
        ("FSD_SHARD_CACHE", str(limits.shard_cache)),
        ("FSD_LAUNCHER", platform({}).kind),
    ]:
        assert functions[name] == value, name
    operator = shown("operator")
    config = OperatorConfig.from_env(STORE)
    gateway = openfaas_settings(config)
    for name, value in [
        ("FSD_OPENFAAS_URL", gateway.gateway_url),
        ("FSD_GATEWAY_USER", gateway.gateway_user),
        ("FSD_GATEWAY_TIMEOUT", f"{gateway.gateway_timeout:g}"),
        ("FSD_FUNCTION_GATEWAY_URL", gateway.function_gateway_url),
        ("FSD_NATS_URL", config.transport_env["FSD_NATS_URL"]),
        ("FSD_CHANNELS", ",".join(config.channels)),
        ("FSD_FUNCTION_SECRETS", ",".join(config.secrets)),
        ("FSD_PROMETHEUS_URL", gateway.prometheus_url),
        ("FSD_FANOUT", str(config.fanout)),
        ("FSD_MAX_INFLIGHT", str(config.max_inflight)),
        ("FSD_OPERATOR_RETRY_SECONDS", f"{config.retry_seconds:g}"),
        ("FSD_OPERATOR_REFRESH_SECONDS", f"{config.refresh_seconds:g}"),
        ("FSD_OPERATOR_MAX_SOURCE_MB", str(config.max_source_bytes // 2**20)),
        ("FSD_PLATFORM", config.platform),
    ]:
        assert operator[name] == value, name
    assert shown("store")["FSD_S3_BUCKET"] == config.store.bucket
    assert shown("all")["FSD_SECRETS_DIR"] == config.secrets_dir


def test_mounted_s3_keys_stay_the_stores_own(tmp_path: Path) -> None:
    """The ``fsd-s3-*`` secret files set the store's keys only: never ``AWS_ACCESS_KEY_ID``,
    which boto3 would hand to SQS, SNS or Lambda (on the code before, a request for ``sqs``
    made a NATS + S3 function dial AWS with the store's keys)."""
    from fsd.channels import configured
    from fsd.channels.aws import AwsOptions
    from fsd.channels.base import options
    from fsd.channels.s3 import S3Options
    from fsd.channels.settings import channel_config
    from fsd.store import StoreConfig

    (tmp_path / "fsd-s3-access-key").write_text("STOREKEYID\n")
    (tmp_path / "fsd-s3-secret-key").write_text("store-secret-value\n")
    env = variables.function_env({"FSD_SECRETS_DIR": str(tmp_path), "HOME": str(tmp_path)})
    assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    store = StoreConfig.from_env(env)
    assert (store.access_key, store.secret_key) == ("STOREKEYID", "store-secret-value")
    s3 = options(channel_config("s3", env=env), S3Options)
    assert (s3.access_key, s3.secret_key) == ("STOREKEYID", "store-secret-value")
    for kind in ("sqs", "sns"):
        queues = channel_config(kind, env=env)
        own = options(queues, AwsOptions)
        assert (own.access_key, own.secret_key) == ("", "")
        assert not configured(queues)  # no AWS credentials: nothing to dial
    # the SDKs' own variables still work for the store where nothing else is set (fsd run)
    aws = StoreConfig.from_env({"AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "S"})
    assert (aws.access_key, aws.secret_key) == ("A", "S")


def test_every_declared_secret_is_hidden_by_the_readers() -> None:
    """The readers hide values by name (fsd.settings.looks_secret): every secret a transport,
    the store or a platform declares must be one they recognise."""
    assert {"FSD_RUN_KEY", "FSD_NATS_TOKEN", "FSD_GATEWAY_PASSWORD"} <= variables.SECRET_NAMES
    missed = sorted(n for n in ALL_SECRETS if not settings.looks_secret(n))
    assert missed == []


def test_a_transports_options_reach_the_cli_the_secrets_and_the_functions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One registry line: the transport's flag is a ``fsd run`` flag, its flag and variable
    configure it, its secret file is among the runtime's, and an invocation naming one of its
    options is refused, with nothing else changed."""
    from fsd import channels, cli
    from fsd.channels.base import options
    from fsd.channels.settings import channel_config
    from toy_options_transport import ToyOptions

    monkeypatch.setitem(channels.TRANSPORTS, "toy", "toy_options_transport:OptionedChannel")  # type: ignore[index]
    assert "--toy-url" in [v.flag for v in channels.flags()]
    assert {"password", "toy_queue"} <= set(channels.own_settings())
    args = cli._parser().parse_args(["run", "--toy-url", "toy://flag"])
    config = channel_config("toy", env={"FSD_TOY_PASSWORD": "p" * 8}, flags=vars(args))
    assert config.address == "toy://flag" and options(config, ToyOptions).password == "p" * 8
    assert config.to_env() == {"FSD_TOY_URL": "toy://flag"}  # no secret in a deployment's env
    found = {v.name: v for v in variables.runtime_variables()}
    assert found["FSD_TOY_PASSWORD"].secret_file == "fsd-toy"
