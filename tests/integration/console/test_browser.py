"""The console and a real unit in a real browser (Debian's chromium through chromium-driver).

Log in, see a unit appear when it connects to a real mosquitto, see its match arrive
live, record a verdict, see the unit's acknowledgement, and see the unit's audit log
verify with the review record in it. The unit is the real recognition service
(BlazeFace, dlib ResNet, a SQLite gallery of the clip's two people enrolled from
their reference photos, an image camera per person looping that person's photo, and a
camera whose file is missing), its ``[review]`` trusting the key of one reviewer
account of the console and not another's.

Also checked on this path: a verdict by an untrusted reviewer account and a replay of
a captured verdict are refused by the unit and in its audit log; every page the
console serves and every file it writes hold no image and none of the embeddings the
unit computed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from device.audit import read_records
from device.config import validate_mapping
from device.console.store import open_store
from device.ops.localbroker import LocalBroker, free_port
from device.service.config import FacegateConfig
from device.service.pipeline import RecognitionService, build_detector, build_embedder
from device.vision.blazeface import BlazeFaceDetector
from tests.support.console import PAGES, STREAMS, assert_no_imagery, assert_store_clean
from tests.support.events import Collector
from tests.support.service import (
    ENROLL,
    THRESHOLD,
    THRESHOLD_FMR,
    RecordingEmbedder,
    enroll_clip_people,
    files_containing,
    needles,
    require_embedder_template,
)

REPO = Path(__file__).resolve().parents[3]
CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")
SCREENS = Path("/work/tools/screens")
PASSWORD = "a long test password"
UNIT = "unit-7"
#: camera id -> the enrolled person whose reference photo it loops.
CAMERAS = {"door": "lin-manuel-miranda", "hall": "alex-lacamoire"}


def _facegate(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI of this checkout in a subprocess."""
    return subprocess.run([sys.executable, "-c", "from device.cli import main; main()", *args],
                          input=stdin, capture_output=True, text=True, check=False,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)


@dataclass
class Console:
    base: str
    root: Path
    store_path: Path
    keys: Path


@pytest.fixture()
def console(broker: LocalBroker, tmp_path: Path) -> Iterator[Console]:
    root = tmp_path / "console"
    root.mkdir()
    port = free_port()
    config = root / "console.toml"
    config.write_text(f'[web]\nport = {port}\n\n[broker]\nurl = "{broker.url}"\n'
                      'client_id = "console-browser-test"\n\n'
                      '[store]\nurl = "sqlite:///console.sqlite3"\n\n[keys]\ndir = "keys"\n')
    for name, role in (("rita", "reviewer"), ("mallory", "reviewer"), ("adam", "admin")):
        added = _facegate("console", "user", "add", "--config", str(config), name, "--role",
                          role, "--password-stdin", stdin=PASSWORD + "\n")
        assert added.returncode == 0, added.stderr
        assert "signing key id" in added.stdout
    log = (root / "console.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-c", "from device.cli import main; main()", "-v", "console", "serve",
         "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/login", timeout=2).read()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"console did not start: {(root / 'console.log').read_text()}")
            time.sleep(0.2)
    try:
        yield Console(base, root, root / "console.sqlite3", root / "keys")
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


@dataclass
class UnitSetup:
    config: FacegateConfig
    embedder: RecordingEmbedder


@pytest.fixture()
def unit_setup(datasets: Path, broker: LocalBroker, console: Console,
               tmp_path: Path) -> Iterator[UnitSetup]:
    """A unit's configuration and gallery; rita's review key is trusted, mallory's is not."""
    require_embedder_template()
    root = tmp_path / "unit"
    trusted = root / "review-keys"
    trusted.mkdir(parents=True)
    shutil.copy(console.keys / "reviewer-rita.pub", trusted / "rita.pub")
    gallery = root / "gallery.db"
    cameras: list[dict[str, Any]] = [
        {"type": "image", "camera_id": camera, "path": str(datasets / ENROLL / f"{person}.png"),
         "loop": True, "fps": 2} for camera, person in CAMERAS.items()]
    cameras.append({"type": "video", "camera_id": "back", "path": str(root / "missing.mp4")})
    config = validate_mapping({
        "unit_id": UNIT, "state_dir": str(root / "state"), "cameras": cameras,
        "gallery": {"path": str(gallery), "threshold": THRESHOLD, "threshold_fmr": THRESHOLD_FMR},
        "health": {"interval_s": 2},
        "mqtt": {"url": broker.url, "reconnect_min_s": 1, "reconnect_max_s": 2},
        "review": {"trusted_keys": str(trusted)},
    }, FacegateConfig, "browser test unit")
    detector = BlazeFaceDetector()
    try:
        with build_embedder(config) as enroll_embedder:
            enroll_clip_people(datasets, gallery, detector, enroll_embedder)
    finally:
        detector.close()
    embedder = RecordingEmbedder(build_embedder(config))
    yield UnitSetup(config, embedder)


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


