"""serving_nodes: the live serving processes of bedrock-runtime

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

from bedrock_local.store.schema import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "serving_nodes",
        sa.Column("node_id", sa.String(128), primary_key=True),
        sa.Column("endpoint", sa.String(255), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("serving_nodes")
