"""The console in a real browser (Debian's chromium through chromium-driver).

Log in, see a unit appear when it connects to a real mosquitto, see its match arrive
live, record a verdict, and see the unit's acknowledgement. The unit here is a small
paho client publishing schema-valid retained state and events; it checks the verdict's
Ed25519 signature with the reviewer's public key before it acknowledges.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from device.events.client import BrokerLogin, make_client
from device.events.review import parse_verdict
from device.events.schema import format_timestamp
from device.ops.localbroker import free_port
from device.sync.keys import load_public_key
from tests.support.console import audit_head_payload, gallery_payload, health_payload, match_payload

REPO = Path(__file__).resolve().parents[3]
CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")
SCREENS = Path("/work/tools/screens")
PASSWORD = "a long test password"
UNIT = "unit-7"


def _facegate() -> list[str]:
    return [sys.executable, "-c", "from device.cli import main; main()"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture()
def console(broker, tmp_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    config = tmp_path / "console.toml"
    config.write_text(f'[web]\nport = {port}\n\n[broker]\nurl = "{broker.url}"\n'
                      'client_id = "console-browser-test"\n\n'
                      '[store]\nurl = "sqlite:///console.sqlite3"\n\n[keys]\ndir = "keys"\n')
    added = subprocess.run([*_facegate(), "console", "user", "add", "--config", str(config),
                            "rita", "--role", "reviewer", "--password-stdin"],
                           input=PASSWORD + "\n", capture_output=True, text=True, env=_env(),
                           check=False, timeout=60)
    assert added.returncode == 0, added.stderr
    assert "signing key id" in added.stdout
    log = (tmp_path / "console.log").open("w")
    server = subprocess.Popen([*_facegate(), "-v", "console", "serve", "--config", str(config)],
                              stdout=log, stderr=subprocess.STDOUT, env=_env())
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/login", timeout=2).read()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"console did not start: {(tmp_path / 'console.log').read_text()}")
            time.sleep(0.2)
    try:
        yield base, tmp_path / "keys" / "reviewer-rita.pub"
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture()
def browser(tmp_path: Path):  # type: ignore[no-untyped-def]
    if not (CHROMIUM.exists() and DRIVER.exists()):
        pytest.skip("chromium / chromium-driver not installed (setup-dev.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1500,900", f"--user-data-dir={tmp_path / 'chrome'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


class FakeUnitClient:
    """A small real MQTT unit: retained state, one match, and acks of verdicts."""

    def __init__(self, url: str, public_key: Path) -> None:
        self.key = load_public_key(public_key)
        self.verdicts: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.client = make_client(BrokerLogin(url), f"facegate-{UNIT}", name="test unit")
        self.client.will_set(f"facegate/{UNIT}/status", b"offline", qos=1, retain=True)
        self.ready = threading.Event()
        self.client.after_connect = self._connected
        self.client.route(f"facegate/{UNIT}/review", self._verdict)

    def _connected(self, client: Any, *_: Any) -> None:
        client.subscribe(f"facegate/{UNIT}/review", qos=1)
        self.ready.set()

    def start(self) -> None:
        self.client.start(30)
        assert self.ready.wait(20)
        for topic, payload in (
                ("health", health_payload(UNIT)),
                ("gallery/state", gallery_payload(UNIT, identities=500,
                                                  refusal="untrusted_key")),
                ("audit/head", audit_head_payload(UNIT, seq=41))):
            self.publish(f"facegate/{UNIT}/{topic}", json.dumps(payload).encode(), retain=True)
        self.publish(f"facegate/{UNIT}/status", b"online", retain=True)

    def publish(self, topic: str, data: bytes, retain: bool = False) -> None:
        self.client.publish(topic, data, qos=1, retain=retain).wait_for_publish(10)

    def _verdict(self, _client: Any, _userdata: Any, message: Any) -> None:
        try:
            verdict = json.loads(message.payload)
            signed = parse_verdict(json.dumps(verdict).encode()).signed_bytes()
            self.key.verify(base64.b64decode(verdict["signature"]), signed)
        except Exception as exc:  # the test reports it; the network thread goes on
            self.errors.append(repr(exc))
            return
        self.verdicts.append(verdict)
        ack = {"schema": "facegate/review-ack/1", "unit": UNIT, "event_id": verdict["event_id"],
               "nonce": verdict["nonce"], "outcome": "recorded", "reason": None,
               "at": format_timestamp(time.time()), "audit_seq": 42,
               "audit_head": "7f" * 32}
        self.client.publish(f"facegate/{UNIT}/review/ack", json.dumps(ack).encode(), qos=1,
                            retain=True)


def _wait_text(driver: Any, css: str, text: str, timeout: float = 30.0) -> Any:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            element = driver.find_element("css selector", css)
            if text in element.text:
                return element
        except (NoSuchElementException, StaleElementReferenceException):
            pass
        time.sleep(0.2)
    pytest.fail(f"{css!r} never showed {text!r}; page: {driver.page_source[:3000]}")


def _shot(driver: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / "screens" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    driver.save_screenshot(str(path))
    if SCREENS.parent.is_dir() and os.access(SCREENS.parent, os.W_OK):
        SCREENS.mkdir(exist_ok=True)
        shutil.copy(path, SCREENS / path.name)


def test_log_in_watch_a_unit_review_its_match(console, browser, broker, tmp_path: Path  # type: ignore[no-untyped-def]
                                              ) -> None:
    base, public_key = console
    driver = browser
    driver.get(f"{base}/login")
    _shot(driver, tmp_path, "1-login")
    driver.find_element("id", "username").send_keys("rita")
    driver.find_element("id", "password").send_keys(PASSWORD)
    driver.find_element("id", "login").click()
    _wait_text(driver, "#who", "rita (reviewer)")
    _wait_text(driver, "#fleet", "No unit has published yet")

    unit = FakeUnitClient(broker.url, public_key)
    unit.start()
    try:
        row = _wait_text(driver, f"#unit-{UNIT}", "online")  # live, no reload
        _wait_text(driver, f"#unit-{UNIT}", "refused (untrusted key)")
        assert "v3 (500 identities)" in row.text and "seq 41" in row.text
        assert "camera back not running" in row.text
        _shot(driver, tmp_path, "2-fleet")

        driver.get(f"{base}/events")
        match = match_payload(UNIT, "front", "p-0042", label="Grace", similarity=0.8312)
        unit.publish(f"facegate/{UNIT}/front/match", json.dumps(match).encode())
        event = _wait_text(driver, f"#event-{match['event_id']}", "p-0042")
        assert "0.8312" in event.text and "Grace" in event.text and "2e-06" in event.text
        _shot(driver, tmp_path, "3-events")

        driver.get(f"{base}/review")
        queued = _wait_text(driver, f"#queue-{match['event_id']}", "p-0042")
        from selenium.webdriver.support.ui import Select

        Select(queued.find_element("name", "verdict")).select_by_value("not_this_person")
        queued.find_element("name", "note").send_keys("guard: a visitor, not Grace")
        _shot(driver, tmp_path, "4-review-queue")
        queued.find_element("css selector", "button[type=submit]").click()
        deadline = time.monotonic() + 20
        while not (unit.verdicts or unit.errors) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert unit.errors == [] and unit.verdicts, "the unit received no verdict"
        ack = _wait_text(driver, f"#verdict-{match['event_id']} .ack", "recorded in audit log")
        assert "seq 42" in ack.text
        _shot(driver, tmp_path, "5-review-acked")
        [verdict] = unit.verdicts
        assert verdict["verdict"] == "not_this_person" and verdict["event_id"] == match["event_id"]
        assert "visitor" not in json.dumps(verdict) and "Grace" not in json.dumps(verdict)

        driver.get(f"{base}/accuracy")
        _wait_text(driver, f"#acc-{UNIT}", "1")
        _shot(driver, tmp_path, "6-accuracy")

    finally:
        unit.client.stop()
