"""Docs are tests: every shell command in README.md and docs/*.md that can run here runs here.

Each command line of every ``sh`` block is either run (``fsd`` commands, with the few
substitutions a reader would make: their own data folder, server and output folder) or named in
:data:`ELSEWHERE` with the reason it cannot run on this machine. A command of a new kind in the
docs fails :func:`test_every_documented_command_is_run_or_excused` until it is one or the other.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from fsd.embedded.nats import NatsServer
from fsd.embedded.s3 import S3Server
from paths import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FSD = str(Path(sys.executable).with_name("fsd"))

#: first word of a command -> why it cannot run on this machine (no cluster, no Docker engine,
#: no internet, no AWS account); the walk-throughs that use them are automated in tests/e2e.
ELSEWHERE = {
    "make": "the Makefile targets run fsd and pytest, which this suite is (CI runs `make test`)",
    "kubectl": "needs a Kubernetes cluster",
    "helm": "needs a Kubernetes cluster (the chart is linted and installed into kmock instead)",
    "kind": "needs a Docker engine",
    "docker": "needs a Docker engine",
    "faas-cli": "needs an OpenFaaS gateway",
    "arkade": "downloads binaries from the internet",
    "curl": "downloads from the internet, or calls a gateway or a function deployed on AWS",
    "aws": "needs an AWS account",
    "sam": "builds the Lambda image in Docker and deploys it to an AWS account (neither here); "
    "tests/aws/test_aws_template.py lints and checks the template instead",
    "awscurl": "signs a request to a coordinator deployed on AWS (no AWS account here)",
    "mc": "needs a MinIO client and server",
    "python": "runs a benchmark script: minutes of both cores, no assertion to make (`make bench`)",
    "export": "sets variables for the commands that follow it",
    "cat": "writes a values file for helm",
    "echo": "pipes a password to faas-cli",
    "EOF": "ends a here-document",
}
#: fsd subcommands that cannot run here either, with the reason
ELSEWHERE_FSD = {
    "invoke": "sends a request through an OpenFaaS gateway to a deployed coordinator (the "
    "deploy-kubernetes walkthrough test does that against its gateway emulator)",
}


def _commands(path: Path) -> list[str]:
    """The command lines of a file's ``sh`` blocks: continuations joined, comments dropped."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", path.read_text(), re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        heredoc = None
        pending = ""  # a command whose quotes span lines
        for line in text.splitlines():
            stripped = line.split("  #")[0].strip()
            if heredoc is not None:  # inside a here-document: data, not commands
                if stripped == heredoc:
                    heredoc = None
                continue
            if not pending and (not stripped or stripped.startswith("#")):
                continue
            pending = f"{pending}\n{stripped}" if pending else stripped
            try:
                shlex.split(pending)
            except ValueError:  # an open quote: the command goes on
                continue
            match = re.search(r"<<-?'?(\w+)'?", pending)
            if match:
                heredoc = match.group(1)
            found.append(pending)
            pending = ""
    return found


def _program(command: str) -> str:
    """The program a command line runs, past ``VAR=value`` prefixes."""
    for word in command.split():
        if not re.fullmatch(r"[A-Z_]+=\S*", word):
            return Path(word).name
    return ""


def _fsd_elsewhere(command: str) -> bool:
    """An fsd command whose subcommand is excused in ELSEWHERE_FSD."""
    words = [w for w in command.split() if not re.fullmatch(r"[A-Z_]+=\S*", w)]
    return len(words) > 1 and words[1] in ELSEWHERE_FSD


ALL = [(path.relative_to(ROOT), c) for path in DOCS for c in _commands(path)]


def _runnable() -> list[tuple[str, str]]:
    """The fsd commands to run, each distinct invocation once with the docs that show it: the
    same arguments behind ``fsd`` or ``.venv/bin/fsd`` run the same (it is run as FSD)."""
    docs: dict[str, list[str]] = {}
    first: dict[str, str] = {}
    for path, command in ALL:
        if _program(command) != "fsd" or _fsd_elsewhere(command):
            continue
        key = re.sub(r"(^|\s)\S*fsd(?=\s|$)", r"\1fsd", command, count=1)
        docs.setdefault(key, []).append(str(path))
        first.setdefault(key, command)
    return [(", ".join(dict.fromkeys(docs[key])), first[key]) for key in docs]


