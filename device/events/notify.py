"""systemd notifications (``sd_notify``) with the standard library only.

With ``Type=notify`` and ``WatchdogSec=`` in the unit, the service says ``READY=1``
once it runs, ``WATCHDOG=1`` from its frame loop, ``STATUS=...`` for
``systemctl status`` and ``STOPPING=1`` on shutdown. Outside systemd
(``$NOTIFY_SOCKET`` unset) every call is a no-op that returns False.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping
from types import TracebackType

logger = logging.getLogger(__name__)


def _address(value: str) -> str | bytes:
    """``$NOTIFY_SOCKET`` as a socket address; ``@name`` is Linux's abstract namespace."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """Sends state lines to systemd's notification socket.

    Args:
        socket_path: Socket to notify; ``$NOTIFY_SOCKET`` when None. Empty or unset
            disables notifications.
        env: Environment to read (default os.environ), for ``$NOTIFY_SOCKET``,
            ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``.
    """

    def __init__(self, socket_path: str | None = None, env: Mapping[str, str] | None = None):
        environ = os.environ if env is None else env
        path = environ.get("NOTIFY_SOCKET", "") if socket_path is None else socket_path
        self._address: str | bytes | None = _address(path) if path else None
        self._env = environ
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._closed = False
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when a notification socket is configured."""
        return self._address is not None and not self._closed

    def watchdog_interval(self) -> float | None:
        """Seconds between required ``WATCHDOG=1`` pings (half of ``WatchdogSec=``).

        None when systemd's watchdog is not enabled for this process.
        """
        usec = self._env.get("WATCHDOG_USEC")
        pid = self._env.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            value = int(usec)
        except ValueError:
            logger.warning("ignoring malformed WATCHDOG_USEC=%r", usec)
            return None
        return value / 2e6 if value > 0 else None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``KEY=value`` lines) in one datagram; True if sent.

        A failure to send is logged (once) and reported as False, never raised: a
        missing notification must not stop the service.
        """
        if self._address is None or not fields:
            return False
        message = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace")
        with self._lock:
            if self._closed:
                return False
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.sendto(message, self._address)
            except OSError as exc:
                if not self._warned:
                    logger.warning("cannot notify systemd at %r: %s", self._address, exc)
                    self._warned = True
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (and a status line)."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is alive."""
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """``STATUS=text``: shown by ``systemctl status``."""
        return self.notify(f"STATUS={text}")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1`` (and a status line)."""
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        """Close the socket; idempotent. Later calls are no-ops."""
        with self._lock:
            self._closed = True
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
