"""Event sequence numbers as 64-bit integers on PostgreSQL (node_events.seq,
nodes.last_event_seq): a node numbers events up to the contract's MAX_SEQ, and an outbox
recreated after January 2038 starts above 2**31. SQLite's INTEGER is 64-bit already.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 08:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.alter_column("node_events", "seq", type_=sa.BigInteger(), existing_nullable=False)
    op.alter_column("nodes", "last_event_seq", type_=sa.BigInteger(), existing_nullable=False)


def downgrade() -> None:
    # Refused by PostgreSQL (out of range) if a node already numbered an event above 2**31.
    if op.get_context().dialect.name != "postgresql":
        return
    op.alter_column("nodes", "last_event_seq", type_=sa.Integer(), existing_nullable=False)
    op.alter_column("node_events", "seq", type_=sa.Integer(), existing_nullable=False)
