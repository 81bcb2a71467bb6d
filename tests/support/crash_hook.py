"""A checkpoint hook that SIGKILLs a whole ``facegate run`` child at a named step.

Loaded by :func:`device.checkpoint.checkpoint_from_env` when a test starts the child
with ``FACEGATE_CHECKPOINT_HOOK=tests.support.crash_hook:kill``:

* ``FACEGATE_KILL_AT``: the checkpoint name (``sink.audit``, ``sink.outbox``, ...);
  the process kills itself the first time it reaches it.
* ``FACEGATE_KILL_AFTER_DELIVERY``: an outbox file; before the kill, wait (up to
  30 s) until it is empty, so the event was acknowledged by the broker first.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import threading
from pathlib import Path


def _outbox_depth(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        (depth,) = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(depth)
    finally:
        conn.close()


def kill(name: str) -> None:
    """The hook: SIGKILL this process at ``$FACEGATE_KILL_AT``."""
    if name != os.environ.get("FACEGATE_KILL_AT"):
        return
    outbox = os.environ.get("FACEGATE_KILL_AFTER_DELIVERY")
    if outbox:
        pause = threading.Event()
        for _ in range(300):
            if _outbox_depth(Path(outbox)) == 0:
                break
            pause.wait(0.1)
    sys.stdout.write(f"crash hook: SIGKILL at checkpoint {name}\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
