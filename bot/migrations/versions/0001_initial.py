"""The schema of the bot before it had migrations: per-guild voice presets and listening channels.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "guild_settings",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("voice_preset", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("guild_id"),
    )
    op.create_table(
        "listening_channels",
        sa.Column("channel_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("channel_id"),
    )
    op.create_index("ix_listening_channels_guild_id", "listening_channels", ["guild_id"])


def downgrade() -> None:
    op.drop_index("ix_listening_channels_guild_id", table_name="listening_channels")
    op.drop_table("listening_channels")
    op.drop_table("guild_settings")
