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
