"""Alembic environment: the engine comes from ``open_metadata`` (config.attributes)."""

from alembic import context

from gateway.metadata.models import Base

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
