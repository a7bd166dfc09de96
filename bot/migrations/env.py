"""Alembic environment: migrations run on the connection that `bot.migrations` passes in."""

from alembic import context

from bot.store import _Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=_Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
