"""Where facegate keeps its state on disk, when the configuration does not say.

Only computes paths; never creates directories (no import-time or call-time side
effects). The caller that writes a file creates its parent.
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "facegate"


def default_state_dir() -> Path:
    """The directory for facegate's durable state (audit log, outbox, gallery).

    In order of preference:

    1. ``$STATE_DIRECTORY``: set by systemd when the unit has ``StateDirectory=``.
       systemd joins several directories with ``:``; the first one is used.
    2. ``$XDG_STATE_HOME/facegate`` when ``$XDG_STATE_HOME`` is an absolute path
       (the XDG spec says relative values are invalid and must be ignored).
    3. ``~/.local/state/facegate``.

    Returns:
        An absolute path; it may not exist yet.
    """
    systemd = os.environ.get("STATE_DIRECTORY", "")
    first = systemd.split(":", 1)[0]
    if first:
        return Path(first).absolute()
    xdg = os.environ.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / APP_NAME
    return Path.home() / ".local" / "state" / APP_NAME
