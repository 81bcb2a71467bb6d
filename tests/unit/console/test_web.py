"""People and access: roles, CSRF on every form, lockout, access log, privacy of pages."""

from __future__ import annotations

import json
import re
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
from device.sync.keys import load_public_key
from tests.support.console import (
    PAGES,
    STREAMS,
    assert_no_imagery,
    assert_store_clean,
    audit_head_payload,
    gallery_payload,
    health_payload,
    match_payload,
    served_paths,
    track_end_payload,
)

PASSWORD = "correct horse battery"


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
    # Every page the app serves is scanned: the list is the app's own routes.
    assert served_paths(app) == set(PAGES) | set(STREAMS)
    with TestClient(app) as client:
        _login(client, "adam")
        page = client.get("/review").text
        client.post(f"/review/{match['event_id']}",
                    data={"csrf": _csrf(page), "verdict": "confirmed", "note": "ok"})
        bodies = {path: client.get(path) for path in PAGES}
        filtered = client.get("/events", params={"unit": "unit-1", "camera": "front"})
    for path, response in [*bodies.items(), ("/events?unit", filtered)]:
        assert response.status_code == 200, path
        assert_no_imagery(response.content, path)
    assert match["event_id"] in bodies["/events"].text  # the scan saw real rows
    assert_store_clean(store)


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


def test_the_store_and_the_session_secret_are_private_files(tmp_path: Path) -> None:
    import stat

    from device.console.serve import session_secret

    config = ConsoleConfig.model_validate(
        {"store": {"url": f"sqlite:///{tmp_path / 'console.sqlite3'}"}})
    store = open_store(config.store.url)
    try:
        add_user(store, "rita", "reviewer", PASSWORD, tmp_path / "keys")  # writes the WAL
        secret = session_secret(config)
        assert session_secret(config) == secret and len(secret) >= 32  # a replica reads it
        files = [tmp_path / "console.sqlite3", tmp_path / "console.sqlite3-wal",
                 tmp_path / "console.sqlite3-shm",
                 tmp_path / "console-session.secret",
                 tmp_path / "keys" / "reviewer-rita.key"]
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        store.close()
