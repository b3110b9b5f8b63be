"""Deterministic fault selection for the local test API (pure, no dependencies).

A request's *key* is its path plus its query with the common parameters
(``delay_ms`` and every fault parameter) removed, the rest sorted:
``/items/page?n=50&page=2&per_page=10``. A key is *failing* when
``fraction(key, seed) < fail_rate``. The server counts attempts per key (only for
requests that carry ``fail_rate`` or ``fail_all``); attempt ``a`` (0-based) of a
failing key gets a fault when ``a < fail_times`` (or always with ``fail_all=1``).

Tests can call :func:`fault_key`, :func:`is_failing` and :func:`fault_kind` to
predict exactly which requests fail and how.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from urllib.parse import urlencode

KINDS = ("500", "503", "429", "truncate", "drop", "slow", "badjson")
MIXED_CYCLE = ("500", "503", "429", "truncate", "drop", "badjson")
FAULT_PARAMS = frozenset(
    {
        "fail_rate",
        "fault",
        "fail_times",
        "fail_all",
        "seed",
        "retry_after",
        "retry_after_date",
        "slow_ms",
    }
)
COMMON_PARAMS = FAULT_PARAMS | {"delay_ms"}


def fault_key(path: str, query: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """``path?sorted(query minus common params)`` (just ``path`` when nothing is left)."""
    items = query.items() if hasattr(query, "items") else query
    kept = sorted((k, str(v)) for k, v in items if k not in COMMON_PARAMS)
    return f"{path}?{urlencode(kept)}" if kept else path


def _hash64(key: str, seed: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest(), "big")


def fraction(key: str, seed: str | int = 0) -> float:
    """A stable number in [0, 1) for (key, seed)."""
    return _hash64(key, str(seed)) / 2.0**64


def is_failing(key: str, fail_rate: float, seed: str | int = 0) -> bool:
    return fraction(key, seed) < fail_rate


def fault_kind(fault: str, key: str, attempt: int, seed: str | int = 0) -> str:
    """The concrete fault for ``fault`` (``mixed`` cycles per key and attempt)."""
    if fault == "mixed":
        return MIXED_CYCLE[(_hash64(key, str(seed)) + attempt) % len(MIXED_CYCLE)]
    return fault


def decide(key: str, params: Mapping[str, str], attempt: int) -> str | None:
    """Fault to inject for attempt ``attempt`` (0-based) of ``key``, or None.

    ``params`` are the request's query parameters. Raises ``ValueError`` on bad values.
    """
    fault = params.get("fault", "500")
    if fault not in KINDS and fault != "mixed":
        raise ValueError(f"unknown fault {fault!r}")
    seed = params.get("seed", "0")
    if params.get("fail_all", "0") not in ("", "0", "false"):
        return fault_kind(fault, key, attempt, seed)
    rate = float(params.get("fail_rate", "0") or 0)
    if rate <= 0 or not is_failing(key, rate, seed):
        return None
    if attempt < int(params.get("fail_times", "1")):
        return fault_kind(fault, key, attempt, seed)
    return None


def has_fault_params(params: Mapping[str, str]) -> bool:
    return "fail_rate" in params or "fail_all" in params
