"""Moisture-probe calibrations sent to nodes from the dashboard, with the node's answer.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calibrations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.String(length=40), nullable=False),
        sa.Column("node_id", sa.String(length=40), nullable=False),
        sa.Column("sensor", sa.String(length=40), nullable=True),
        sa.Column("points", sa.JSON(), nullable=False),
        sa.Column("pairs", sa.JSON(), nullable=False),
        sa.Column("comment", sa.String(length=500), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("command_id", sa.String(length=64), nullable=False),
        sa.Column("delivered_to_broker", sa.Boolean(), nullable=False),
        sa.Column("applied", sa.Boolean(), nullable=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("node_message", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(["site_id", "node_id"], ["nodes.site_id", "nodes.node_id"],
                                name=op.f("fk_calibrations_site_id_nodes")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calibrations")),
        sa.UniqueConstraint("command_id", name=op.f("uq_calibrations_command_id")),
    )
    with op.batch_alter_table("calibrations", schema=None) as batch_op:
        batch_op.create_index("ix_calibrations_node_time", ["site_id", "node_id", "created_at"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("calibrations", schema=None) as batch_op:
        batch_op.drop_index("ix_calibrations_node_time")
    op.drop_table("calibrations")
