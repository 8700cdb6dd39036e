"""Alembic migrations of the master's schema (`ttp-master migrate`)."""
