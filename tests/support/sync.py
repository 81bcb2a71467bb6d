"""Helpers for the gallery sync tests: a seeded world of keys, galleries and bundles,
a state-topic watcher, a local HTTP server, and a child process to SIGKILL.

Run as ``python -m tests.support.sync MODE ...`` from the repository root:

* ``apply UNIT_DB BUNDLE_DIR KILL_AT``: recover, then apply the bundle with a
  checkpoint hook that SIGKILLs the process at the KILL_AT-th checkpoint (0-based);
  with KILL_AT = -1 it prints every checkpoint name, one per line, and exits 0.
* ``recover UNIT_DB KILL_AT``: the same for :meth:`GallerySync.recover` alone.
* ``serve``: a kill server. Each stdin line is a JSON command ``{"unit", "bundle",
  "at", "recover_at", "reapply"}``; it forks a child that applies the bundle and is
  SIGKILLed at checkpoint ``at`` (and optionally one that recovers and is killed at
  ``recover_at``), then recovers, inspects and optionally re-applies in the server
  process, and answers with one JSON line. Forking from a single-threaded server
  that has imported everything once keeps 50+ kills fast.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from device.gallery.store import GalleryStore
from device.sync.apply import GallerySync, SyncPolicy
from device.sync.bundle import BuiltBundle, build_bundle
from device.sync.keys import TrustedKeys
from device.sync.layout import GalleryLayout
from device.sync.state import GalleryState
from tests.support.gallery import DIM, MODEL, T0, FaceMaker, enroll

REPO = Path(__file__).resolve().parents[2]
UNIT = "unit-7"
#: The unit's clock during tests: an hour after the bundles were built.
NOW = T0 + 3600


def signing_key(seed: int) -> Ed25519PrivateKey:
    """A deterministic Ed25519 key."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"key-%d" % seed).digest())


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gallery_content(db: Path) -> tuple[int, str]:
    """``(version, sha256 of its export's content lines)``: what a gallery *holds*."""
    out = db.parent / f".content-{os.getpid()}-{threading.get_ident()}.jsonl"
    with GalleryStore(db) as store:
        version = store.metadata().version
        report = store.export(out, overwrite=True)
    out.unlink()
    return version, report.content_sha256


def payload_content_sha(bundle: Path) -> str:
    """The content sha256 in a full bundle's payload header."""
    with (bundle / "payload").open("rb") as fh:
        return str(json.loads(fh.readline())["content_sha256"])


@dataclass
class World:
    """A central gallery, three signing keys and a unit, all under one directory.

    The central gallery holds ``people`` identities; :meth:`edit` changes it
    (removes one, adds one) so successive bundles differ.
    """

    root: Path
    people: int = 6
    faces: int = 3
    seed: int = 11
    model: str = MODEL
    dim: int = DIM
    keys: tuple[Ed25519PrivateKey, ...] = field(init=False)
    central: Path = field(init=False)
    unit_db: Path = field(init=False)
    states: list[GalleryState] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keys = tuple(signing_key(i) for i in range(3))
        self.central = self.root / "central" / "gallery.db"
        self.unit_db = self.root / "unit" / "gallery.db"
        self.maker = FaceMaker(self.seed, dim=self.dim, model_id=self.model)
        self.edits = 0
        with GalleryStore(self.central, model_id=self.model, dim=self.dim, create=True,
                          clock=lambda: T0) as store:
            for i in range(self.people):
                enroll(store, self.maker, f"Person {i}", n=self.faces)

    def edit(self) -> None:
        """Remove the first identity and enroll a new one."""
        self.edits += 1
        with GalleryStore(self.central, clock=lambda: T0) as store:
            first = sorted(i.id for i in store.list_identities())[0]
            store.delete_identity(first)
            enroll(store, self.maker, f"New {self.edits}", n=self.faces)

    def bundle(self, version: int, *, name: str | None = None, keys: tuple[int, ...] = (0,),
               gallery: Path | None = None, **kw: Any) -> BuiltBundle:
        out = self.root / "bundles" / (name or f"v{version}")
        return build_bundle(gallery or self.central, out, version=version,
                            keys=[self.keys[i] for i in keys], clock=lambda: T0, **kw)

    def trusted(self, *indices: int) -> TrustedKeys:
        return TrustedKeys.of(*(self.keys[i].public_key() for i in (indices or (0,))))

    def sync(self, *, trusted: tuple[int, ...] = (0,), now: float = NOW,
             on_state: Callable[[GalleryState], None] | None = None,
             **policy: Any) -> GallerySync:
        fields: dict[str, Any] = {"unit_id": UNIT, "model_id": MODEL, "dim": DIM}
        fields.update(policy)

        def record(state: GalleryState) -> None:
            self.states.append(state)
            if on_state is not None:
                on_state(state)

        return GallerySync(self.unit_db, self.trusted(*trusted), SyncPolicy(**fields),
                           clock=lambda: now, on_state=record)

    @property
    def layout(self) -> GalleryLayout:
        return GalleryLayout(self.unit_db)

    def snapshot(self) -> tuple[int, int, str]:
        """``(stored version floor, live version, sha256 of the live file's bytes)``."""
        info = self.layout.live_info()
        assert info is not None
        return self.layout.read_record().floor, info.version, file_sha256(info.path)


