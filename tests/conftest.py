"""Fixtures: the real Graph Challenge data from ../shared (skipped, with the reason, if absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsd.model import Images, Network, load_images, load_network

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "graphchallenge"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "neuron1024").is_dir():
        pytest.skip(f"real Graph Challenge data not found at {SHARED} (../shared is absent)")
    return SHARED


@pytest.fixture(scope="session")
def shared_net(shared_dir: Path) -> Network:
    return load_network(shared_dir)


@pytest.fixture(scope="session")
def shared_images(shared_dir: Path) -> Images:
    return load_images(shared_dir, 1024)
