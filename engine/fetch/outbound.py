"""Where a job may connect: one outbound policy for every kind of connection (sources,
redirects, pagination URLs, OAuth2 token URLs, webhooks, S3 endpoints, FTP hosts).

`ALLOWED_SOURCE_HOSTS` entries are host names (exact), `*.example.com` suffixes (the older
`.example.com` form too), IP addresses or CIDR ranges. With entries, a connection is allowed
when its host name matches a name or suffix entry (whatever it resolves to: the operator
listed it), or when the address connected to lies in an IP/CIDR entry. Without entries the
service allows public addresses only; the CLI allows everything.

Kept free of heavy imports (stdlib only): `engine.spec.prepare` checks specs with it in
processes that never fetch, and the fetch client checks every resolved address with it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

__all__ = [
    "OutboundPolicy",
    "OutboundRefused",
    "address_refusal",
    "host_matches",
    "is_address",
    "not_allowed_message",
    "outbound_policy",
    "parse_entries",
    "url_problem",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
CGNAT = ipaddress.ip_network("100.64.0.0/10")


class OutboundRefused(ValueError):
    """A connection the policy does not allow (the message says why, never with credentials)."""


def not_allowed_message(host: str | None) -> str:
    return f"host {host!r} is not in ALLOWED_SOURCE_HOSTS"


def parse_entries(entries: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[IPNetwork, ...]]:
    """(exact names, `.suffixes`, networks) from ALLOWED_SOURCE_HOSTS entries."""
    names: list[str] = []
    suffixes: list[str] = []
    networks: list[IPNetwork] = []
    for raw in entries:
        entry = raw.strip().lower()
        if not entry:
            continue
        bare = entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry
        try:
            networks.append(ipaddress.ip_network(bare, strict=False))
            continue
        except ValueError:
            pass
        if entry.startswith("*."):
            suffixes.append(entry[1:])
        elif entry.startswith("."):
            suffixes.append(entry)
        else:
            names.append(entry.rstrip("."))
    return tuple(names), tuple(suffixes), tuple(networks)


def host_matches(host: str, allowed: tuple[str, ...]) -> bool:
    """`host` is a name entry of `allowed`, or under one of its suffix entries. An empty
    allowlist allows every host. (Names only: addresses are `OutboundPolicy.check_address`'s.)"""
    if not allowed:
        return True
    names, suffixes, _ = parse_entries(allowed)
    return _name_listed(host.lower().rstrip("."), names, suffixes)


def _name_listed(host: str, names: tuple[str, ...], suffixes: tuple[str, ...]) -> bool:
    return host in names or any(host.endswith(s) for s in suffixes)


def _address(value: str) -> IPAddress | None:
    text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    text = text.split("%", 1)[0]  # an IPv6 zone
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d
            return address.ipv4_mapped
        if address.sixtofour is not None or address.teredo is not None:
            return address
        packed = address.packed
        if packed[:12] == bytes(12) and packed[12:] not in (bytes(4), b"\x00\x00\x00\x01"):  # ::a.b.c.d
            return ipaddress.IPv4Address(packed[12:])
    return address


def is_address(host: str) -> bool:
    """Whether `host` is an IP address literal (`[::1]` too)."""
    return _address(host) is not None


def address_refusal(address: IPAddress) -> str | None:
    """Why a public-only policy refuses `address` (None: it is public)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None and address_refusal(embedded):
            return "an internal address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if isinstance(address, ipaddress.IPv4Address) and address in CGNAT:
        return "a shared (CGNAT) address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved address"
    return None


@dataclass(frozen=True)
class OutboundPolicy:
    """Picklable (it travels to the pool processes inside the job)."""

    entries: tuple[str, ...] = ()
    public_only: bool = False

    def __post_init__(self) -> None:
        names, suffixes, networks = parse_entries(self.entries)
        object.__setattr__(self, "_names", names)
        object.__setattr__(self, "_suffixes", suffixes)
        object.__setattr__(self, "_networks", networks)

    def __getstate__(self) -> dict[str, Any]:
        return {"entries": self.entries, "public_only": self.public_only}

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "entries", state["entries"])
        object.__setattr__(self, "public_only", state["public_only"])
        self.__post_init__()

    @property
    def restricted(self) -> bool:
        """Whether anything is refused at all."""
        return bool(self.entries) or self.public_only

    def name_listed(self, host: str) -> bool:
        return _name_listed(host.lower().rstrip("."), self._names, self._suffixes)  # type: ignore[attr-defined]

    def check_host(self, host: str) -> None:
        """A host as named in a URL (before resolving). A name not on the list may still be
        allowed by the address it resolves to (an IP/CIDR entry), so names are refused here
        only when the list has no networks; an address literal is checked as an address."""
        host = host.lower()
        if _address(host) is not None:
            self.check_address(host, host)
            return
        if not self.entries or self.name_listed(host):
            return
        if not self._networks:  # type: ignore[attr-defined]
            raise OutboundRefused(not_allowed_message(host))

    def check_address(self, host: str, ip: str) -> None:
        """The address `ip` that `host` resolved to (or `host` itself, a literal), about to be
        connected to."""
        address = _address(ip)
        if address is None:
            raise OutboundRefused(f"address {ip!r} is not an IP address")
        if self.entries:
            if _address(host) is None and self.name_listed(host):
                return
            if any(address in n for n in self._networks):  # type: ignore[attr-defined]
                return
            if _address(host) is None and not self._networks:  # type: ignore[attr-defined]
                raise OutboundRefused(not_allowed_message(host))
            raise OutboundRefused(f"{_which(address, host)} is not allowed (not in ALLOWED_SOURCE_HOSTS)")
        if self.public_only:
            why = address_refusal(address)
            if why is not None:
                raise OutboundRefused(
                    f"{_which(address, host)} is not allowed ({why}; ALLOWED_SOURCE_HOSTS can list it)"
                )


def _which(address: IPAddress, host: str) -> str:
    if _address(host) is not None:
        return f"address {host!r}"
    return f"address {str(address)!r} of host {host!r}"


def outbound_policy(settings: Any, service: bool) -> OutboundPolicy:
    """The policy for a process: the service allows public addresses only unless
    ALLOWED_SOURCE_HOSTS lists what it may reach; the CLI applies ALLOWED_SOURCE_HOSTS only
    when it is set."""
    entries = tuple(getattr(settings, "allowed_source_hosts", ()) or ())
    return OutboundPolicy(entries, public_only=service and not entries)


def url_problem(url: str, policy: OutboundPolicy, schemes: tuple[str, ...] = ("http", "https")) -> str | None:
    """Why `url` may not be used (None: fine) - checked at validation with the same rules as
    the client: no user info, no backslash, an ASCII host, the policy's name/address rule."""
    from yarl import URL  # aiohttp's own parser: the host checked is the host connected to

    if "\\" in url:
        return "invalid URL (a backslash)"
    try:
        parsed = URL(url)
        host = parsed.raw_host
        if parsed.scheme not in schemes or not host:
            return "invalid URL"
        if parsed.raw_user is not None or parsed.raw_password is not None:
            return "invalid URL (user info is not allowed)"
        if not host.isascii() or not (parsed.host or "").isascii():
            return "invalid URL (a non-ASCII host)"
    except (ValueError, TypeError, UnicodeError):
        return "invalid URL"
    return host_problem(host, policy)


def host_problem(host: str, policy: OutboundPolicy) -> str | None:
    """Why a bare host (an FTP host, say) may not be connected to."""
    if "\\" in host or "@" in host or "/" in host or not host.isascii():
        return "invalid host"
    try:
        policy.check_host(host)
    except OutboundRefused as exc:
        return str(exc)
    return None
