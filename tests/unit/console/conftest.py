"""Store fixture: a SQLite file or a database in the session's PostgreSQL cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.console import create_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'console.sqlite3'}"
    base: str = request.getfixturevalue("pg_cluster")
    return create_database(base)
