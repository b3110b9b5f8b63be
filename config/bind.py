"""Fail closed at start-up: the service bound to a non-loopback address without API_TOKEN would
hand its API (outbound requests, stored specs, results) to anyone who can reach the port.
gunicorn.conf.py's `on_starting` hook calls `startup_refusal` and exits with its message.
Light on purpose: it runs in gunicorn's master, before any worker exists."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from config.settings import Settings


def bind_addresses(bind: str) -> list[str]:
    """BIND as gunicorn's list of addresses (comma- or space-separated)."""
    return [part for part in bind.replace(",", " ").split() if part]


def is_loopback(address: str) -> bool:
    """True when `address` (gunicorn's `HOST:PORT`, `[V6]:PORT`, `unix:PATH`, `fd://N`) can only
    be reached from this machine: loopback IPs, `localhost`, Unix sockets and inherited fds."""
    address = address.strip()
    if address.startswith(("unix:", "fd://")):
        return True
    if address.startswith("["):
        host = address[1 : address.find("]")] if "]" in address else address[1:]
    elif address.count(":") > 1:
        host = address  # a bare IPv6 address, no port
    else:
        host = address.rsplit(":", 1)[0] if ":" in address else address
    host = host.strip().lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False  # another name, or empty (every interface): it may resolve anywhere
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def startup_refusal(settings: Settings, binds: Iterable[str]) -> str | None:
    """Why the service must not start (one line), or None."""
    exposed = [b for b in binds if not is_loopback(b)]
    if not exposed or settings.api_token or settings.allow_no_token:
        return None
    return (
        f"pageferry refuses to start: bound to {', '.join(exposed)} (not loopback) without API_TOKEN, "
        "anyone who reaches the port could use the API. Set API_TOKEN to a long random secret "
        "(clients send Authorization: Bearer <token>), bind to 127.0.0.1 (BIND), "
        "or set ALLOW_NO_TOKEN=1 to run without a token on purpose."
    )
