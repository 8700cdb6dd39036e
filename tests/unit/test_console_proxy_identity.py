"""Proxy mode: user headers count only from the trusted ranges, and only usable ones."""

from __future__ import annotations

import ipaddress

import pytest

from ttp_console.auth.proxy import ProxyIdentity, ProxyRefusal
from ttp_console.context import ConsoleUser
from ttp_console.settings import ConsoleSettings


def _identity(*ranges: str, operators: tuple[str, ...] = ()) -> ProxyIdentity:
    settings = ConsoleSettings(
        console_auth="proxy",
        console_trusted_proxies=list(ranges),
        console_operators=list(operators),
    )
    return ProxyIdentity(settings.console_trusted_proxies, settings.is_operator)


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),
        ("fd00::5", True),
        ("fe80::1%eth0", False),
        ("11.0.0.1", False),
        ("::1", False),
        ("not an address", False),
        ("", False),
        (None, False),
    ],
)
def test_trusts_only_the_ranges(peer: str | None, trusted: bool) -> None:
    assert _identity("10.0.0.0/8", "fd00::/8").trusts(peer) is trusted


def test_a_trusted_peer_names_the_user_and_the_operator_list_gives_the_role() -> None:
    identity = _identity("127.0.0.1/32", operators=("root-user", "ops@example.org"))
    assert identity.user("127.0.0.1", "u1", None) == ConsoleUser("u1", "viewer")
    assert identity.user("127.0.0.1", "root-user", None) == ConsoleUser("root-user", "operator")
    assert identity.user("127.0.0.1", "u2", "OPS@example.org") == ConsoleUser(
        "u2", "operator", "OPS@example.org"
    )
    assert identity.user("127.0.0.1", "x" * 128, None) == ConsoleUser("x" * 128, "viewer")
    # An email alone names the user.
    assert identity.user("127.0.0.1", None, "a@example.org") == ConsoleUser(
        "a@example.org", "viewer", "a@example.org"
    )


@pytest.mark.parametrize(
    ("peer", "user", "email", "reason"),
    [
        ("192.0.2.1", "admin", "admin@example.org", "outside TTP_CONSOLE_TRUSTED_PROXIES"),
        ("127.0.0.1", None, None, "no usable"),
        ("127.0.0.1", "", "", "no usable"),
        ("127.0.0.1", "two words", None, "no usable"),
        ("127.0.0.1", "x" * 129, None, "no usable"),
        ("127.0.0.1", "line\nbreak", None, "no usable"),
        ("127.0.0.1", "caf\u00e9", None, "no usable"),
    ],
)
def test_refusals(peer: str, user: str | None, email: str | None, reason: str) -> None:
    result = _identity("127.0.0.1/32").user(peer, user, email)
    assert isinstance(result, ProxyRefusal)
    assert reason in result.reason


def test_settings_parse_ranges_and_refuse_proxy_mode_without_them() -> None:
    settings = ConsoleSettings(console_auth="proxy", console_trusted_proxies="10.0.0.0/8, fd00::/8")
    assert settings.console_trusted_proxies == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    ]
    with pytest.raises(ValueError, match="TTP_CONSOLE_TRUSTED_PROXIES"):
        ConsoleSettings(console_auth="proxy")
    with pytest.raises(ValueError, match="network"):
        ConsoleSettings(console_auth="proxy", console_trusted_proxies="10.0.0.1/8")
