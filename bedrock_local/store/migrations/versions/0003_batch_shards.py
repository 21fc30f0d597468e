"""batch_shards: record ranges of a batch inference job that any worker may claim

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

from bedrock_local.store.schema import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BIGPK = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "batch_shards",
        sa.Column("pk", BIGPK, primary_key=True, autoincrement=True),
        sa.Column("job_pk", BIGPK, sa.ForeignKey("jobs.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("first", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("start", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("halt", sa.Boolean(), nullable=False),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_expires_at", UtcDateTime()),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("checkpoint", sa.JSON()),
        sa.Column("fault", sa.JSON()),
        sa.Column("done_by", sa.String(128)),
        sa.UniqueConstraint("job_pk", "number", name="uq_batch_shards_job_pk_number"),
    )
    op.create_index("ix_batch_shards_state_lease_expires_at", "batch_shards", ["state", "lease_expires_at"])


def downgrade() -> None:
    op.drop_table("batch_shards")
