"""The master's settings (see docs/operations.md)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ttp_runtime.settings import ServiceSettings


class MasterSettings(ServiceSettings):
    """Environment of `ttp-master`."""

    database_url: str = Field(
        default="postgresql+psycopg://postgres@127.0.0.1:5432/ttp",
        description="PostgreSQL URL (SQLAlchemy form).",
    )
    rules_dir: Path = Field(default=Path("./rules"), description="Directory watched for rules.")
    debounce_ms: int = Field(
        default=10, ge=0, le=5000, description="Quiet time that closes a batch of file events."
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
