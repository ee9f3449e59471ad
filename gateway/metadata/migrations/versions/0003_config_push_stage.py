"""Config pushes remember the batch and stage they were computed for, so a batch that reached
its main stage stays there (no configs sent back and forth when a moisture reading bounces
around the early-phase limit) and the rollout shows what each version was for.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 03:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("node_config_pushes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stage", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("batch_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("node_config_pushes", schema=None) as batch_op:
        batch_op.drop_column("batch_id")
        batch_op.drop_column("stage")
