"""Fixtures of the console's integration tests: a throwaway PostgreSQL cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.console import pg_missing, postgres_cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[str]:
    reason = pg_missing()
    if reason:
        pytest.skip(reason)
    with postgres_cluster() as base:
        yield base
