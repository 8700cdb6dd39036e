"""Initial schema: rules, operator state, rejections, the event log/outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sa.schema.CreateSequence(sa.Sequence("ttp_revision_seq", start=1)))
    op.create_table(
        "ttp_rule",
        sa.Column("rule_id", sa.String(64), primary_key=True),
        sa.Column("rule_version", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column(
            "definition", postgresql.JSONB(), nullable=False, comment="canonical normalised rule"
        ),
        sa.Column("yaml_text", sa.Text(), nullable=False),
        sa.Column("source_path", sa.Text(), nullable=False),
        sa.Column("is_external", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("deleted", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_table(
        "ttp_rule_state",
        sa.Column("rule_id", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("confidence_max", sa.Float(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("set_by", sa.Text(), nullable=True),
        sa.Column(
            "set_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "state IN ('enabled', 'disabled', 'clipped')", name="ck_ttp_rule_state_state"
        ),
    )
    op.create_table(
        "ttp_rule_rejection",
        sa.Column("source_path", sa.Text(), primary_key=True),
        sa.Column("rule_id", sa.String(64), nullable=True),
        sa.Column("errors", postgresql.JSONB(), nullable=False),
        sa.Column("yaml_text", sa.Text(), nullable=True),
        sa.Column(
            "first_seen", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "last_seen", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_table(
        "ttp_rule_event",
        sa.Column("revision", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("rule_id", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("msg_id", sa.Text(), nullable=False, unique=True),
        sa.Column("jetstream", sa.Boolean(), nullable=False, server_default=sa.text("true")),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column(
            "headers", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        sa.Column("actor", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_ttp_rule_event_unpublished",
        "ttp_rule_event",
        ["revision"],
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.create_index("ix_ttp_rule_event_rule", "ttp_rule_event", ["rule_id", "revision"])


def downgrade() -> None:
    op.drop_index("ix_ttp_rule_event_rule", table_name="ttp_rule_event")
    op.drop_index("ix_ttp_rule_event_unpublished", table_name="ttp_rule_event")
    op.drop_table("ttp_rule_event")
    op.drop_table("ttp_rule_rejection")
    op.drop_table("ttp_rule_state")
    op.drop_table("ttp_rule")
    op.execute(sa.schema.DropSequence(sa.Sequence("ttp_revision_seq")))
