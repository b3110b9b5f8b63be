"""An API with its own quota that says so in RateLimit headers.

Endpoints are registered in `ROUTES` (path -> async handler(request, q, entry)); `reset()` is
called by `POST /_reset`. Documented in tests/testapi/README.md.
"""

from __future__ import annotations

ROUTES: dict = {}


def reset() -> None:
    """Forget all per-run state (called by `POST /_reset`)."""
