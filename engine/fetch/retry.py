"""When to try a page again: exponential backoff with jitter, and Retry-After."""
from __future__ import annotations

import email.utils
import random
import time

from engine.spec.models import Retry


def backoff_delay(policy: Retry, failures: int, rng: random.Random | None = None) -> float:
    """Delay before the next try after `failures` failed tries (1-based): exponential, capped,
    with "equal jitter" (half fixed, half random) so processes that failed together spread out."""
    rng = rng or random
    base = min(policy.max_backoff, policy.backoff * (2 ** (failures - 1)))
    return base / 2 + rng.uniform(0, base / 2)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)
