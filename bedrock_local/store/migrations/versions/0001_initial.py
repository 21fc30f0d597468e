"""resources, tags, jobs and meta

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

from bedrock_local.store.schema import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIGPK = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("pk", BIGPK, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("account", sa.String(12), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("arn", sa.String(1011), nullable=False),
        sa.Column("name", sa.String(255)),
        sa.Column("unique_name", sa.String(255)),
        sa.Column("status", sa.String(40)),
        sa.Column("ref_arn", sa.String(1011)),
        sa.Column("ref_account", sa.String(12)),
        sa.Column("origin_arn", sa.String(1011)),
        sa.Column("client_token", sa.String(256)),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.UniqueConstraint("arn", name="uq_resources_arn"),
        sa.UniqueConstraint("account", "region", "kind", "unique_name", name="uq_resources_account_region_kind_unique_name"),
        sa.UniqueConstraint("account", "region", "kind", "client_token", name="uq_resources_account_region_kind_client_token"),
    )
    op.create_index("ix_resources_account_region_kind_created_at_pk", "resources",
                    ["account", "region", "kind", "created_at", "pk"])
    op.create_index("ix_resources_account_region_kind_resource_id", "resources",
                    ["account", "region", "kind", "resource_id"])
    op.create_table(
        "tags",
        sa.Column("resource_pk", BIGPK, sa.ForeignKey("resources.pk", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("pk", BIGPK, primary_key=True, autoincrement=True),
        sa.Column("resource_pk", BIGPK, sa.ForeignKey("resources.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_expires_at", UtcDateTime()),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("stop_requested", sa.Boolean(), nullable=False),
        sa.Column("checkpoint", sa.JSON()),
        sa.Column("progress", sa.JSON()),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.UniqueConstraint("resource_pk", name="uq_jobs_resource_pk"),
    )
    op.create_index("ix_jobs_state_lease_expires_at", "jobs", ["state", "lease_expires_at"])
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("meta")
    op.drop_table("jobs")
    op.drop_table("tags")
    op.drop_table("resources")
