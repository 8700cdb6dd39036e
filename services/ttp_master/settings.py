"""The master's settings (see docs/operations.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from ttp_master.caller_identity import DEFAULT_ACCOUNT_ROLES
from ttp_master.db.target import DatabaseTarget
from ttp_runtime.settings import ServiceSettings

ControlRole = Literal["viewer", "operator", "console", "admin"]


def _default_account_roles() -> dict[str, ControlRole]:
    """The accounts of ttp_runtime/nats_accounts.conf that call the control service: the
    caller identity's `DEFAULT_ACCOUNT_ROLES`, as the plain role names the setting holds."""
    return {account: role.value for account, role in DEFAULT_ACCOUNT_ROLES.items()}


class MasterSettings(ServiceSettings):
    """Environment of `ttp-master`."""

    database_url: SecretStr = Field(
        default=SecretStr("postgresql+psycopg://postgres@127.0.0.1:5432/ttp"),
        description="PostgreSQL URL (SQLAlchemy form); a secret, never logged.",
    )
    database_sslmode: (
        Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None
    ) = Field(default=None, description="libpq sslmode of every PostgreSQL connection.")
    database_sslrootcert: Path | None = Field(
        default=None, description="CA bundle that verifies the PostgreSQL server (libpq)."
    )
    database_sslcert: Path | None = Field(
        default=None, description="Client certificate for PostgreSQL TLS (libpq)."
    )
    database_sslkey: Path | None = Field(
        default=None, description="Client key for PostgreSQL TLS (libpq)."
    )
    migrate_at_start: bool = Field(
        default=True,
        description=(
            "Migrate the schema at start; when false the master only checks that the schema "
            "is at the newest revision and refuses to start otherwise (DML-only role)."
        ),
    )
    rules_dir: Path = Field(default=Path("./rules"), description="Directory watched for rules.")
    debounce_ms: int = Field(
        default=10,
        ge=0,
        le=5000,
        description=(
            "Quiet time that closes a batch of file events; a batch of files only renamed "
            "into place (atomic saves, mv, a ConfigMap swap) is handed out without it."
        ),
    )
    delete_grace_ms: int = Field(
        default=100,
        ge=0,
        le=5000,
        description=(
            "How long a batch that saw a rule file vanish waits before syncing, so an "
            "editor's rename-away-then-write save is not published as a delete."
        ),
    )
    field_catalogue: Path | None = Field(
        default=None,
        description=(
            "YAML or JSON file adding source kinds and payload fields to the field catalogue "
            "(docs/rules.md); the master logs the warnings of each rule file it accepts."
        ),
    )
    mass_delete_confirm_s: float = Field(
        default=300.0,
        ge=0,
        description=(
            "How long the files of most rules (more than half, and more than 5) must stay "
            "missing before their deletes are published; until then, and for as long as the "
            "rules directory itself is missing, workers keep the last good rule set. "
            "0 publishes such deletes at once (a missing directory is still held)."
        ),
    )
    rescan_interval_s: float = Field(
        default=300.0, gt=0, description="Backstop full rescan of the rules directory."
    )
    relay_poll_interval_s: float = Field(
        default=1.0, gt=0, description="Outbox poll when no NOTIFY arrives."
    )
    leader_lock_key: int = Field(
        default=0x7474_7072, description="PostgreSQL advisory lock key held by the leader."
    )
    control_max_concurrent: int = Field(
        default=32,
        ge=1,
        le=1024,
        description=(
            "Control requests (ttp.ctl.>) one master works on at once; beyond it a request "
            "is answered `busy` at once, so a flood cannot exhaust the master."
        ),
    )
    control_clock_skew_s: float = Field(
        default=2.0,
        ge=0,
        le=300,
        description=(
            "How far a control caller's clock may run behind the master's: a request whose "
            "deadline (Ttp-Deadline) passed longer ago than this is neither acted on nor "
            "answered."
        ),
    )

    control_account_roles: dict[str, ControlRole] = Field(
        default_factory=_default_account_roles,
        description=(
            "Role of each NATS account calling the control service (JSON object, account -> "
            "viewer, operator, console or admin); a caller of any other account is refused."
        ),
    )
    control_require_verified_identity: bool = Field(
        default=True,
        description=(
            "Serve a control request only with the caller identity the NATS server stamps on "
            "it (Nats-Request-Info), and none at all on a server that does not authenticate "
            "clients. False (private test servers only) serves a request without it as "
            "admin, actor `unverified`."
        ),
    )

    def database_target(self) -> DatabaseTarget:
        """The PostgreSQL database with its TLS parameters (what every connection uses)."""
        return DatabaseTarget.from_parts(
            self.database_url,
            sslmode=self.database_sslmode,
            sslrootcert=self.database_sslrootcert,
            sslcert=self.database_sslcert,
            sslkey=self.database_sslkey,
        )
