"""Open mic per guild: members in the bot's voice channel may ask aloud with the wake phrase (off by default).

Revision ID: 0002_open_mic
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_open_mic"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("guild_settings") as batch:
        batch.add_column(sa.Column("open_mic", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("guild_settings") as batch:
        batch.drop_column("open_mic")