def _wait_all(driver: Any, css: str, *texts: str, timeout: float = 30.0) -> str:
    """The element's text once one read of it holds every one of ``texts``.

    Live updates swap elements out, so the text is read afresh each time rather than
    from an element found earlier (which may be stale by then).
    """
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = _text(driver, css)
        if all(text in seen for text in texts):
            return seen
        time.sleep(0.2)
    pytest.fail(f"{css!r} never showed all of {texts!r} at once; last: {seen!r}")


def _text(driver: Any, css: str) -> str:
    """The element's text now; empty while the page swaps it."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return str(driver.find_element("css selector", css).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _shot(driver: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / "screens" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    driver.save_screenshot(str(path))
    if SCREENS.parent.is_dir() and os.access(SCREENS.parent, os.W_OK):
        SCREENS.mkdir(exist_ok=True)
        shutil.copy(path, SCREENS / path.name)


def _log_in(driver: Any, base: str, user: str) -> None:
    driver.get(f"{base}/login")
    driver.find_element("id", "username").send_keys(user)
    driver.find_element("id", "password").send_keys(PASSWORD)
    driver.find_element("id", "login").click()
    _wait_text(driver, "#who", f"{user} (")


def _log_out(driver: Any) -> None:
    driver.find_element("css selector", "nav form button[type=submit]").click()
    _wait_text(driver, "h1", "Log in")


def _record(driver: Any, base: str, event_id: str, verdict: str, note: str) -> None:
    """Fill in and send the review form of one queued match."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import Select

    driver.get(f"{base}/review")
    for _ in range(20):
        queued = _wait_text(driver, f"#queue-{event_id}", "Record")
        try:
            # The note first: while a field of the form has the focus the page does not
            # refresh itself, so the choice below is not swapped out before it is sent.
            # A refresh between finding the form and focusing it swaps the element out
            # from under us: find it again.
            field = queued.find_element("name", "note")
            field.clear()
            field.send_keys(note)
        except StaleElementReferenceException:
            continue
        break
    else:
        pytest.fail(f"the review form of {event_id} was swapped out 20 times in a row")
    Select(queued.find_element("name", "verdict")).select_by_value(verdict)
    queued.find_element("css selector", "button[type=submit]").click()


def _records(path: Path, kind: str) -> list[dict[str, object]]:
    return [r.payload_obj() for r in read_records(path)[1] if r.kind == kind]


def _fetch(base: str, path: str, cookie: str, stream: bool = False) -> bytes:
    """A page's body as the logged-in browser gets it; of a stream, its first chunk."""
    request = urllib.request.Request(f"{base}{path}", headers={"Cookie": cookie})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200, path
        return bytes(response.read1(4096) if stream else response.read())


