"""How far each node's clock is off the gateway's, from its latest status.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("clock_offset_s", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("clock_offset_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE … DROP COLUMN (SQLite ≥ 3.35; Raspberry Pi OS bookworm has 3.40), not
    # a batch: on SQLite a batch copies and drops the nodes table, which the foreign keys of
    # batches, events and calibrations forbid while they hold rows.
    op.drop_column("nodes", "clock_offset_at")
    op.drop_column("nodes", "clock_offset_s")