RUNNABLE = _runnable()


def test_every_documented_command_is_run_or_excused() -> None:
    unknown = [(str(p), c) for p, c in ALL if _program(c) != "fsd" and _program(c) not in ELSEWHERE]
    assert not unknown, (
        f"run these in tests/docs/test_docs.py or say in ELSEWHERE why not: {unknown}"
    )
    assert len(RUNNABLE) >= 8  # the parser still finds the README's fsd commands


@pytest.fixture(scope="module")
def places(
    shared_dir: Path,
    nats_server: NatsServer,
    s3_server: S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """What a reader puts in for the docs' placeholders: their data, servers and folders."""
    return {
        "../shared/graphchallenge": str(shared_dir),
        "DIR": str(shared_dir),
        "/tmp/net4096": str(tmp_path_factory.mktemp("docs") / "net4096"),
        "nats://nats:4222": nats_server.url,
        "http://127.0.0.1:9000": s3_server.endpoint,
    }


def _environment(servers_env: Mapping[str, str]) -> dict[str, str]:
    """The test's environment without its own FSD_/AWS_ settings, plus the session's servers
    but not FSD_NATS_URL: the docs name the NATS server on the command line (``--nats-url``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSD_", "AWS_"))}
    servers = {k: v for k, v in servers_env.items() if k != "FSD_NATS_URL"}
    return {**env, **servers, "FSD_S3_BUCKET": "fsd-docs"}  # models pushed here stay apart


@pytest.mark.parametrize(("doc", "command"), RUNNABLE, ids=[c for _, c in RUNNABLE])
def test_documented_fsd_command_runs(
    doc: str,
    command: str,
    places: dict[str, str],
    servers_env: Mapping[str, str],
) -> None:
    words = shlex.split(command)
    env = _environment(servers_env)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = places.get(value, value)
    args = [places.get(w, w) for w in words[1:]]
    done = subprocess.run(
        [FSD, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"{doc}: {command}\n{done.stderr[-3000:]}"
    if "--json" in args:
        assert '"correct": true' in done.stdout.splitlines()[-1]


# -- the function images: OpenFaaS CE deploys only images it can pull anonymously ------------------
#
# faas-netes (CE) pkg/handlers/deploy.go calls isAnonymous(request.Image) after fetching the
# function's secrets, update.go too; isAnonymous (pkg/handlers/validate.go) is
# go-containerregistry's remote.Head with authn.Anonymous, else 400 "the Community Edition license
# agreement only allows public images". An image loaded into kind is refused: the function images
# must be pushed to a registry that serves them anonymously before the chart (or faas-cli deploy)
# names them; only the operator's image, which the chart's Deployment runs, may be loaded into kind.

KIND_SH = ROOT / "tests" / "e2e" / "kind.sh"
K8S_DOC = ROOT / "docs" / "deploy-kubernetes.md"
OPENFAAS_DOC = ROOT / "docs" / "deploy-openfaas.md"
PUSH = ("faas-cli push", "faas-cli publish", "faas-cli up")
IMAGE_VALUES = (
    "functions.coordinator.image=$REGISTRY/fsd-coordinator:latest",
    "functions.worker.image=$REGISTRY/fsd-worker:latest",
)


def _script_commands(path: Path) -> list[str]:
    """A shell script's command lines: continuations joined, comments dropped, quotes removed and
    its own ``NAME="..."`` variables expanded (so ``$COORDINATOR_IMAGE`` reads as its value)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    lines = [line.split("  #")[0].strip() for line in text.splitlines()]
    commands = [line.replace('"', "") for line in lines if line and not line.startswith("#")]
    variables: dict[str, str] = {}
    for command in commands:
        if match := re.fullmatch(r"([A-Z_]+)=(\S+)", command):
            variables[match[1]] = match[2]
    expanded = []
    for command in commands:
        line = command
        for name, value in variables.items():
            line = re.sub(rf"\$\{{?{name}\b\}}?", value.replace("\\", "\\\\"), line)
        expanded.append(line.replace("${REGISTRY}", "$REGISTRY"))
    return expanded


def _image_flow(commands: list[str]) -> tuple[int, int]:
    """Where REGISTRY is set and the function images pushed; asserts what both texts must do."""
    for command in (c for c in commands if c.startswith("kind load docker-image")):
        words = command.split()[3:]
        images = [
            w for i, w in enumerate(words) if not w.startswith("-") and words[i - 1] != "--name"
        ]
        assert images and all("fsd-operator" in i for i in images), command
        assert not re.search(r"fsd-(coordinator|worker)", command), command
    pushes = [i for i, c in enumerate(commands) if c.startswith(PUSH)]
    assert pushes, "the function images are never pushed"
    registry = [i for i, c in enumerate(commands) if c.startswith("export REGISTRY=")]
    assert registry and registry[0] < pushes[0], "REGISTRY is not set before the push"
    value = commands[registry[0]].split("=", 1)[1]
    assert not value.startswith("fsd.local"), value  # a name no registry answers to
    return registry[0], pushes[0]


@pytest.mark.parametrize("path", [K8S_DOC, KIND_SH], ids=["deploy-kubernetes.md", "kind.sh"])
def test_function_images_are_pushed_before_the_chart_names_them(path: Path) -> None:
    commands = _script_commands(path) if path.suffix == ".sh" else _commands(path)
    _, push = _image_flow(commands)
    installs = [i for i, c in enumerate(commands) if c.startswith("helm install fsd charts/fsd")]
    assert installs, "no helm install"
    for index in installs:
        assert index > push, f"{commands[index]} comes before the push"
        for value in IMAGE_VALUES:
            assert f"--set {value}" in commands[index], (commands[index], value)
    operator_loaded = [c for c in commands if c.startswith("kind load docker-image")]
    assert operator_loaded, "the operator's image is no longer loaded into kind"


def test_kind_script_requires_a_registry() -> None:
    """No default registry: the caller names one (pushing fsd's code is their choice)."""
    text = KIND_SH.read_text()
    assert re.search(r"^export REGISTRY=\"\$\{REGISTRY:\?", text, re.M)
    assert "REGISTRY=ttl.sh/fsd-$(openssl rand -hex 6) tests/e2e/kind.sh" in text  # the header
    done = subprocess.run(
        ["bash", str(KIND_SH)],
        env={k: v for k, v in os.environ.items() if k != "REGISTRY"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "set REGISTRY to a registry" in done.stderr, done.stderr
    done = subprocess.run(
        ["bash", str(KIND_SH)],
        env={**os.environ, "REGISTRY": "fsd.local"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "anonymously" in done.stderr, done.stderr


def test_openfaas_doc_pushes_and_never_loads_function_images() -> None:
    _, push = _image_flow(_commands(OPENFAAS_DOC))
    deploys = [i for i, c in enumerate(_commands(OPENFAAS_DOC)) if c.startswith("faas-cli deploy")]
    assert all(i > push for i in deploys), "faas-cli deploy before the images are pushed"


@pytest.mark.parametrize(
    "path",
    [K8S_DOC, OPENFAAS_DOC, KIND_SH],
    ids=["deploy-kubernetes.md", "deploy-openfaas.md", "kind.sh"],
)
def test_the_ce_image_rule_is_explained(path: Path) -> None:
    """The rule, its upstream source, the ephemeral registry's expiry and the paid alternative."""
    text = " ".join(path.read_text().split())
    for needed in ("isAnonymous", "validate.go", "deploy.go", "only allows public images"):
        assert needed in text, needed
    assert "private-registries" in text  # OpenFaaS Standard/Enterprise: imagePullSecrets
    if "ttl.sh" in text:
        assert "expire" in text
