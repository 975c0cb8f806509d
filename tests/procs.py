"""Real server binaries (Prometheus, Pushgateway) run by tests: start, wait until ready, stop."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

START_TIMEOUT = 15.0


def _get(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
        body: bytes = response.read()
    return body.decode()


def binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        f"{names[0]} not on PATH; `make install` installs it "
        f"(apt-get install prometheus prometheus-pushgateway)"
    )


class Process:
    """A real server binary in the background, its log in a file, stopped at teardown."""

    def __init__(self, command: list[str], log: Path, ready_url: str) -> None:
        self.log = log
        self.handle = log.open("wb")
        self.proc = subprocess.Popen(command, stdout=self.handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"{command[0]} exited {self.proc.returncode}: {self._tail()}")
            try:
                _get(ready_url, timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        pytest.fail(f"{command[0]} not ready in {START_TIMEOUT} s: {self._tail()}")

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.handle.close()


def start_prometheus(folder: Path, targets: list[str]) -> tuple[Process, int]:
    """A real Prometheus scraping ``targets`` (host:port) every second; stop() it when done."""
    from fsd.services import pick_ports

    prometheus = binary("prometheus")
    (port,) = pick_ports(1)
    config = folder / "prometheus.yml"
    listed = ", ".join(f"'{t}'" for t in targets)
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: fsd\n    static_configs: [{{targets: [{listed}]}}]\n"
    )
    process = Process(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        folder / "prometheus.log",
        f"http://127.0.0.1:{port}/-/ready",
    )
    return process, port
