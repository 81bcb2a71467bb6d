"""Alembic migrations of the console's store (run by :func:`device.console.store.migrate`)."""