# ------------------------------------------------------------------ state watcher


class StateWatcher:
    """Subscribes to one unit's retained gallery state topic on a real broker."""

    def __init__(self, url: str, unit: str = UNIT) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.topic = f"facegate/{unit}/gallery/state"
        self.payloads: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{unit}",
                                   protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *_: c.subscribe(self.topic, qos=1)
        self._client.connect(host, int(port))
        self._client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.payloads.append(json.loads(msg.payload))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool],
                 timeout: float = 10.0) -> dict[str, Any]:
        """The first payload matching ``predicate``; fails the test after ``timeout``."""
        def found() -> dict[str, Any] | None:
            return next((p for p in self.payloads if predicate(p)), None)

        with self._cond:
            self._cond.wait_for(lambda: found() is not None, timeout)
            hit = found()
        assert hit is not None, f"no matching state on {self.topic}; got {self.payloads}"
        return hit

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# --------------------------------------------------------------------- HTTP server


@dataclass
class Served:
    """What the test HTTP server serves and what it saw."""

    data: bytes
    cut_after: int | None = None          # first response stops after this many bytes
    extra: int = 0                        # bytes appended beyond ``data`` (endless data)
    lie_length: int | None = None         # Content-Length to announce
    honour_range: bool = True
    ranges: list[str | None] = field(default_factory=list)
    sent: int = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    served: Served

    def do_GET(self) -> None:
        s = self.served
        rng = self.headers.get("Range")
        s.ranges.append(rng)
        start = 0
        if rng and s.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
        body = s.data[start:] + b"\0" * s.extra
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(s.data) - 1}/{len(s.data)}")
        length = s.lie_length if s.lie_length is not None else len(body)
        if s.extra == 0 or s.lie_length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        if s.cut_after is not None:
            body, s.cut_after = body[:s.cut_after], None
            self.close_connection = True
        for i in range(0, len(body), 4096):
            try:
                self.wfile.write(body[i:i + 4096])
            except (BrokenPipeError, ConnectionResetError):
                return
            s.sent += len(body[i:i + 4096])

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def http_server(served: Served) -> Iterator[str]:
    """Serve ``served`` on 127.0.0.1; yields the payload URL (plain HTTP)."""
    handler = type("Handler", (_Handler,), {"served": served})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/gallery/payload"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# ------------------------------------------------------------------ child process


def run_child(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.support.sync", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _killer(kill_at: int) -> Callable[[str], None]:
    count = 0

    def checkpoint(name: str) -> None:
        nonlocal count
        if kill_at == -1:
            print(name, flush=True)
        elif count == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        count += 1

    return checkpoint


def _child_sync(unit_db: str, kill_at: int) -> GallerySync:
    return GallerySync(Path(unit_db), TrustedKeys.of(signing_key(0).public_key()),
                       SyncPolicy(unit_id=UNIT, model_id=MODEL, dim=DIM),
                       clock=lambda: NOW, checkpoint=_killer(kill_at))


def _forked(run: Callable[[], object]) -> int:
    """Run ``run`` in a forked child; its wait status (negative: killed by that signal)."""
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # the child: never return into the caller's stack
        code = 0
        try:
            run()
        except BaseException:  # report any failure as an exit status
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _kill_point(cmd: dict[str, Any]) -> dict[str, Any]:
    """Apply with a kill at ``at`` (and recovery with a kill at ``recover_at``), then
    recover in this process (a fresh start for the files), check and re-apply."""
    unit_db, bundle = cmd["unit"], Path(cmd["bundle"])
    out: dict[str, Any] = {"at": cmd["at"]}
    out["apply_status"] = _forked(lambda: _child_sync(unit_db, cmd["at"]).apply_dir(bundle))
    if cmd.get("recover_at") is not None:
        out["recover_status"] = _forked(lambda: _child_sync(unit_db, cmd["recover_at"]).recover())
    sync = _child_sync(unit_db, -2)
    sync.recover()
    layout = GalleryLayout(Path(unit_db))
    out["live"] = list(gallery_content(Path(unit_db)))
    out["floor"] = layout.read_record().floor
    out["versions"] = sorted(p.name for p in layout.versions.iterdir())
    out["switch_link"] = layout.switch_link.is_symlink() or layout.switch_link.exists()
    if cmd.get("reapply"):
        out["reapply"] = sync.apply_dir(bundle).outcome
        out["after"] = list(gallery_content(Path(unit_db)))
        out["after_floor"] = layout.read_record().floor
    return out


def serve() -> int:
    """Answer one JSON command per stdin line with one JSON line (imports paid once)."""
    for line in sys.stdin:
        print(json.dumps(_kill_point(json.loads(line))), flush=True)
    return 0


def main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "serve":
        return serve()
    if mode == "apply":
        sync = _child_sync(argv[1], int(argv[3]))
        sync.recover()
        result = sync.apply_dir(Path(argv[2]))
        if int(argv[3]) >= 0:
            print(json.dumps(result.to_json()), flush=True)
        return 0 if result.ok else 1
    if mode == "recover":
        _child_sync(argv[1], int(argv[2])).recover()
        return 0
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
