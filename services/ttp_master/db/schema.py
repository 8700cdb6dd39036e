"""The master's tables (see docs/operations.md). Alembic migrations must match this metadata."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Sequence,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

revision_seq = Sequence("ttp_revision_seq", metadata=metadata, start=1)
"""Every persisted change takes its revision from here: strictly increasing."""

rule = Table(
    "ttp_rule",
    metadata,
    Column("rule_id", String(64), primary_key=True),
    Column("rule_version", Integer, nullable=False),
    Column("name", Text, nullable=False),
    Column("content_sha256", String(64), nullable=False),
    Column("definition", JSONB, nullable=False, comment="canonical normalised rule"),
    Column("yaml_text", Text, nullable=False),
    Column("source_path", Text, nullable=False),
    Column("is_external", Boolean, nullable=False, server_default=text("false")),
    Column("deleted", Boolean, nullable=False, server_default=text("false")),
    Column("revision", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

rule_state = Table(
    "ttp_rule_state",
    metadata,
    Column("rule_id", String(64), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("confidence_max", Float, nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("reason", Text, nullable=True),
    Column("set_by", Text, nullable=True),
    Column("set_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revision", BigInteger, nullable=False),
    Column(
        "on_behalf_of",
        Text,
        nullable=True,
        comment="whom the caller said it acted for (a note; set_by is verified)",
    ),
    CheckConstraint("state IN ('enabled', 'disabled', 'clipped')", name="ck_ttp_rule_state_state"),
)

rule_rejection = Table(
    "ttp_rule_rejection",
    metadata,
    Column("source_path", Text, primary_key=True),
    Column("rule_id", String(64), nullable=True),
    Column("errors", JSONB, nullable=False),
    Column("yaml_text", Text, nullable=True),
    Column("first_seen", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_seen", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

rule_event = Table(
    "ttp_rule_event",
    metadata,
    Column("revision", BigInteger, primary_key=True, autoincrement=False),
    Column("rule_id", String(64), nullable=True),
    Column("kind", String(32), nullable=False),
    Column("subject", Text, nullable=False),
    Column("msg_id", Text, nullable=False, unique=True),
    Column("jetstream", Boolean, nullable=False, server_default=text("true")),
    Column("payload", JSONB, nullable=False),
    Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("actor", Text, nullable=True),
    Column(
        "on_behalf_of",
        Text,
        nullable=True,
        comment="whom the caller said it acted for (a note; actor is verified)",
    ),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("published_at", DateTime(timezone=True), nullable=True),
    Index(
        "ix_ttp_rule_event_unpublished",
        "revision",
        postgresql_where=text("published_at IS NULL"),
    ),
    Index("ix_ttp_rule_event_rule", "rule_id", "revision"),
)
