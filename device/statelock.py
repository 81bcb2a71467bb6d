"""Who writes a state directory: an ``flock`` on ``<state dir>/facegate.lock``.

The outbox and the audit log have one writer each: the running service. ``facegate
run`` holds an exclusive lock on the state directory's lock file for its whole life
(the file holds its pid and what it is); a command that would write those files
takes the same lock for the time it writes, and refuses when it cannot. The kernel
releases the lock when the holder exits, however it exits (SIGKILL included), so a
stale file never blocks anyone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import Self

from device.errors import DeviceError

logger = logging.getLogger(__name__)

LOCK_FILENAME = "facegate.lock"
#: What ``facegate run`` writes into the lock file as its role.
SERVICE_HOLDER = "facegate run"


class StateDirBusyError(DeviceError):
    """Another process holds the state directory.

    Attributes:
        pid: The holder's pid, when it could be read.
        holder: What the holder said it is (``run``, ``gallery delete``), or "".
    """

    def __init__(self, message: str, pid: int | None, holder: str) -> None:
        super().__init__(message)
        self.pid = pid
        self.holder = holder


def _read_holder(fd: int) -> tuple[int | None, str]:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
        if text:
            return int(text[0]), " ".join(text[1:])
    return None, ""


class StateLock:
    """An exclusive lock on one state directory (a context manager).

    Args:
        state_dir: The directory (created, mode 0700, if missing).
        holder: What the holder is, for the refusal message of others.
    """

    def __init__(self, state_dir: Path, holder: str) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LOCK_FILENAME
        self.holder = holder
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock now or fail.

        Raises:
            StateDirBusyError: Another process holds it (with its pid and role).
            DeviceError: The lock file cannot be opened.
        """
        if self._fd is not None:
            return
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise DeviceError(f"cannot open the state lock {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid, holder = _read_holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise DeviceError(f"cannot lock {self.path}: {exc}") from exc
            who = f"{holder or 'another process'} (pid {pid if pid is not None else '?'})"
            raise StateDirBusyError(f"the state directory {self.state_dir} is in use by {who}",
                               pid, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.holder}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let go (idempotent); the file stays, empty of meaning once unlocked."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