def test_a_real_unit_in_the_console_from_match_to_audited_verdict(
    console: Console, browser: Any, broker: LocalBroker, unit_setup: UnitSetup, tmp_path: Path
) -> None:
    driver, base = browser, console.base
    driver.get(f"{base}/login")
    _shot(driver, tmp_path, "1-login")
    _log_in(driver, base, "rita")
    _wait_text(driver, "#who", "rita (reviewer)")
    _wait_text(driver, "#fleet", "No unit has published yet")

    config = unit_setup.config
    wire = Collector(broker.host, broker.port, [f"facegate/{UNIT}/#"])
    assert wire.wait_subscribed()
    service = RecognitionService(config, detector=build_detector(config),
                                 embedder=unit_setup.embedder)
    try:
        with service:
            assert wire.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/match")])
                                 >= len(CAMERAS), 90), "the unit published no match"
            matches = {m.json()["camera"]: m.json() for m in wire.messages
                       if m.topic.endswith("/match")}
            lin, alex = matches["door"], matches["hall"]
            assert (lin["identity_id"], alex["identity_id"]) == (CAMERAS["door"],
                                                                 CAMERAS["hall"])

            # Fleet: the unit appeared live, with what it really publishes.
            _wait_all(driver, f"#unit-{UNIT}", "online", "camera back not running", "v1", "seq ")
            assert wait_until(lambda: "never" not in _text(driver, f"#unit-{UNIT}"), 30), \
                "no last event on the fleet page"
            _shot(driver, tmp_path, "2-fleet")

            driver.get(f"{base}/events")
            _wait_all(driver, f"#event-{lin['event_id']}", "lin-manuel-miranda",
                      "Lin-Manuel Miranda", "1.0000", f"{lin['false_match_rate']:.2g}")
            _wait_text(driver, f"#event-{alex['event_id']}", "alex-lacamoire")
            _shot(driver, tmp_path, "3-events")

            # A trusted reviewer's verdict: recorded in the unit's chain, acknowledged.
            driver.get(f"{base}/review")
            _wait_text(driver, f"#queue-{lin['event_id']}", "lin-manuel-miranda")
            _wait_text(driver, f"#queue-{alex['event_id']}", "alex-lacamoire")
            _shot(driver, tmp_path, "4-review-queue")
            _record(driver, base, lin["event_id"], "not_this_person",
                    "guard at the door: a visitor, not him")
            _wait_text(driver, f"#verdict-{lin['event_id']} .ack", "recorded in audit log")
            (review,) = _records(config.audit_path, "review")
            assert review["event_id"] == lin["event_id"]
            assert review["verdict"] == "not_this_person"
            _wait_all(driver, f"#verdict-{lin['event_id']} .ack", "recorded in audit log",
                      f"seq {service_seq(config.audit_path, 'review')}")
            [sent] = [m for m in wire.messages if m.topic == f"facegate/{UNIT}/review"]
            assert "visitor" not in sent.payload.decode()
            assert "Lin-Manuel" not in sent.payload.decode()

            # The same signed verdict captured off the wire and sent again: refused.
            wire.client.publish(f"facegate/{UNIT}/review", sent.payload, qos=1
                                ).wait_for_publish(10)
            assert wait_until(lambda: [r["reason"] for r in
                                       _records(config.audit_path, "review_refused")]
                              == ["replayed"], 20), "the replay was not refused"

            # An account whose key the unit does not trust: refused, shown, audited.
            _log_out(driver)
            _log_in(driver, base, "mallory")
            _record(driver, base, alex["event_id"], "cannot_tell", "no guard on site")
            _wait_all(driver, f"#verdict-{alex['event_id']} .ack", "refused", "untrusted key")
            # the replay hid nothing
            _wait_all(driver, f"#verdict-{lin['event_id']} .ack", "recorded in audit log")
            # Refused, so the match waits for a verdict the unit will take.
            _wait_text(driver, f"#queue-{alex['event_id']}", "alex-lacamoire")
            _shot(driver, tmp_path, "5-review-acked")
            reasons = [r["reason"] for r in _records(config.audit_path, "review_refused")]
            assert reasons == ["replayed", "untrusted_key"]
            assert len(_records(config.audit_path, "review")) == 1

            driver.get(f"{base}/accuracy")
            _wait_text(driver, f"#acc-{UNIT}", "1")
            _shot(driver, tmp_path, "6-accuracy")

            _log_out(driver)
            _log_in(driver, base, "adam")
            driver.get(f"{base}/access")
            _wait_text(driver, "main", "mallory")
            _shot(driver, tmp_path, "7-access-log")
            cookie = "facegate_console=" + driver.get_cookie("facegate_console")["value"]
            service.request_stop("test over")
    finally:
        wire.close()
    assert not [i for i in wire.invalid if not i[0].endswith("/review")], wire.invalid

    # The unit's audit log verifies with the review and both refusals in the chain.
    verified = _facegate("audit", "verify", "--audit-log", str(config.audit_path))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    shown = _facegate("audit", "show", "--audit-log", str(config.audit_path), "--last", "100")
    assert shown.returncode == 0, shown.stderr
    assert " review " in shown.stdout and lin["event_id"] in shown.stdout
    assert shown.stdout.count("review_refused") == 2, shown.stdout

    # Nothing the console serves or stores holds an image or an embedding of the unit.
    vectors = unit_setup.embedder.vectors
    assert vectors, "the unit computed no embedding"
    patterns = needles(vectors)
    bodies = {path: _fetch(base, path, cookie) for path in PAGES}
    bodies |= {path: _fetch(base, f"{path}?v=stale", cookie, stream=True) for path in STREAMS}
    for path, body in bodies.items():
        assert_no_imagery(body, path)
        assert not [p for p in patterns if p in body], f"{path} holds an embedding"
    assert lin["event_id"].encode() in bodies["/events"]
    store = open_store(f"sqlite:///{console.store_path}")
    try:
        assert_store_clean(store)
    finally:
        store.close()
    written = [p for p in console.root.iterdir() if p.is_file()]
    assert console.store_path in written
    assert files_containing(console.root, patterns) == {}


def service_seq(audit: Path, kind: str) -> int:
    """``seq`` of the newest audit record of ``kind``."""
    return max(r.seq for r in read_records(audit)[1] if r.kind == kind)


def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())
