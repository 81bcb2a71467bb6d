"""People and access: roles, CSRF on every form, lockout, access log, privacy of pages."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from device.console.auth import Lockout, add_user
from device.console.config import ConsoleConfig, WebConfig
from device.console.ingest import handle
from device.console.serve import check_exposure
from device.console.store import Store, open_store
from device.console.web import WebSettings, build_app
from device.errors import ConfigError
from device.events.review import parse_verdict
from device.privacy import check_payload
from device.sync.keys import load_public_key
from tests.support.console import (
    audit_head_payload,
    gallery_payload,
    health_payload,
    match_payload,
    track_end_payload,
)

PASSWORD = "correct horse battery"
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF87a", b"GIF89a", b"RIFF", b"BM6",
               b"\x00\x00\x00\x0cjP")


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int, bool]] = []

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self.sent.append((topic, payload, qos, retain))


@pytest.fixture()
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = open_store(f"sqlite:///{tmp_path / 'console.sqlite3'}")
    keys = {}
    for name, role in (("vera", "viewer"), ("rita", "reviewer"), ("adam", "admin")):
        keys[name] = add_user(store, name, role, PASSWORD, tmp_path / "keys")
    sink = Sink()
    app = build_app(store, WebSettings(session_secret="s" * 40, lockout=Lockout(10, 600)), sink)
    yield store, app, sink, keys
    store.close()


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def _login(client: TestClient, user: str, password: str = PASSWORD) -> Any:
    token = _csrf(client.get("/login").text)
    return client.post("/login", data={"csrf": token, "username": user, "password": password},
                       follow_redirects=False)


def _seed(store: Store) -> dict[str, Any]:
    handle(store, "facegate/unit-1/status", b"online")
    handle(store, "facegate/unit-1/health", json.dumps(health_payload()).encode())
    handle(store, "facegate/unit-1/gallery/state",
           json.dumps(gallery_payload(refusal="bad_signature")).encode())
    handle(store, "facegate/unit-1/audit/head", json.dumps(audit_head_payload()).encode())
    match = match_payload()
    handle(store, "facegate/unit-1/front/match", json.dumps(match).encode())
    handle(store, "facegate/unit-1/front/track_end",
           json.dumps(track_end_payload(match)).encode())
    return match


def test_pages_need_a_login(setup) -> None:  # type: ignore[no-untyped-def]
    _store, app, _sink, _keys = setup
    with TestClient(app) as client:
        for path in ("/fleet", "/events", "/review", "/accuracy", "/access", "/live"):
            response = client.get(path, follow_redirects=False)
            assert response.status_code == 303 and response.headers["location"] == "/login"


def test_viewer_cannot_record_a_verdict(setup) -> None:  # type: ignore[no-untyped-def]
    store, app, sink, _keys = setup
    match = _seed(store)
    with TestClient(app) as client:
        assert _login(client, "vera").status_code == 303
        page = client.get("/review").text
        assert "(reviewers only)" in page
        response = client.post(f"/review/{match['event_id']}",
                               data={"csrf": _csrf(page), "verdict": "confirmed", "note": ""})
        assert response.status_code == 403
        assert client.get("/access").status_code == 403
    assert sink.sent == [] and store.reviewed() == []


def test_reviewer_records_a_signed_verdict(setup) -> None:  # type: ignore[no-untyped-def]
    store, app, sink, keys = setup
    match = _seed(store)
    with TestClient(app) as client:
        _login(client, "rita")
        page = client.get("/review").text
        response = client.post(f"/review/{match['event_id']}", follow_redirects=False, data={
            "csrf": _csrf(page), "verdict": "not_this_person", "note": "guard says: visitor"})
        assert response.status_code == 303
    [(topic, payload, qos, retain)] = sink.sent
    assert (topic, qos, retain) == ("facegate/unit-1/review", 1, False)
    verdict = json.loads(payload)
    assert set(verdict) == {"schema", "unit", "event_id", "verdict", "reviewer", "issued_at",
                            "nonce", "signature"}
    assert verdict["reviewer"] == keys["rita"].keyid and verdict["verdict"] == "not_this_person"
    assert "visitor" not in payload.decode() and "Ada" not in payload.decode()
    import base64

    load_public_key(keys["rita"].public).verify(base64.b64decode(verdict["signature"]),
                                                parse_verdict(json.dumps(verdict).encode()).signed_bytes())
    assert store.review_queue() == []
    [row] = store.reviewed()
    assert row["note"] == "guard says: visitor" and row["published"]


def test_a_form_without_a_valid_csrf_token_is_refused(setup) -> None:  # type: ignore[no-untyped-def]
    store, app, sink, _keys = setup
    match = _seed(store)
    with TestClient(app) as client:
        bad_login = client.post("/login", data={"username": "rita", "password": PASSWORD})
        assert bad_login.status_code == 403
        _login(client, "rita")
        for token in (None, "", "forged-token"):
            data = {"verdict": "confirmed", "note": ""}
            if token is not None:
                data["csrf"] = token
            assert client.post(f"/review/{match['event_id']}", data=data).status_code == 403
        assert client.post("/logout", data={}).status_code == 403
    assert sink.sent == []


def test_ten_wrong_passwords_lock_the_account(setup) -> None:  # type: ignore[no-untyped-def]
    store, app, _sink, _keys = setup
    with TestClient(app) as client:
        for _ in range(9):
            assert _login(client, "rita", "wrong password!").status_code == 401
        assert _login(client, "rita").status_code == 303  # nine do not lock; success resets
        client.cookies.clear()
        for _ in range(10):
            assert _login(client, "rita", "wrong password!").status_code == 401
        locked = _login(client, "rita")
        assert locked.status_code == 401 and "locked" in locked.text
    user = store.user("rita")
    assert user is not None and user.locked_until is not None
    assert any(e["path"] == "/login" and e["status"] == 401 for e in store.access_entries())


def test_every_page_and_the_store_hold_no_image_nor_embedding(setup) -> None:  # type: ignore[no-untyped-def]
    store, app, _sink, _keys = setup
    match = _seed(store)
    with TestClient(app) as client:
        _login(client, "adam")
        page = client.get("/review").text
        client.post(f"/review/{match['event_id']}",
                    data={"csrf": _csrf(page), "verdict": "confirmed", "note": "ok"})
        bodies = {path: client.get(path).content for path in (
            "/login", "/fleet", "/events", "/review", "/accuracy", "/access",
            "/static/live.js", "/static/console.css")}
    for path, body in bodies.items():
        assert_no_imagery(body, path)
    for table, row in store.dump():
        # An argon2 password hash is base64 by its format; it is the one such value.
        values = [v for v in row if not (isinstance(v, str) and v.startswith("$argon2id$"))]
        check_payload([v for v in values if not isinstance(v, str) or len(v) <= 512],
                      where=f"console table {table}")
        for value in row:
            if isinstance(value, str | bytes):
                assert_no_imagery(value.encode() if isinstance(value, str) else value, table)
    path = Path(str(store.engine.url.database))
    raw = path.read_bytes()
    assert not any(magic in raw for magic in IMAGE_MAGIC[:4])
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for column in [r[1] for r in db.execute(f'PRAGMA table_info("{table}")')]:
                blobs = db.execute(f'SELECT count(*) FROM "{table}" '
                                   f"WHERE typeof(\"{column}\") = 'blob'").fetchone()[0]
                assert blobs == 0, f"{table}.{column} holds binary values"


def assert_no_imagery(body: bytes, where: str) -> None:
    """No raster image magic, no data: URI, no <img>, no long base64 or number lists."""
    for magic in IMAGE_MAGIC:
        assert magic not in body, f"{where} holds image magic bytes {magic!r}"
    text = body.decode("utf-8")
    assert "data:image" not in text and "<img" not in text.lower(), where
    assert not re.search(r"[A-Za-z0-9+/=]{160,}", text), f"{where} holds a base64-like blob"
    numbers = re.findall(r"-?\d+\.\d{3,}", text)
    assert not re.search(r"(?:-?\d+\.\d+\s*,\s*){15,}", text), f"{where} holds a number list"
    assert len(numbers) < 500, where


def test_off_loopback_needs_tls_or_a_proxy(tmp_path: Path) -> None:
    exposed = ConsoleConfig(web=WebConfig(host="0.0.0.0"))
    with pytest.raises(ConfigError, match="without TLS"):
        check_exposure(exposed, behind_proxy=False)
    check_exposure(exposed, behind_proxy=True)
    check_exposure(ConsoleConfig(web=WebConfig(host="0.0.0.0", tls_cert=tmp_path / "c.pem",
                                               tls_key=tmp_path / "k.pem")), behind_proxy=False)
    check_exposure(ConsoleConfig(web=WebConfig(host="127.0.0.1")), behind_proxy=False)
    with pytest.raises(ConfigError, match="go together"):
        check_exposure(ConsoleConfig(web=WebConfig(tls_cert=tmp_path / "c.pem")), False)


def test_unknown_config_keys_are_refused(tmp_path: Path) -> None:
    from device.console.config import load_config

    path = tmp_path / "console.toml"
    path.write_text('[web]\nport = 8080\nbogus = 1\n')
    with pytest.raises(ConfigError, match="bogus"):
        load_config(path)
