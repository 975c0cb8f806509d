"""What a run would cost at AWS list prices, so channels can be compared in dollars, not just bytes.

The backends declare their bills: each transport counts its own operations (``Channel.OPS``), says
how its cloud counterpart bills them (``Channel.BILLING``: operation -> billed items and how many
of each) and prices the items that are its own (``Channel.PRICES``); a platform that publishes list
prices declares how it bills a run's functions (``Launcher.BILLING`` over
:data:`fsd.launch.base.FUNCTION_USE`) and at what price (``Launcher.PRICES``). This module only
gathers those (item, price) pairs from the registries (:func:`declared_prices`,
:func:`function_billing`) and adds them up, so a new backend brings its own bill and nothing here
changes. A transport without a cloud counterpart bills nothing; the functions are priced on every
channel and platform as the first platform that bills functions. Free tiers, volume discounts and
data transfer inside the region are ignored: the estimate is for one run at the marginal list
price, which is what comparing channels needs.

Units: a "GB" is 2**30 bytes everywhere in this module (a function's MB/1024), a "64 KB chunk"
is 65536 bytes. Nothing is rounded internally; only :meth:`Cost.to_json` rounds for display.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from fsd import channels, launch
from fsd.channels.base import Billing, Rates
from fsd.errors import FsdError, InputError
from fsd.launch.base import FUNCTION_USE

GIB = 2**30  # a billed "GB" in this module
AS_OF = "2026-06"
"""When the backends' list prices (their ``PRICES``) were taken, shown with every estimate:
update it with them."""


class PriceError(FsdError):
    """The backends' declared bills disagree (an item priced twice, or billed and unpriced): a
    defect in a backend, found when the prices are first gathered."""


@dataclass(frozen=True)
class Prices:
    """Unit prices in USD per billed item (read-only), and when they were taken."""

    rates: Rates
    as_of: str = AS_OF

    def __post_init__(self) -> None:
        for item, price in self.rates.items():
            if isinstance(price, bool) or not isinstance(price, int | float):
                raise InputError(f"the price of {item!r} must be a number, got {price!r}")
            if not math.isfinite(price) or price < 0:
                raise InputError(f"the price of {item!r} must be finite and >= 0, got {price}")
        object.__setattr__(self, "rates", MappingProxyType(dict(self.rates)))

    def rate(self, item: str) -> float:
        """The price of one ``item``; :class:`InputError` for a name that is not priced."""
        if item not in self.rates:
            known = ", ".join(self.rates)
            raise InputError(f"unknown billed item {item!r}: expected one of {known}")
        return float(self.rates[item])

    def replace(self, **rates: float) -> Prices:
        """These prices with some items' changed (what-if estimates); only known items."""
        for item in rates:
            self.rate(item)
        return Prices({**self.rates, **rates}, self.as_of)


def declared_prices() -> Prices:
    """Every billed item's list price, as the backends of the registries declare them (each
    item by one backend); :class:`PriceError` if two price one item or an item billed has no
    price."""
    return _gathered(tuple(channels.TRANSPORTS.items()), tuple(launch.PLATFORMS.items()))


def function_billing() -> Billing:
    """How a run's functions are billed: as the first platform of the registry that declares a
    ``BILLING`` (empty: functions are free); :class:`PriceError` for one that bills something
    else than :data:`fsd.launch.base.FUNCTION_USE`."""
    for kind in launch.PLATFORMS:
        billing = launch.platform(kind).BILLING
        if billing:
            unknown = set(billing) - set(FUNCTION_USE)
            if unknown:
                raise PriceError(f"platform {kind} bills {sorted(unknown)}, not {FUNCTION_USE}")
            return billing
    return {}


@functools.cache
def _gathered(
    transports: tuple[tuple[str, str], ...], platforms: tuple[tuple[str, str], ...]
) -> Prices:
    """:func:`declared_prices` for these registry entries (once per registry: imports them)."""
    declared: list[tuple[str, Billing, Rates]] = []
    for kind, _ in transports:
        cls = channels.transport(kind)
        declared.append((f"transport {kind}", cls.BILLING, cls.PRICES))
    for kind, _ in platforms:
        platform = launch.platform(kind)
        declared.append((f"platform {kind}", platform.BILLING, platform.PRICES))
    rates: dict[str, float] = {}
    owner: dict[str, str] = {}
    for backend, _, own in declared:
        for item, price in own.items():
            if item in rates:
                raise PriceError(f"{item!r} is priced by both {owner[item]} and {backend}")
            rates[item], owner[item] = price, backend
    for backend, billing, _ in declared:
        for items in billing.values():
            for item, _weight in items:
                if item not in rates:
                    raise PriceError(f"{backend} bills {item!r}, which no backend prices")
    return Prices(rates)


