"""Settings come from the environment, or from files in the secrets directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttp_master.settings import MasterSettings


def test_a_secret_file_named_like_the_variable_sets_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TTP_DATABASE_URL", raising=False)
    (tmp_path / "ttp_database_url").write_text("postgresql+psycopg://ttp@db:5432/ttp")
    (tmp_path / "database_url").write_text("postgresql+psycopg://wrong@elsewhere/ttp")
    settings = MasterSettings(_secrets_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.database_url.get_secret_value() == "postgresql+psycopg://ttp@db:5432/ttp"


def test_the_environment_wins_over_a_secret_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TTP_DATABASE_URL", "postgresql+psycopg://env@db/ttp")
    (tmp_path / "ttp_database_url").write_text("postgresql+psycopg://file@db/ttp")
    settings = MasterSettings(_secrets_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.database_url.get_secret_value() == "postgresql+psycopg://env@db/ttp"


def test_a_nats_client_key_without_its_certificate_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import ValidationError

    from ttp_runtime.settings import ServiceSettings

    monkeypatch.setenv("TTP_NATS_TLS_KEY", "/etc/ttp/tls/tls.key")
    monkeypatch.delenv("TTP_NATS_TLS_CERT", raising=False)
    with pytest.raises(ValidationError, match="TTP_NATS_TLS_CERT"):
        ServiceSettings()
