"""sd_notify over a real AF_UNIX datagram socket, and silence without systemd."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.events.notify import Notifier


@pytest.fixture()
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_messages_arrive(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    with Notifier(env={"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.enabled
        assert notifier.ready("watching 2 cameras")
        assert sock.recv(4096) == b"READY=1\nSTATUS=watching 2 cameras"
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert notifier.status("broker unreachable\nretrying")
        assert sock.recv(4096) == b"STATUS=broker unreachable retrying"
        assert notifier.stopping()
        assert sock.recv(4096) == b"STOPPING=1"
    assert not notifier.enabled
    assert not notifier.watchdog()
    notifier.close()


def test_abstract_socket_name() -> None:
    name = f"facegate-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        with Notifier(f"@{name}") as notifier:
            assert notifier.watchdog()
            assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_no_systemd_is_a_silent_no_op() -> None:
    notifier = Notifier(env={})
    assert not notifier.enabled
    assert not notifier.ready()
    assert notifier.watchdog_interval() is None
    notifier.close()


def test_unreachable_socket_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Notifier(str(tmp_path / "gone.sock")) as notifier:
        assert not notifier.watchdog()
        assert not notifier.watchdog()
    assert caplog.text.count("cannot notify systemd") == 1


def test_watchdog_interval() -> None:
    pid = str(os.getpid())
    assert (
        Notifier(env={"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": pid}).watchdog_interval() == 10
    )
    assert Notifier(env={"WATCHDOG_USEC": "20000000"}).watchdog_interval() == 10
    assert (
        Notifier(env={"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}).watchdog_interval() is None
    )
    assert Notifier(env={"WATCHDOG_USEC": "soon"}).watchdog_interval() is None
