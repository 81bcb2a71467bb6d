"""Crash safety: SIGKILL the apply at every checkpoint; after recovery the gallery is
exactly the old version or the new one, and the stored version matches it.

The apply is instrumented with named checkpoints before every step that changes the
disk (each payload chunk written and fsynced, the candidate built, checked, fsynced
and renamed, the symlink made and renamed, the state file written …). For each
checkpoint *i* a process runs the apply and SIGKILLs itself at *i*; start-up
recovery then runs in another process, the invariant is checked, and the bundle is
applied again to show the unit is never stuck. The kills run in forked children of
a kill server (``tests.support.sync serve``) that imported everything once.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.sync import (
    REPO,
    World,
    gallery_content,
    payload_content_sha,
    run_child,
)

SERVERS = 2


@dataclass(frozen=True)
class Scenario:
    """A unit at version 1 (``template``) and a bundle to version 2."""

    template: Path
    bundle: Path
    old: list[Any]
    new: list[Any]
    points: tuple[str, ...]


def scenario(root: Path, *, delta: bool, people: int, chunk_size: int) -> Scenario:
    world = World(root, people=people)
    v1 = world.bundle(1, chunk_size=chunk_size)
    assert world.sync().apply_dir(v1.directory).outcome == "ok"
    world.edit()
    world.edit()
    v2 = world.bundle(2, chunk_size=chunk_size, delta_from=v1.directory if delta else None)
    full_v2 = world.bundle(2, name="full-v2", chunk_size=chunk_size)
    old = list(gallery_content(world.unit_db))
    assert old == [1, payload_content_sha(v1.directory)]
    new = [2, payload_content_sha(full_v2.directory)]
    template = root / "template"
    shutil.copytree(world.unit_db.parent, template, symlinks=True)
    probe = root / "probe"  # list the checkpoints of one whole apply, on a copy
    shutil.copytree(template, probe, symlinks=True)
    listing = run_child("apply", str(probe / "gallery.db"), str(v2.directory), "-1")
    assert listing.returncode == 0, listing.stderr
    shutil.rmtree(probe)
    return Scenario(template, v2.directory, old, new, tuple(listing.stdout.split()))


class KillServers:
    """A few kill servers; commands are spread over them and answered in order."""

    def __init__(self, n: int) -> None:
        self.procs = [subprocess.Popen([sys.executable, "-m", "tests.support.sync",
                                        "serve"], cwd=REPO, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True) for _ in range(n)]

    def run(self, commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        batches = [commands[i::len(self.procs)] for i in range(len(self.procs))]
        for proc, batch in zip(self.procs, batches, strict=True):
            assert proc.stdin is not None
            proc.stdin.write("".join(json.dumps(c) + "\n" for c in batch))
            proc.stdin.flush()
        answers: dict[int, dict[str, Any]] = {}
        for proc, batch in zip(self.procs, batches, strict=True):
            assert proc.stdout is not None
            for command in batch:
                line = proc.stdout.readline()
                assert line, f"kill server died at {command}"
                answers[id(command)] = json.loads(line)
        return [answers[id(c)] for c in commands]

    def close(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(30)
            assert proc.stdout is not None
            proc.stdout.close()


@pytest.fixture()
def servers() -> Iterator[KillServers]:
    s = KillServers(SERVERS)
    yield s
    s.close()


def kill_commands(sc: Scenario, work: Path, indices: Sequence[int], *,
                  recover_at: int | None = None, reapply: bool = True) -> list[dict[str, Any]]:
    out = []
    for i in indices:
        unit = work / f"kill-{i}-{recover_at}"
        shutil.copytree(sc.template, unit, symlinks=True)
        out.append({"unit": str(unit / "gallery.db"), "bundle": str(sc.bundle), "at": i,
                    "recover_at": recover_at, "reapply": reapply})
    return out


def check(sc: Scenario, answer: dict[str, Any]) -> str:
    where = (answer["at"], sc.points[answer["at"]])
    assert answer["apply_status"] == -signal.SIGKILL, (where, answer)
    assert answer["live"] in (sc.old, sc.new), (where, answer)
    version = answer["live"][0]
    assert answer["floor"] == version, (where, answer)           # stored version matches
    assert answer["versions"] == [f"v{version}"], (where, answer)  # nothing half-built left
    assert not answer["switch_link"], where
    if "reapply" in answer:                                       # and never stuck
        assert answer["reapply"] == "ok" if version == 1 else "current", (where, answer)
        assert (answer["after"], answer["after_floor"]) == (sc.new, 2), (where, answer)
    return "new" if answer["live"] == sc.new else "old"


def expected(sc: Scenario) -> list[str]:
    """Old up to and including the kill before the symlink's rename; new after it."""
    switch = sc.points.index("switch.rename")
    return ["old"] * (switch + 1) + ["new"] * (len(sc.points) - switch - 1)


def test_sigkill_at_every_checkpoint_of_a_full_apply(tmp_path: Path,
                                                     servers: KillServers) -> None:
    sc = scenario(tmp_path / "s", delta=False, people=8, chunk_size=1024)
    assert len(sc.points) >= 50, sc.points
    assert len(set(sc.points)) == len(sc.points)
    for name in ("fetch.write[0]", "fetch.fsync[0]", "fetch.rename", "build.import",
                 "build.check", "build.fsync_db", "build.rename", "switch.symlink",
                 "switch.rename", "switch.fsync_dir", "state.rename", "old.remove",
                 "staging.remove"):
        assert name in sc.points, name
    answers = servers.run(kill_commands(sc, tmp_path / "work", range(len(sc.points))))
    assert [check(sc, a) for a in answers] == expected(sc)


@pytest.mark.slow
@pytest.mark.parametrize("delta", [False, True], ids=["full", "delta"])
def test_sigkill_at_every_checkpoint_of_a_large_apply(tmp_path: Path, servers: KillServers,
                                                      delta: bool) -> None:
    sc = scenario(tmp_path / "s", delta=delta, people=40, chunk_size=1024)
    if delta:
        assert "delta.export" in sc.points and "delta.materialize" in sc.points
    answers = servers.run(kill_commands(sc, tmp_path / "work", range(len(sc.points))))
    assert [check(sc, a) for a in answers] == expected(sc)


def test_sigkill_during_recovery_after_a_torn_apply(tmp_path: Path,
                                                    servers: KillServers) -> None:
    """Recovery itself is killed at each of its steps, then runs again to completion."""
    sc = scenario(tmp_path / "s", delta=False, people=3, chunk_size=4096)
    commands = []
    for kill in ("build.fsync_versions", "switch.fsync_dir", "state.fsync"):
        for j in range(8):
            commands += kill_commands(sc, tmp_path / f"work-{kill}", [sc.points.index(kill)],
                                      recover_at=j, reapply=j % 2 == 0)
    answers = servers.run(commands)
    for answer in answers:
        assert answer["recover_status"] in (0, -signal.SIGKILL), answer
        check(sc, answer)
    killed = [a for a in answers if a["recover_status"] == -signal.SIGKILL]
    assert len(killed) >= 12, "recovery of a torn apply has disk steps to kill"
