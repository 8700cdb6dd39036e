"""Configuration from the environment only (see docs/operations.md).

Every variable has the `TTP_` prefix; a file named like the variable in lower case
(`ttp_nats_password`) in the secrets directory (`TTP_SECRETS_DIR`, default
`/run/secrets/ttp` when it exists) works too, which is how Kubernetes and compose secrets
arrive.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final, Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRETS_DIR: Final = Path("/run/secrets/ttp")


def _secrets_dir() -> Path | None:
    configured = os.environ.get("TTP_SECRETS_DIR")
    if configured:
        return Path(configured)
    return DEFAULT_SECRETS_DIR if DEFAULT_SECRETS_DIR.is_dir() else None


class ServiceSettings(BaseSettings):
    """Settings every process shares: NATS, the HTTP port, logging."""

    model_config = SettingsConfigDict(env_prefix="TTP_", extra="ignore", secrets_dir=_secrets_dir())

    nats_url: str = Field(
        default="nats://127.0.0.1:4222", description="NATS server URL(s), comma separated."
    )
    nats_user: str | None = Field(default=None, description="NATS user name.")
    nats_password: SecretStr | None = Field(default=None, description="NATS password.")
    nats_token: SecretStr | None = Field(default=None, description="NATS token.")
    nats_creds_file: Path | None = Field(default=None, description="NATS .creds file (JWT/NKey).")
    nats_tls_ca: Path | None = Field(default=None, description="CA bundle for NATS TLS.")
    nats_tls_cert: Path | None = Field(default=None, description="Client certificate for NATS TLS.")
    nats_tls_key: Path | None = Field(default=None, description="Client key for NATS TLS.")
    nats_inbox_prefix: str = Field(
        default="_INBOX",
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description=(
            "Subject prefix of this client's reply inboxes. Each role has its own in the "
            "shipped NATS accounts config, so one role cannot read another's replies."
        ),
    )
    nats_ping_interval_s: float = Field(
        default=5.0, gt=0, description="Seconds between client pings; a dead link shows fast."
    )
    stream_replicas: int = Field(
        default=1, ge=1, le=5, description="JetStream replicas (1 in development, 3 in production)."
    )
    events_max_age_s: int = Field(
        default=7 * 24 * 3600,
        gt=0,
        description="TTP_EVENTS retention by age (whichever process starts first creates it).",
    )
    events_max_bytes: int = Field(
        default=8 * 1024**3,
        gt=0,
        description="TTP_EVENTS size limit; once reached, publishes are refused (discard new).",
    )
    tags_max_age_s: int = Field(default=30 * 24 * 3600, gt=0, description="TTP_TAGS retention.")
    tags_max_bytes: int = Field(
        default=16 * 1024**3,
        gt=0,
        description="TTP_TAGS size limit; once reached, workers hold their events (not ready).",
    )
    deadletter_max_bytes: int = Field(
        default=1024**3,
        gt=0,
        description="TTP_DEADLETTER size limit; once reached, workers hold their events.",
    )
    rules_max_bytes: int = Field(
        default=1024**3,
        gt=0,
        description="TTP_RULES size limit, its own: an event backlog never takes its room.",
    )
    http_host: str = Field(default="0.0.0.0", description="Address of /livez, /readyz, /metrics.")  # noqa: S104
    http_port: int = Field(default=8080, ge=0, le=65535, description="Port of the HTTP server.")
    log_format: Literal["json", "console"] = Field(default="json", description="Log format.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level."
    )

    @model_validator(mode="after")
    def _client_key_needs_its_certificate(self) -> Self:
        # A key alone would be silently unused, and a server demanding mutual TLS would then
        # refuse the service with nothing pointing at the missing certificate.
        if self.nats_tls_key is not None and self.nats_tls_cert is None:
            raise ValueError("TTP_NATS_TLS_KEY is set without TTP_NATS_TLS_CERT")
        return self

    def nats_servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]
