"""Progress bars: every command over many inputs draws one on a terminal, none when piped.

The CLI runs as a real subprocess whose stderr is a pseudo-terminal (``os.openpty``),
so tqdm sees what an operator's shell gives it.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from device.vision.models import default_cache_dir

PHOTOS = ("img1.jpg", "img2.jpg", "img4.jpg", "img5.jpg")


def _facegate(args: list[str], *, tty_stderr: bool, env: dict[str, str]
              ) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``facegate ARGS`` with stderr a pty or a pipe."""
    command = [sys.executable, "-c", "from device.cli import main; main()", *args]
    if not tty_stderr:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300,
                              check=False)
        return done.returncode, done.stdout, done.stderr
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([master], [], [], 300)
        if not ready:
            proc.kill()
            raise AssertionError("facegate produced nothing for 300 s")
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    return proc.wait(timeout=60), out, b"".join(chunks).decode(errors="replace")


@pytest.fixture()
def world(datasets: Path, tmp_path: Path) -> tuple[list[str], Path, dict[str, str]]:
    """Four photos, a two-person enrolment tree, and an environment with its own state."""
    photos = [str(datasets / "deepface" / name) for name in PHOTOS]
    people = tmp_path / "people"
    for n, photo in enumerate(photos[:2]):
        (people / f"person-{n}").mkdir(parents=True)
        (people / f"person-{n}" / Path(photo).name).symlink_to(photo)
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path / "state"),
           "FACEGATE_MODEL_DIR": str(default_cache_dir())}  # the built models, not state/
    return photos, people, env


def _bar(stderr: str, desc: str) -> bool:
    return f"{desc}:" in stderr and "%|" in stderr


def test_detect_identify_and_enroll_dir_draw_a_bar_on_a_terminal(
        world: tuple[list[str], Path, dict[str, str]], tmp_path: Path) -> None:
    photos, people, env = world
    db = str(tmp_path / "gallery.db")
    code, _, err = _facegate(["detect", "--threads", "1", *photos], tty_stderr=True, env=env)
    assert code == 0 and _bar(err, "detecting"), err
    code, _, err = _facegate(["gallery", "enroll-dir", str(people), "--db", db, "--threads",
                              "1"], tty_stderr=True, env=env)
    assert code == 0 and _bar(err, "examining"), err
    code, out, err = _facegate(["identify", "--threads", "1", "--db", db, *photos],
                               tty_stderr=True, env=env)
    assert code == 0 and _bar(err, "identifying"), err
    assert "%|" not in out  # the bar stays on stderr
    assert out.count("MATCH person-") >= 2


def test_no_bar_when_stderr_is_a_pipe_or_json_is_piped(
        world: tuple[list[str], Path, dict[str, str]], tmp_path: Path) -> None:
    photos, people, env = world
    code, _, err = _facegate(["detect", "--threads", "1", *photos], tty_stderr=False, env=env)
    assert code == 0 and "%|" not in err and "detecting" not in err, err
    code, out, err = _facegate(["detect", "--json", "--threads", "1", *photos],
                               tty_stderr=True, env=env)
    assert code == 0 and "%|" not in err, err
    assert len(out.splitlines()) == len(photos)
    code, _, err = _facegate(["gallery", "enroll-dir", str(people), "--dry-run", "--json",
                              "--db", str(tmp_path / "g.db"), "--threads", "1"],
                             tty_stderr=True, env=env)
    assert code == 0 and "%|" not in err, err
