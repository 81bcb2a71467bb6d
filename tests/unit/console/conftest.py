"""Store fixtures: a SQLite file and a real PostgreSQL cluster (skipped when absent)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.console import create_database, pg_missing, postgres_cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[str]:
    reason = pg_missing()
    if reason:
        pytest.skip(reason)
    with postgres_cluster() as base:
        yield base


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'console.sqlite3'}"
    base: str = request.getfixturevalue("pg_cluster")
    return create_database(base)
