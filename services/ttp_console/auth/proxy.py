"""Proxy mode: the user named by a trusted authenticating proxy (oauth2-proxy's headers).

``X-Forwarded-User`` / ``X-Forwarded-Email`` are believed only when the TCP peer of the
connection is inside one of the configured proxy ranges. The peer is the socket's own
address: uvicorn runs with its proxy-header handling off, so no ``X-Forwarded-For`` can
move a request into a trusted range. Anything else (another peer, or a trusted peer that
names nobody, or names someone in characters no proxy sends) is refused; there is never a
fallback to the headers alone.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from ttp_console.context import ConsoleUser
from ttp_console.settings import ProxyNetwork

__all__ = ["EMAIL_HEADER", "USER_HEADER", "ProxyIdentity", "ProxyRefusal"]

USER_HEADER: Final = "x-forwarded-user"
EMAIL_HEADER: Final = "x-forwarded-email"
# Printable ASCII, no spaces or controls: what an identity provider's subject or an email
# looks like, and nothing that could forge a log line or a page. At most 128 characters, the
# longest acting-for user the master stores.
_IDENTITY: Final = re.compile(r"[!-~]{1,128}")


@dataclass(frozen=True, slots=True)
class ProxyRefusal:
    """Why a request was not let through (logged; the client sees only a generic 403)."""

    reason: str


class ProxyIdentity:
    """Turns a request's peer address and headers into a :class:`ConsoleUser`, or a refusal."""

    def __init__(
        self, trusted: Sequence[ProxyNetwork], is_operator: Callable[[str, str | None], bool]
    ) -> None:
        self._trusted = tuple(trusted)
        self._is_operator = is_operator

    def trusts(self, peer: str | None) -> bool:
        """Whether ``peer`` (an IP address as text) is inside a trusted proxy range."""
        if peer is None:
            return False
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            address = mapped
        return any(address.version == net.version and address in net for net in self._trusted)

    def user(
        self, peer: str | None, user_header: str | None, email_header: str | None
    ) -> ConsoleUser | ProxyRefusal:
        """The verified user, or why the request is refused."""
        if not self.trusts(peer):
            return ProxyRefusal(
                f"request from {peer or 'an unknown address'}, outside"
                " TTP_CONSOLE_TRUSTED_PROXIES: proxy mode serves only the authenticating proxy"
            )
        email = _identity(email_header)
        name = _identity(user_header) or email
        if name is None:
            return ProxyRefusal(
                "the trusted proxy sent no usable X-Forwarded-User or X-Forwarded-Email"
                " (is it set to pass the user headers?)"
            )
        if self._is_operator(name, email):
            return ConsoleUser(name=name, role="operator", email=email)
        return ConsoleUser(name=name, role="viewer", email=email)


def _identity(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value if _IDENTITY.fullmatch(value) else None
