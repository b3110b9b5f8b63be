"""Which hosts a job may reach (ALLOWED_SOURCE_HOSTS), as one small rule.

Kept free of heavy imports: `engine.spec.prepare` checks specs with it in processes that
never fetch, and the fetch client checks every hop with the same rule.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def host_matches(host: str, allowed: tuple[str, ...]) -> bool:
    """`host` (already lower-case) is an entry of `allowed`, or under one of its `.suffix`
    entries. An empty allowlist allows every host."""
    if not allowed:
        return True
    return any(host == a or (a.startswith(".") and host.endswith(a)) for a in allowed)


def host_allowed(url: str, allowed: tuple[str, ...]) -> bool:
    if not allowed:
        return True
    return host_matches((urlsplit(url).hostname or "").lower(), allowed)


def not_allowed_message(host: str | None) -> str:
    return f"host {host!r} is not in ALLOWED_SOURCE_HOSTS"
