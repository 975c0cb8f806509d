"""The serverless stack on one machine: both functions served by the template's own index.py.

``make functions-up`` (``python -m fsd.localstack``) starts the embedded servers of the model store
and of the transports it serves (:func:`stack_channels`; unless the environment names
real ones, as each backend reads it), pushes a model, and serves
W worker function instances and one coordinator instance with ``template/fsd-python3-http/index.py``
(what the container runs behind of-watchdog). The coordinator invokes workers over HTTP exactly as
it invokes them through an OpenFaaS gateway, so ``curl --data @request.json`` runs a real
distributed inference. Tests use :class:`LocalStack` the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from fsd import lifetime, settings, store
from fsd.channels import REMOTE_CHANNELS, configured, embedded, transport
from fsd.channels.base import ChannelConfig
from fsd.channels.settings import channel_config
from fsd.errors import InputError, ServiceError
from fsd.model import Images, Network
from fsd.services import NotInstalled, pick_ports, require
from fsd.store import ModelStore, StoreConfig

log = logging.getLogger(__name__)


def stack_channels() -> tuple[str, ...]:
    """What the stack serves unless ``FSD_CHANNELS`` says: the transports that declare it
    (:attr:`fsd.channels.Channel.STACK`)."""
    return tuple(k for k in REMOTE_CHANNELS if transport(k).STACK)


ROOT = Path(__file__).resolve().parents[2]
INDEX = ROOT / "template" / "fsd-python3-http" / "index.py"


class FunctionServer:
    """One function instance: index.py serving a handler folder on a loopback port."""

    def __init__(self, name: str, handler: Path, env: dict[str, str], port: int) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        self.log_path = Path(env["FSD_STACK_DIR"]) / f"{name}.log"
        cmd = [sys.executable, str(INDEX), "--handler", str(handler), "--port", str(port)]
        with open(self.log_path, "ab") as fh:
            self.proc = subprocess.Popen(
                cmd,
                env={**env, "FSD_BIND": "127.0.0.1"},
                stdout=fh,
                stderr=subprocess.STDOUT,
                preexec_fn=lifetime.preexec_die_with_parent(),  # noqa: PLW1509 (only prctl)
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited: see {self.log_path}")
            health = f"{self.url}_/health"
            with contextlib.suppress(OSError), opener.open(health, timeout=1) as resp:
                if resp.status == 200:
                    return
            time.sleep(0.05)
        raise ServiceError(f"{self.name} did not answer within {timeout:g} s: see {self.log_path}")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


class LocalStack:
    """Embedded channel servers + W worker instances + one coordinator instance."""

    def __init__(self, workers: int = 4, env: dict[str, str] | None = None) -> None:
        if not INDEX.is_file():
            raise ServiceError(f"the function template is missing: {INDEX}")
        missing = [m for m in ("flask", "waitress") if importlib.util.find_spec(m) is None]
        if missing:  # index.py's own stack, which the functions' image installs
            raise ServiceError(
                f"the function template needs {' and '.join(missing)}: pip install 'fsd[embedded]'"
            )
        self.workers = workers
        self.base_env = dict(os.environ if env is None else env)
        # stamped with its owner: a later stack removes it if we are killed before stop()
        self.dir = lifetime.make_workdir("fsd-stack-")
        self._servers = contextlib.ExitStack()  # the embedded servers started here
        self.worker_servers: list[FunctionServer] = []
        self.coordinator: FunctionServer | None = None
        self.env: dict[str, str] = {}

    def start(self) -> Self:
        env = {**self.base_env, "FSD_STACK_DIR": self.dir, "FSD_SECRETS_DIR": self.dir}
        # the functions run this checkout's fsd, whatever the interpreter's own path points at
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT / "src"), self.base_env.get("PYTHONPATH", "")) if p
        )
        # the deployment secret, mounted as OpenFaaS would
        if not settings.run_key(env).strip():
            key = Path(self.dir) / "fsd-run-key"
            key.touch(mode=0o600)
            key.write_text(secrets.token_hex(32))
        # the models the functions serve (FSD_MODELS): on one machine, every pushed one
        env.setdefault("FSD_MODELS", "*")
        # the model store first: a transport that reads the same variables then finds its server
        kept = StoreConfig.from_env(env)
        if not kept.endpoint:
            started = self._servers.enter_context(store.embedded(kept))
            _export(env, started.to_env(), started.secret_env())
        for kind in stack_channels():
            config = channel_config(kind, env=env)
            if not configured(config):
                reached: ChannelConfig = self._servers.enter_context(embedded(config))
                _export(env, reached.to_env(), reached.secret_env())
        # the transports this stack runs: a request may choose only among them
        env.setdefault("FSD_CHANNELS", ",".join(stack_channels()))
        ports = pick_ports(self.workers + 1)
        functions = ROOT / "functions"
        # workers know each other too: in a fan-out tree they invoke their children
        env["FSD_WORKER_URL"] = ",".join(f"http://127.0.0.1:{p}/" for p in ports[:-1])
        self.worker_servers = [
            FunctionServer(f"worker-{i}", functions / "worker", env, ports[i])
            for i in range(self.workers)
        ]
        self.coordinator = FunctionServer("coordinator", functions / "coordinator", env, ports[-1])
        for server in [*self.worker_servers, self.coordinator]:
            server.wait_ready()
        self.env = env
        return self

    @property
    def url(self) -> str:
        assert self.coordinator is not None
        return self.coordinator.url

    def store(self) -> ModelStore:
        return ModelStore(StoreConfig.from_env(self.env))

    def push(
        self, network: Network, name: str, workers: list[int], images: Images | None = None
    ) -> None:
        self.store().push(network, name, workers, ("min-comm",), images)

    def restart_worker(self, i: int) -> None:
        old = self.worker_servers[i]
        old.stop()
        handler = ROOT / "functions" / "worker"
        self.worker_servers[i] = FunctionServer(old.name, handler, self.env, old.port)
        self.worker_servers[i].wait_ready()

    def stop(self) -> None:
        for server in [*self.worker_servers, *([self.coordinator] if self.coordinator else [])]:
            server.stop()
        self._servers.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:  # __exit__ will not run: stop what did start
            self.stop()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _export(env: dict[str, str], plain: Mapping[str, str], secret: Mapping[str, str]) -> None:
    """Hand a started server to the functions: its address and keys replace what ``env`` said,
    a preference the user gave (a bucket) stays."""
    for name, value in plain.items():
        if name in env and name not in secret and settings.text(env, name):
            continue  # the user's own choice
        env[name] = value
    env.update(secret)


def servers_to_start(env: Mapping[str, str]) -> list[str]:
    """The embedded servers (``module:function``) a stack would start with ``env``: the
    transports' first, then the store's when no transport's server serves it too."""
    specs = [
        transport(kind).EMBEDDED
        for kind in stack_channels()
        if not configured(channel_config(kind, env=env))
    ]
    if not StoreConfig.from_env(env).endpoint:
        specs.append(StoreConfig.EMBEDDED)
    return list(dict.fromkeys(specs))


