"""A transport that exists only in tests: proof that adding one is its module plus one registry
entry (tests/launch/test_registry.py). It moves frames as ``local`` does and counts, and bills,
its own operation."""

from __future__ import annotations

from collections.abc import Sequence

from fsd.channels.base import Slot
from fsd.channels.local import LocalChannel


class ToyChannel(LocalChannel):
    OPS = ("drop",)
    BILLING = {"drop": (("sqs_request", 2.0),)}  # two requests per frame, to tell it apart
    SERVER = "a toy"

    def _transmit(self, frames: Sequence[tuple[Slot, bytes]]) -> None:
        super()._transmit(frames)
        self.stats.count("drop", len(frames))
