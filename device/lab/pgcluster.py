"""A throwaway PostgreSQL cluster on 127.0.0.1: for the console's tests and the fleet bench.

Debian's ``postgresql`` package provides the server binaries; the cluster lives in a
temporary directory, listens on a free loopback port, trusts local connections and
is removed on exit. As root, the server runs as an unprivileged user (``nobody``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from device.ops.localbroker import free_port

PG_BIN: Final = Path("/usr/lib/postgresql/15/bin")
PG_USER: Final = "nobody"


def pg_missing() -> str | None:
    """Why no PostgreSQL cluster can be started here; None when one can."""
    if not (PG_BIN / "initdb").is_file():
        return f"PostgreSQL 15 not installed ({PG_BIN}/initdb; Debian package postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            return f"no unprivileged user {PG_USER!r} to run initdb as"
    return None


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *argv] if os.geteuid() == 0 else argv


@contextmanager
def postgres_cluster(max_connections: int = 60) -> Iterator[str]:
    """A new PostgreSQL cluster on a free 127.0.0.1 port; yields its base URL (no db)."""
    root = Path(tempfile.mkdtemp(prefix="facegate-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        entry = pwd.getpwnam(PG_USER)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    port = free_port()
    try:
        subprocess.run(_as_owner([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
                                  "--auth=trust", "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True, cwd=root)
        subprocess.run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l",
                                  str(root / "pg.log"), "-w", "-t", "60", "-o",
                                  f"-p {port} -k {root} -c listen_addresses=127.0.0.1 "
                                  f"-c fsync=off -c max_connections={max_connections}",
                                  "start"]),
                       check=True, capture_output=True, cwd=root)
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                  "-w", "stop"]), capture_output=True, check=False, cwd="/")
        shutil.rmtree(root, ignore_errors=True)


def create_database(base_url: str) -> str:
    """A new empty database in the cluster at ``base_url``; its URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{base_url}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{base_url}/{name}"
