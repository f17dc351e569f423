"""Drift detection: the predictions' text and photo representations, and the drift reports.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

IDENTIFIER = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("predictions") as table:
        table.add_column(sa.Column("text_embedding", sa.JSON()))
        table.add_column(sa.Column("image_embedding", sa.JSON()))
        table.add_column(sa.Column("photo_colour", sa.JSON()))
    op.create_table(
        "drift_reports",
        sa.Column("id", IDENTIFIER, primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(32), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True)),
        sa.Column("window_end", sa.DateTime(timezone=True)),
        sa.Column("predictions", sa.Integer(), nullable=False),
        sa.Column("drifted", sa.Boolean(), nullable=False),
        sa.Column("checks", sa.JSON(), nullable=False),
    )
    op.create_index("ix_drift_reports_created_at", "drift_reports", ["created_at"])


def downgrade() -> None:
    op.drop_table("drift_reports")
    with op.batch_alter_table("predictions") as table:
        table.drop_column("photo_colour")
        table.drop_column("image_embedding")
        table.drop_column("text_embedding")