def main(argv: list[str] | None = None) -> int:
    """``make functions-up``: serve the stack until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="fsd-localstack", description=__doc__)
    parser.add_argument("--data", type=Path, help="Graph Challenge folder to push (else generated)")
    parser.add_argument("--name", default="gc1024")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:  # before generating or loading anything: the servers this stack would start
        for spec in servers_to_start(os.environ):
            server = getattr(importlib.import_module(spec.partition(":")[0]), "SERVER", None)
            if server is not None:
                require(server)
    except (NotInstalled, InputError) as exc:
        sys.stderr.write(f"fsd-localstack: {exc}\n")
        return 2
    from fsd.model import load_images, load_network  # noqa: PLC0415
    from fsd.model.generate import generate  # noqa: PLC0415

    if args.data is not None and (args.data / "neuron1024").is_dir():
        network = load_network(args.data)
        images = load_images(args.data, network.neurons)
    else:
        network, images = generate(1024, 120, 2000, 0)
    with LocalStack(args.workers) as stack:
        stack.push(network, args.name, [args.workers], images)
        request = {"model": args.name, "workers": args.workers, "images": {"stored": True}}
        path = Path(stack.dir) / "request.json"
        path.write_text(json.dumps(request))
        log.info("coordinator: %s   workers: %s", stack.url, stack.env["FSD_WORKER_URL"])
        log.info("try:  curl -s --data @%s %s", path, stack.url)
        log.info("Ctrl-C stops everything")
        stopped = False

        def stop(*_: object) -> None:
            nonlocal stopped
            stopped = True

        signal.signal(signal.SIGTERM, stop)
        with contextlib.suppress(KeyboardInterrupt):
            while not stopped:
                time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
