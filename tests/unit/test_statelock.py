"""The state directory lock: one holder at a time, named in the refusal, freed on exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from device.statelock import SERVICE_HOLDER, StateDirBusyError, StateLock


def test_a_second_holder_is_refused_with_the_first_ones_pid_and_role(tmp_path: Path) -> None:
    with StateLock(tmp_path / "state", SERVICE_HOLDER):
        with pytest.raises(StateDirBusyError, match=f"facegate run \\(pid {os.getpid()}\\)"
                           ) as caught:
            StateLock(tmp_path / "state", "facegate gallery delete").acquire()
        assert (caught.value.pid, caught.value.holder) == (os.getpid(), SERVICE_HOLDER)
    with StateLock(tmp_path / "state", "facegate gallery delete"):  # released: free again
        pass
    assert (tmp_path / "state" / "facegate.lock").stat().st_mode & 0o777 == 0o600


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from device.statelock import StateLock; "
         f"StateLock(Path({str(tmp_path)!r}), 'facegate run').acquire(); "
         "print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[2])
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    with pytest.raises(StateDirBusyError, match=f"pid {child.pid}"):
        StateLock(tmp_path, "test").acquire()
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    with StateLock(tmp_path, "test"):
        pass
