"""ConsoleSettings from the TTP_ environment and the secrets directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttp_console.settings import ConsoleSettings


def test_defaults(tmp_path: Path) -> None:
    settings = ConsoleSettings(_secrets_dir=tmp_path)  # type: ignore[call-arg]
    assert (settings.console_port, settings.http_port) == (8090, 8083)
    assert settings.console_auth == "users"
    assert settings.nats_inbox_prefix == "_INBOX_console"
    assert settings.console_cookie_secure is True
    assert settings.console_session_secret is None


def test_environment_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTP_CONSOLE_AUTH", "proxy")
    monkeypatch.setenv("TTP_CONSOLE_TRUSTED_PROXIES", '["10.0.0.0/8"]')
    monkeypatch.setenv("TTP_CONSOLE_OPERATORS", "alice, ops@example.org ,")
    monkeypatch.setenv("TTP_CONSOLE_COOKIE_SECURE", "false")
    settings = ConsoleSettings()
    assert [str(n) for n in settings.console_trusted_proxies] == ["10.0.0.0/8"]
    assert settings.console_operators == ["alice", "ops@example.org"]
    assert settings.is_operator("alice", None)
    assert settings.is_operator("someone", "OPS@EXAMPLE.ORG")
    assert not settings.is_operator("Alice", None)
    assert settings.console_cookie_secure is False


def test_session_secret_from_the_secrets_directory(tmp_path: Path) -> None:
    (tmp_path / "ttp_console_session_secret").write_text("k" * 40)
    settings = ConsoleSettings(_secrets_dir=tmp_path)  # type: ignore[call-arg]
    secret = settings.console_session_secret
    assert secret is not None and secret.get_secret_value() == "k" * 40
    assert "k" * 40 not in repr(settings)


def test_a_short_session_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTP_CONSOLE_SESSION_SECRET", "short")
    with pytest.raises(ValueError, match="at least 32"):
        ConsoleSettings()


@pytest.mark.parametrize(
    ("given", "origin"),
    [
        ("https://console.example.com", "https://console.example.com"),
        (" HTTPS://Console.Example.COM/ ", "https://console.example.com"),
        ("https://console.example.com:443", "https://console.example.com"),
        ("http://console.example.com:80", "http://console.example.com"),
        ("https://console.example.com:8443", "https://console.example.com:8443"),
        ("http://127.0.0.1:8090", "http://127.0.0.1:8090"),
        ("https://[2001:DB8:0::1]:8443", "https://[2001:db8::1]:8443"),
        ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),
    ],
)
def test_the_public_origin_is_kept_as_browsers_write_origins(given: str, origin: str) -> None:
    assert ConsoleSettings(console_public_origin=given).console_public_origin == origin


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("console.example.com", "must start with https:// or http://"),
        ("ftp://console.example.com", "must start with https:// or http://"),
        ("https://console.example.com/console", "no path"),
        ("https://console.example.com?x=1", "no path"),
        ("https://console.example.com#top", "no path"),
        ("https://admin@console.example.com", "no path"),
        ("https://", "has no host"),
        ("https://console.example.com:99999", "is not a URL"),
        ("https://console.example.com:0", "port 0"),
        ("https://[::1", "is not a URL"),
        ("https://bücher.example", "xn-- form"),
        ("https://exa mple.com", "no valid host name"),
        ("https://1.2.3", "no valid host name"),
        ("https://[fe80::1%25eth0]", "zone ids"),
    ],
)
def test_a_public_origin_that_is_not_an_origin_is_refused(given: str, complaint: str) -> None:
    with pytest.raises(ValueError, match="console_public_origin") as info:
        ConsoleSettings(console_public_origin=given)
    assert complaint in str(info.value)


def test_an_empty_public_origin_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ConsoleSettings().console_public_origin is None
    monkeypatch.setenv("TTP_CONSOLE_PUBLIC_ORIGIN", "")
    assert ConsoleSettings().console_public_origin is None
    monkeypatch.setenv("TTP_CONSOLE_PUBLIC_ORIGIN", "https://Console.Example.com")
    assert ConsoleSettings().console_public_origin == "https://console.example.com"
