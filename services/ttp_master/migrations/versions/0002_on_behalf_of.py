"""The audit and the operator state record whom a caller said it acted for.

The actor (`ttp_rule_event.actor`, `ttp_rule_state.set_by`) is the caller's identity as the
NATS server authenticated it; the name a client supplies (`--as`, the request's `actor`) is
kept beside it as `on_behalf_of`, a note that nothing verifies. Nullable: existing rows,
and changes made by the master itself, have none.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "ttp_rule_state",
        sa.Column(
            "on_behalf_of",
            sa.Text(),
            nullable=True,
            comment="whom the caller said it acted for (a note; set_by is verified)",
        ),
    )
    op.add_column(
        "ttp_rule_event",
        sa.Column(
            "on_behalf_of",
            sa.Text(),
            nullable=True,
            comment="whom the caller said it acted for (a note; actor is verified)",
        ),
    )


def downgrade() -> None:
    op.drop_column("ttp_rule_event", "on_behalf_of")
    op.drop_column("ttp_rule_state", "on_behalf_of")
