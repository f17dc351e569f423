"""The predictions and feedback tables.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

IDENTIFIER = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", IDENTIFIER, primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(32), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("user", sa.String(64)),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("variant", sa.String(16), nullable=False),
        sa.Column("served", sa.Boolean(), nullable=False),
        sa.Column("product_identifier", sa.String(256)),
        sa.Column("product_id", sa.String(256)),
        sa.Column("imageid", sa.String(256)),
        sa.Column("text_length", sa.Integer(), nullable=False),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("has_photo", sa.Boolean(), nullable=False),
        sa.Column("photo_used", sa.Boolean(), nullable=False),
        sa.Column("photo_width", sa.Integer()),
        sa.Column("photo_height", sa.Integer()),
        sa.Column("photo_bytes", sa.Integer()),
        sa.Column("prdtypecode", sa.Integer(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("top", sa.JSON(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("designation", sa.Text()),
        sa.Column("description", sa.Text()),
    )
    for column in ("created_at", "request_id", "model_version", "product_identifier", "product_id"):
        op.create_index(f"ix_predictions_{column}", "predictions", [column])
    op.create_table(
        "feedback",
        sa.Column("id", IDENTIFIER, primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(32), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user", sa.String(64), nullable=False),
        sa.Column("product_identifier", sa.String(256)),
        sa.Column("product_id", sa.String(256)),
        sa.Column("request_id", sa.String(128)),
        sa.Column("prdtypecode", sa.Integer(), nullable=False),
        sa.Column("comment", sa.Text()),
    )
    for column in ("created_at", "product_identifier", "product_id", "request_id"):
        op.create_index(f"ix_feedback_{column}", "feedback", [column])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("predictions")
