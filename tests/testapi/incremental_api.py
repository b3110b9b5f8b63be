"""Incremental loading: records that change between runs (changes-since endpoints).

Endpoints are registered in `ROUTES` (path -> async handler(request, q, entry)); `reset()` is
called by `POST /_reset`. Documented in tests/testapi/README.md.
"""

from __future__ import annotations

ROUTES: dict = {}


def reset() -> None:
    """Forget all per-run state (called by `POST /_reset`)."""
