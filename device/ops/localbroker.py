"""Start a private mosquitto broker on loopback: for the demo and for tests.

The demo needs a broker when none is configured, and the tests need real ones.
mosquitto is the broker units talk to in the field (Debian/Raspberry Pi OS package
``mosquitto``), small, and speaks MQTT 5, so the demo and the tests exercise the
same protocol paths as production. The broker listens on 127.0.0.1 only, on a
free port, with its persistence and log in a private directory.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from device.errors import PublishError

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class BrokerTLS:
    """A TLS listener: the broker's certificate and key, and optionally mutual TLS.

    Attributes:
        certfile: Server certificate (PEM); must name 127.0.0.1 (IP SAN).
        keyfile: Its private key (PEM).
        cafile: CA that signed client certificates (and usually the server's).
        require_certificate: Refuse clients without a certificate signed by ``cafile``.
    """

    certfile: Path
    keyfile: Path
    cafile: Path | None = None
    require_certificate: bool = False


@dataclass(frozen=True)
class BrokerUser:
    """A username/password the broker accepts (``allow_anonymous false``)."""

    username: str
    password: str


class LocalBroker:
    """A mosquitto process on 127.0.0.1, started and stopped by its owner.

    ``stop()`` and ``start()`` may be called repeatedly; the port stays the same so
    clients reconnect to a restarted broker, and retained messages survive a restart
    (persistence on).

    Args:
        workdir: Directory for config, persistence and log; a temporary one if None.
        port: Port to listen on; a free one if None.
        users: If given, anonymous clients are refused and only these may connect.
        persistence: Keep retained/queued messages across restarts.
        tls: If given, the listener speaks TLS only (``mqtts://``), with mutual TLS
            when ``tls.require_certificate``.
        extra_config: More mosquitto.conf lines (``acl_file ...``, ``max_connections ...``).
    """

    def __init__(
        self,
        workdir: Path | None = None,
        port: int | None = None,
        users: tuple[BrokerUser, ...] = (),
        persistence: bool = True,
        tls: BrokerTLS | None = None,
        extra_config: tuple[str, ...] = (),
    ) -> None:
        exe = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if exe is None:
            raise PublishError(
                "mosquitto is not installed; install it with `apt-get install mosquitto` "
                "or configure an external broker"
            )
        self._exe = exe
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="facegate-broker-")
            workdir = Path(self._tmp.name)
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.users = users
        self._persistence = persistence
        self.tls = tls
        self._extra_config = extra_config
        if tls is not None and tls.require_certificate and tls.cafile is None:
            raise PublishError("a TLS broker that requires client certificates needs a cafile")
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            # Run as whoever started us: as root, mosquitto would otherwise drop to the
            # `mosquitto` user, which cannot write into a private work directory.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            f"persistence {'true' if self._persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if self.tls is not None:
            lines += [f"certfile {self.tls.certfile}", f"keyfile {self.tls.keyfile}"]
            if self.tls.cafile is not None:
                lines.append(f"cafile {self.tls.cafile}")
            if self.tls.require_certificate:
                lines.append("require_certificate true")
        if self.users:
            pwfile = self.workdir / "passwd"
            pwfile.write_text("")
            for user in self.users:
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(pwfile), user.username, user.password],
                    check=True,
                    capture_output=True,
                )
            pwfile.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        lines += self._extra_config
        (self.workdir / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and return once it accepts TCP connections.

        Raises:
            PublishError: It exited or did not listen within ``timeout`` seconds.
        """
        if self.running:
            return
        self._proc = subprocess.Popen(
            [self._exe, "-c", str(self.workdir / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                raise PublishError(f"mosquitto exited at start: {err.strip()} {log[-500:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    logger.info("local broker listening on %s", self.url)
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise PublishError(f"mosquitto did not listen on {self.url} within {timeout} s")

    @property
    def pid(self) -> int | None:
        """The mosquitto process id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL); a no-op when not running."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def close(self) -> None:
        """Stop the broker and remove its temporary directory; idempotent."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