@dataclass
class Cost:
    """An estimate: the total, what each billed item adds, and the request counts behind it."""

    total_usd: float
    breakdown: dict[str, float] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    as_of: str = AS_OF

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict; dollars rounded to 9 significant digits so sub-cent items survive."""
        return {
            "total_usd": _sig9(self.total_usd),
            "breakdown": {k: _sig9(v) for k, v in self.breakdown.items()},
            "requests": dict(self.requests),
            "prices": f"aws us-east-1 list prices, {self.as_of}",
        }


def _sig9(x: float) -> float:
    return float(f"{x:.9g}")


def billed_gb_seconds(seconds_per_function: Iterable[float], memory_mb: int) -> float:
    """GB-seconds a function platform bills: each duration rounded up to 1 ms, memory MB/1024
    GB."""
    if memory_mb <= 0:
        raise InputError(f"memory must be > 0 MB, got {memory_mb}")
    billed_ms = 0
    for s in seconds_per_function:
        if not math.isfinite(s) or s < 0:
            raise InputError(f"function duration must be a finite number >= 0 s, got {s}")
        # drop float noise first: 2.007 * 1000 == 2007.0000000000002 must bill 2007 ms, not 2008
        billed_ms += math.ceil(round(s * 1000, 6))
    return billed_ms / 1000 * (memory_mb / 1024)


def _units(billing: Billing, used: Mapping[str, float], prices: Prices) -> dict[str, float]:
    """Billed item -> how many of it ``used`` (counted operation -> amount) makes."""
    units: dict[str, float] = {}
    for op, items in billing.items():
        for item, weight in items:
            prices.rate(item)  # a misspelt item fails here, not silently at $0
            if not math.isfinite(weight) or weight < 0:
                raise InputError(f"{op}: a billed weight must be finite and >= 0, got {weight}")
            units[item] = units.get(item, 0.0) + weight * used.get(op, 0)
    return units


def estimate(
    billing: Billing,
    ops: Mapping[str, int],
    *,
    invocations: int = 0,
    gb_seconds: float = 0.0,
    prices: Prices | None = None,
    functions: Billing | None = None,
) -> Cost:
    """Price a run's counted operations with its transport's ``billing``, plus its functions.

    The breakdown lists every item the billing names (even at $0, so it shows how the run was
    priced) and the functions' items (``functions``, else :func:`function_billing`) when any
    function ran; ``requests`` says how many of each item billed per operation or invocation the
    run used. Operations the billing does not name are free (an S3 DELETE). ``prices`` default
    to the backends' (:func:`declared_prices`).
    """
    for op, n in ops.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InputError(f"operation {op!r}: the count must be a whole number >= 0, got {n}")
    if isinstance(invocations, bool) or not isinstance(invocations, int) or invocations < 0:
        raise InputError(f"invocations must be a whole number >= 0, got {invocations}")
    if not math.isfinite(gb_seconds) or gb_seconds < 0:
        raise InputError(f"gb_seconds must be a finite number >= 0, got {gb_seconds}")
    prices = prices if prices is not None else declared_prices()
    units = _units(billing, ops, prices)
    breakdown = {item: n * prices.rate(item) for item, n in units.items()}
    requests = {item: math.ceil(round(n, 6)) for item, n in units.items()}
    if invocations > 0 or gb_seconds > 0:
        bill = function_billing() if functions is None else functions
        use: dict[str, float] = {"gb_seconds": gb_seconds, "invocations": invocations}
        for quantity, items in bill.items():
            for item, amount in _units({quantity: items}, use, prices).items():
                breakdown[item] = breakdown.get(item, 0.0) + amount * prices.rate(item)
                if quantity == "invocations":  # a request per invocation; GB-seconds are not
                    requests[item] = requests.get(item, 0) + math.ceil(round(amount, 6))
    return Cost(math.fsum(breakdown.values()), breakdown, requests, prices.as_of)
