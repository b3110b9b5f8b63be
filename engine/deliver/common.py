"""What every delivery target shares: the failure types, the stop signal, and the checked
address to connect to (resolved once, each address checked by the outbound policy)."""

from __future__ import annotations

import socket
from collections.abc import Callable

from engine.fetch.outbound import OutboundPolicy, OutboundRefused

Stop = Callable[[], bool]


class DeliveryStopped(Exception):
    """The job was cancelled (or timed out) while a copy was on its way."""


class DeliveryFailure(Exception):
    """One attempt at a copy failed; `retryable`: may another attempt succeed?"""

    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.message, self.retryable = message, retryable


def checked_address(host: str, port: int, policy: OutboundPolicy | None, what: str) -> str:
    """The address to connect to for `host`: resolved here, each address checked with
    `policy`, the first allowed one returned (connect to it, not to the name, so a second
    lookup cannot answer differently); none allowed: the first refusal is the error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DeliveryFailure(f"{what}: cannot resolve {host!r} ({type(exc).__name__})", retryable=True) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise DeliveryFailure(f"{what}: cannot resolve {host!r}", retryable=True)
    if policy is None:
        return addresses[0]
    refusal = None
    for address in addresses:
        try:
            policy.check_address(host, address)
        except OutboundRefused as exc:
            refusal = refusal or exc
        else:
            return address
    raise DeliveryFailure(f"{what}: {refusal}", retryable=False)
