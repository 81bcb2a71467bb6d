"""``facegate doctor``: is this unit able to run, and if not, what to do about it.

Each check is a small function that returns :class:`CheckResult` values: a name, a
status (``ok``, ``warn`` or ``fail``), what was found, and for anything that is not
OK a fix in plain words an installer on a ladder can act on. :func:`run_checks`
runs them all against a unit's configuration; ``facegate doctor`` prints one line
per result and exits 1 if any failed.

What is checked: the config file loads; each camera opens and delivers a frame
within a timeout; the Edge TPU is present and its delegate loads (only when a TPU
backend is configured); the configured models exist and match their pinned sha256;
the gallery passes its integrity check; the gallery signing keys load (with ``[sync]``);
the broker accepts a real MQTT CONNECT with
the unit's credentials; the clock is plausible (and NTP-synchronised, where
``timedatectl`` can tell); the state directory has free space and is writable.

Run it as the service would see the unit: ``sudo facegate doctor`` reads the
credentials from ``/etc/facegate/credentials`` as systemd does; a camera the running
service holds open shows up as busy (stop the service first).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device.errors import ConfigError, DeviceError, HardwareError, ModelError

if TYPE_CHECKING:
    from device.camera import SourceConfig
    from device.service.config import FacegateConfig

logger = logging.getLogger(__name__)

#: Where a provisioned unit keeps its configuration and credentials.
UNIT_CONFIG = Path("/etc/facegate/config.toml")
UNIT_CREDENTIALS_DIR = Path("/etc/facegate/credentials")

#: USB ids of the Coral USB Accelerator: before and after libedgetpu loads its firmware.
CORAL_USB_IDS = (("1a6e", "089a"), ("18d1", "9302"))

#: Free space in the state directory below which doctor warns / fails.
DISK_WARN_BYTES = 500 * 1024 * 1024
DISK_FAIL_BYTES = 100 * 1024 * 1024

#: A clock before this year is certainly wrong (a Pi without an RTC battery).
MIN_PLAUSIBLE_YEAR = 2024

#: How far a file in the state directory may be dated ahead of the clock.
CLOCK_SLACK_S = 120.0

#: Where installers find the long explanations (provisioning/README.md in the source).
_README = "/opt/facegate/README.md"


class Status(StrEnum):
    """The verdict of one check."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class CheckResult:
    """One line of the doctor's report.

    Attributes:
        name: What was checked, e.g. ``camera front`` or ``broker mqtt://host:1883``.
        status: ``ok``, ``warn`` or ``fail``.
        message: What was found.
        fix: What to do about it (empty when OK).
    """

    name: str
    status: Status
    message: str
    fix: str = ""

    def line(self) -> str:
        """``OK   camera front: 640x480 frame in 0.1 s`` / ``FAIL … — fix``."""
        text = f"{self.status.value.upper():<4} {self.name}: {self.message}"
        return f"{text} — {self.fix}" if self.fix else text

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status.value, "message": self.message,
                "fix": self.fix}


def first_clause(message: str, prefix: str = "") -> str:
    """The finding of an error message, without the advice after its first ``; ``.

    facegate's errors end with what to check; the doctor prints its own fix, so the
    two would repeat each other. A leading ``prefix`` (e.g. ``model x: ``) is dropped.
    """
    text = message.replace("\n", " ").strip()
    if prefix and text.startswith(prefix):
        text = text[len(prefix):]
    return text.split("; ", 1)[0]


def ok(name: str, message: str) -> CheckResult:
    """An OK result."""
    return CheckResult(name, Status.OK, message)


def warn(name: str, message: str, fix: str) -> CheckResult:
    """A warning: worth fixing, but the unit can run."""
    return CheckResult(name, Status.WARN, message, fix)


def fail(name: str, message: str, fix: str) -> CheckResult:
    """A failure: the unit cannot do its job until it is fixed."""
    return CheckResult(name, Status.FAIL, message, fix)


@dataclass(frozen=True)
class DoctorOptions:
    """How the doctor looks at the unit.

    Attributes:
        config_path: The unit's config file.
        credentials_dir: Where credential names resolve (``$CREDENTIALS_DIRECTORY``
            for the checks); None keeps the environment's.
        camera_timeout_s: How long a camera may take to deliver its first frame.
        broker_timeout_s: How long the broker may take to answer a CONNECT.
        sys_root: sysfs (USB Coral ids), replaceable for tests.
        dev_root: /dev (PCIe Coral nodes), replaceable for tests.
        env: Environment to read (``$CREDENTIALS_DIRECTORY``); default os.environ.
        now: Clock, replaceable for tests.
    """

    config_path: Path = UNIT_CONFIG
    credentials_dir: Path | None = None
    camera_timeout_s: float = 10.0
    broker_timeout_s: float = 5.0
    sys_root: Path = Path("/sys")
    dev_root: Path = Path("/dev")
    env: Mapping[str, str] | None = None
    now: Callable[[], float] = field(default=time.time)

    def environ(self) -> dict[str, str]:
        """The environment the credential look-ups see."""
        env = dict(os.environ if self.env is None else self.env)
        if self.credentials_dir is not None:
            env["CREDENTIALS_DIRECTORY"] = str(self.credentials_dir)
        return env


def default_credentials_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """``$CREDENTIALS_DIRECTORY`` wins (inside the service); else the unit's directory."""
    environ = os.environ if env is None else env
    if environ.get("CREDENTIALS_DIRECTORY"):
        return None
    return UNIT_CREDENTIALS_DIR if UNIT_CREDENTIALS_DIR.is_dir() else None


def run_checks(options: DoctorOptions) -> list[CheckResult]:
    """Every check, in the order an installer would fix things.

    A check that raises unexpectedly becomes a FAIL line naming the exception; it
    never stops the other checks.
    """
    results: list[CheckResult] = []
    config: FacegateConfig | None = None
    config_result, config = check_config(options.config_path)
    results.append(config_result)
    if config is None:
        results += _guarded("clock", lambda: [check_clock(None, options.now)])
        return results
    for camera in config.cameras:
        results += _guarded(f"camera {camera.camera_id}",
                            functools.partial(_camera_checks, camera, options.camera_timeout_s))
    results += _guarded("tpu", lambda: check_tpu(config, options))
    results += _guarded("models", lambda: check_models(config))
    results += _guarded("gallery", lambda: [check_gallery(config)])
    results += _guarded("sync keys", lambda: [check_sync_keys(config, options)])
    results += _guarded("broker", lambda: [check_broker(config, options)])
    results += _guarded("clock", lambda: [check_clock(config.state_dir, options.now)])
    results += _guarded("disk", lambda: [check_disk(config.state_dir)])
    results += _guarded("state dir", lambda: [check_state_dir(config.state_dir)])
    return results


def _camera_checks(camera: SourceConfig, timeout_s: float) -> list[CheckResult]:
    return [check_camera(camera, timeout_s)]


def exit_code(results: Sequence[CheckResult]) -> int:
    """0 when nothing failed (warnings allowed), 1 otherwise."""
    return 1 if any(r.status is Status.FAIL for r in results) else 0


def _guarded(name: str, check: Callable[[], list[CheckResult]]) -> list[CheckResult]:
    try:
        return check()
    except Exception as exc:  # one broken check must not hide the others
        logger.debug("check %s raised", name, exc_info=True)
        return [fail(name, f"the check itself failed: {type(exc).__name__}: {exc}",
                     "report this with the output of `facegate -vv doctor`")]


# ----------------------------------------------------------------------------------
# config


def check_config(path: Path) -> tuple[CheckResult, FacegateConfig | None]:
    """Load the unit's config file.

    Returns:
        The result, and the configuration when it loaded.
    """
    from device.service.config import load_config

    try:
        config, _digest = load_config(path)
    except ConfigError as exc:
        missing = not path.exists()
        fix = (
            "provision the unit (provisioning/provision-unit.sh) or pass --config FILE"
            if missing else
            "correct the keys named above (each key is described in device/service/config.py), "
            "then run doctor again"
        )
        if not missing and not os.access(path, os.R_OK):
            fix = "run doctor with sudo, or as the service user: sudo -u facegate facegate doctor"
        return fail(f"config {path}", str(exc).replace("\n", " "), fix), None
    cams = len(config.cameras)
    return ok(f"config {path}",
              f"unit {config.unit_id}, {cams} camera{'s' if cams != 1 else ''}, detector "
              f"{config.detector.type}, embedder {config.embedder.type}"), config


# ----------------------------------------------------------------------------------
# cameras


def camera_fix(camera: SourceConfig, message: str) -> str:
    """What to check for a camera that failed, by backend and symptom."""
    low = message.lower()
    if "busy" in low or "in use" in low:
        return ("another process holds the camera (the service?): sudo systemctl stop facegate, "
                "run doctor, then sudo systemctl start facegate")
    if camera.type == "v4l2":
        if "permission" in low:
            return ("the user running this is not in group video: sudo usermod -aG video "
                    "facegate (or run doctor with sudo)")
        return ("check the cable (USB, or the ribbon for a CSI camera) / `rpicam-hello "
                "--list-cameras` (libcamera-hello on older images) / `v4l2-ctl --list-devices` "
                "/ the user is in group video")
    if camera.type == "picamera2":
        if "not installed" in low or "import" in low:
            return ("install python3-picamera2 from Raspberry Pi OS (apt) and create the venv "
                    "with --system-site-packages (provision-unit.sh does both)")
        return ("check the ribbon cable (contacts facing the right way, latch closed) and "
                "`rpicam-hello --list-cameras`; the user is in group video")
    if camera.type == "rtsp":
        return ("check the camera is powered and on the network (ping it), the URL and its "
                "credentials (open it in VLC from a laptop on the same network)")
    return "check the path exists and the service user may read it"


def check_camera(camera: SourceConfig, timeout_s: float) -> CheckResult:
    """Open one camera and wait for its first frame.

    The camera is opened on a worker thread so that a stream that never delivers
    cannot hang the doctor; it is closed either way.
    """
    from device.camera import open_source

    name = f"camera {camera.camera_id}"
    if camera.type == "v4l2" and not Path(camera.device).exists():
        return fail(name, f"no {camera.device}", camera_fix(camera, "missing"))
    outcome: dict[str, Any] = {}
    holder: dict[str, Any] = {}

    def work() -> None:
        started = time.monotonic()
        try:
            source = open_source(camera)
            holder["source"] = source
            for frame in source:
                outcome["frame"] = (frame.width, frame.height, time.monotonic() - started)
                break
            else:
                outcome["error"] = "the source ended without a frame"
        except DeviceError as exc:
            outcome["error"] = str(exc)
        except Exception as exc:  # reported as a failed check, with its type
            outcome["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if (opened := holder.get("source")) is not None:
                opened.close()

    worker = threading.Thread(target=work, name=f"doctor-{camera.camera_id}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        if (source := holder.get("source")) is not None:
            source.close()
        return fail(name, f"no frame within {timeout_s:g} s", camera_fix(camera, "timeout"))
    if "frame" in outcome:
        width, height, seconds = outcome["frame"]
        return ok(name, f"{width}x{height} frame in {seconds:.1f} s")
    message = str(outcome.get("error", "no frame"))
    return fail(name, first_clause(message), camera_fix(camera, message))


# ----------------------------------------------------------------------------------
# Edge TPU


@dataclass(frozen=True)
class EdgeTpu:
    """An Edge TPU found on the unit.

    Attributes:
        kind: ``pci`` or ``usb``.
        node: Its device node (``/dev/apex_0``, ``/dev/bus/usb/001/004``).
        label: How to name it in a message.
    """

    kind: str
    node: Path
    label: str


def find_edgetpus(sys_root: Path = Path("/sys"), dev_root: Path = Path("/dev")) -> list[EdgeTpu]:
    """PCIe Corals (``/dev/apex_*``) and USB Corals (by vendor:product in sysfs)."""
    found = [EdgeTpu("pci", node, str(node)) for node in sorted(dev_root.glob("apex_*"))]
    for device in sorted((sys_root / "bus" / "usb" / "devices").glob("*")):
        try:
            ids = ((device / "idVendor").read_text().strip().lower(),
                   (device / "idProduct").read_text().strip().lower())
            bus = int((device / "busnum").read_text())
            dev = int((device / "devnum").read_text())
        except (OSError, ValueError):
            continue
        if ids in CORAL_USB_IDS:
            node = dev_root / "bus" / "usb" / f"{bus:03d}" / f"{dev:03d}"
            found.append(EdgeTpu("usb", node, f"USB {ids[0]}:{ids[1]} at {node}"))
    return found


def tpu_backends(config: FacegateConfig) -> list[tuple[str, str | None]]:
    """``(stage, device selector)`` of every stage configured to run on the Edge TPU."""
    wanted: list[tuple[str, str | None]] = []
    if config.detector.type == "coral-ssd":
        wanted.append(("detector", config.detector.device))
    if config.embedder.type == "edgetpu":
        wanted.append(("embedder", config.embedder.device))
    return wanted


_TPU_ABSENT_FIX = (
    "USB Coral: plug it into a USB 3 (blue) port with a data cable and check `lsusb` shows "
    "1a6e:089a or 18d1:9302; PCIe/M.2 Coral: install the gasket-dkms apex driver and check "
    f"`ls /dev/apex_0` (Pi 5: PCIe set up in config.txt; see {_README})"
)


def check_tpu(config: FacegateConfig, options: DoctorOptions) -> list[CheckResult]:
    """Edge TPU presence, access and delegate load, when a TPU backend is configured."""
    wanted = tpu_backends(config)
    if not wanted:
        return [ok("tpu", f"not used (detector {config.detector.type}, embedder "
                          f"{config.embedder.type})")]
    stages = ", ".join(stage for stage, _ in wanted)
    selector = next((sel for _, sel in wanted if sel), None)
    tpus = find_edgetpus(options.sys_root, options.dev_root)
    if selector:
        tpus = [t for t in tpus if t.kind == selector.split(":")[0]]
    if not tpus:
        where = f" of kind {selector}" if selector else ""
        return [fail("tpu", f"no Edge TPU{where} found (the {stages} is configured to use one): "
                            "no /dev/apex_* and no USB device 1a6e:089a or 18d1:9302",
                     _TPU_ABSENT_FIX)]
    results: list[CheckResult] = []
    labels = "; ".join(t.label for t in tpus)
    denied = [t for t in tpus if t.node.exists() and not os.access(t.node, os.R_OK | os.W_OK)]
    if denied:
        group = "apex" if denied[0].kind == "pci" else "plugdev"
        results.append(fail("tpu", f"found {labels}, but {denied[0].node} is not readable and "
                                   "writable by this user",
                            f"install the udev rule (/etc/udev/rules.d/99-facegate-coral.rules), "
                            f"add the user to group {group}, then replug or reboot"))
    else:
        results.append(ok("tpu", f"found {labels}"))
    results.append(check_delegate(selector))
    return results


def check_delegate(selector: str | None) -> CheckResult:
    """Load the Edge TPU delegate (``libedgetpu.so.1``) the way the runtime does."""
    from device.vision.runtime import load_edgetpu_delegate

    started = time.monotonic()
    try:
        delegate = load_edgetpu_delegate(selector)
    except (HardwareError, ModelError) as exc:
        return fail("tpu delegate", first_clause(str(exc)),
                    "replug the Coral (USB 3 port, data cable), check the udev rule and group, "
                    "and that libedgetpu1-std matches the interpreter; see 'When the Edge TPU "
                    f"delegate fails to load' in {_README}")
    del delegate
    return ok("tpu delegate", f"libedgetpu loaded in {time.monotonic() - started:.1f} s")


# ----------------------------------------------------------------------------------
# models


def configured_models(config: FacegateConfig) -> list[str]:
    """Manifest ids of the models the configuration runs (detector, then embedder)."""
    ids: list[str] = []
    if config.detector.type == "blazeface":
        from device.vision.blazeface import VARIANTS

        ids.append(VARIANTS[config.detector.model].model_id)
    else:
        ids.append(config.detector.model_id)
    ids.append(config.embedder.model)
    return ids


def model_fix(model_id: str, message: str, cache_dir: Path) -> str:
    """What to do about a model that failed verification."""
    low = message.lower()
    if "not been built" in low:
        return f"run: sudo facegate models build --cache-dir {cache_dir}"
    if "pins no sha256" in low:
        return ("the manifest (models/manifest.toml) has no sha256 for it, so the runtime refuses "
                "it; add the hash of a copy checked against a trusted source, or use the CPU "
                "detector (blazeface)")
    if "not downloaded" in low:
        return ("re-run provisioning with --with-coral (add --coral-model-file F for a local "
                "copy; it must match the manifest's git blob id)")
    if "is not installed" in low:
        return "re-run provisioning (it installs the model packages with --no-deps)"
    if "does not match" in low or "but the manifest pins" in low or "git blob id" in low:
        return (f"the file is damaged or not the right model: delete it and re-run provisioning "
                f"(or `facegate models build --cache-dir {cache_dir}` for built models)")
    return f"re-run provisioning; see {_README}"


def check_models(config: FacegateConfig) -> list[CheckResult]:
    """Each configured model exists and matches its pinned sha256."""
    from device.vision import models as model_manifest
    from device.vision.runtime import verified_model_path

    cache_dir = config.model_dir or model_manifest.default_cache_dir()
    results = []
    for model_id in configured_models(config):
        name = f"model {model_id}"
        try:
            path = verified_model_path(model_id, cache_dir=cache_dir)
        except ModelError as exc:
            finding = first_clause(str(exc), f"model {model_id}").lstrip(": ")
            results.append(fail(name, finding, model_fix(model_id, str(exc), cache_dir)))
            continue
        size = path.stat().st_size
        results.append(ok(name, f"{path} ({size / 1e6:.1f} MB), sha256 as pinned"))
    return results


# ----------------------------------------------------------------------------------
# gallery


def check_gallery(config: FacegateConfig) -> CheckResult:
    """The gallery file's integrity, schema and version (read-only)."""
    from device.gallery.integrity import integrity_check

    path = config.gallery_path
    if not path.exists():
        return warn("gallery", f"no gallery at {path} yet; the unit recognises no one",
                    "it arrives with the first signed gallery bundle, or import one with "
                    "`facegate gallery import`")
    report = integrity_check(path, expect_model_id=config.embedder.model)
    if not report.ok:
        return fail("gallery", f"{path}: " + "; ".join(report.problems),
                    "the next signed gallery bundle replaces it; until then restore a good copy "
                    "with `facegate gallery import` (the unit keeps running without matches)")
    return ok("gallery", f"version {report.version} ({report.identities} identities, "
                         f"{report.faces} faces, model {report.model_id}, schema "
                         f"{report.schema_version}) at {path}")


def check_sync_keys(config: FacegateConfig, options: DoctorOptions) -> CheckResult:
    """The public keys gallery bundles must be signed with load (when sync is on)."""
    from device.sync.keys import TrustedKeys

    sync = config.sync
    if sync is None or not sync.enabled:
        return ok("sync keys", "over-the-air gallery updates are off ([sync] absent or disabled)")
    try:
        keys = TrustedKeys.load(sync.trusted_keys, options.environ())
    except ConfigError as exc:
        return fail("sync keys", first_clause(str(exc)),
                    "install the signers' public keys: re-run provisioning with --trusted-keys "
                    f"DIR (they go to {UNIT_CREDENTIALS_DIR}/trusted-keys/); "
                    f"{_credentials_hint(options)}")
    if len(keys) < sync.threshold:
        return fail("sync keys", f"{len(keys)} trusted key(s), but [sync] threshold is "
                                 f"{sync.threshold}: no bundle can ever be accepted",
                    "provision more signers' keys or lower [sync] threshold")
    return ok("sync keys", f"{len(keys)} trusted signing key(s), threshold {sync.threshold}")


# ----------------------------------------------------------------------------------
# broker


@dataclass(frozen=True)
class ConnectOutcome:
    """What one MQTT CONNECT attempt gave.

    Attributes:
        connected: The broker accepted the CONNECT.
        message: What happened, in words.
        fix: What to do when not connected.
    """

    connected: bool
    message: str
    fix: str = ""


def check_broker(config: FacegateConfig, options: DoctorOptions) -> CheckResult:
    """A real MQTT 5 CONNECT with the unit's address, TLS settings and credentials."""
    mqtt_cfg = config.mqtt
    name = f"broker {mqtt_cfg.url}"
    outcome = try_connect(config, options)
    if outcome.connected:
        return ok(name, outcome.message)
    return fail(name, outcome.message, outcome.fix)


def try_connect(config: FacegateConfig, options: DoctorOptions) -> ConnectOutcome:
    """Connect, wait for the CONNACK, disconnect.

    The client id is the service's with ``-doctor`` appended, so the check does not
    take over the running service's session.
    """
    from device.events.client import BrokerLogin, make_client
    from device.events.config import read_secret, resolve_credential

    cfg = config.mqtt
    address = cfg.address
    env = options.environ()
    creds_hint = _credentials_hint(options)
    password = None
    if cfg.username and cfg.password_file:
        try:
            password = read_secret(cfg.password_file, "MQTT password", env)
        except ConfigError as exc:
            return ConnectOutcome(False, f"cannot read the MQTT password: {exc}", creds_hint)
    try:
        keyfile = resolve_credential(cfg.key_file, env) if cfg.key_file else None
        client = make_client(
            BrokerLogin(cfg.url, cfg.username, password, cfg.ca_file, cfg.cert_file, keyfile),
            f"{cfg.effective_client_id}-doctor", name="doctor")
    except (ConfigError, OSError, ValueError) as exc:
        return ConnectOutcome(False, f"cannot load the TLS files: {exc}",
                              "check [mqtt] ca_file/cert_file and the tls-key.pem "
                              f"credential; {creds_hint}")
    client.connect_timeout = options.broker_timeout_s
    try:
        return _connect(client, address.host, address.port, options.broker_timeout_s)
    finally:
        client.disconnect()
        client.loop(timeout=0.05)


def _credentials_hint(options: DoctorOptions) -> str:
    creds = options.credentials_dir
    if creds is not None and creds.is_dir() and not os.access(creds, os.R_OK | os.X_OK):
        return (f"run doctor with sudo so it can read {creds} (systemd reads the credentials "
                "as root for the service)")
    return (f"check the credential files in {creds or UNIT_CREDENTIALS_DIR} and [mqtt] "
            "username/password_file")


def _connect(client: Any, host: str, port: int, timeout_s: float) -> ConnectOutcome:
    url_fix = "check the broker is running and [mqtt] url"
    answer: dict[str, Any] = {}

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any,
                   properties: Any) -> None:
        answer["reason"] = reason

    client.after_connect = on_connect
    started = time.monotonic()
    try:
        client.connect(host, port, keepalive=max(10, int(timeout_s) * 2))
    except ConnectionRefusedError:
        return ConnectOutcome(False, "connection refused", url_fix)
    except socket.gaierror as exc:
        return ConnectOutcome(False, f"cannot resolve {host} ({exc.strerror})",
                              "check [mqtt] url and the unit's DNS (resolvectl status)")
    except TimeoutError:
        return ConnectOutcome(False, f"no answer within {timeout_s:g} s",
                              "check the network and firewall between the unit and the broker, "
                              "and [mqtt] url")
    except ssl.SSLError as exc:
        return ConnectOutcome(False, f"TLS handshake failed ({exc.reason or exc})",
                              "check [mqtt] ca_file matches the broker's certificate, the "
                              "certificate names the host in [mqtt] url, and the clock is right")
    except OSError as exc:
        return ConnectOutcome(False, f"cannot connect ({exc.strerror or exc})", url_fix)
    deadline = started + timeout_s
    while "reason" not in answer and time.monotonic() < deadline:
        if client.loop(timeout=0.1) != 0:
            break
    reason = answer.get("reason")
    if reason is None:
        return ConnectOutcome(False, f"the broker did not answer the CONNECT within "
                                     f"{timeout_s:g} s (or closed the connection)",
                              "check [mqtt] url points at an MQTT broker (TLS port with mqtts://, "
                              "plain port with mqtt://)")
    if reason.is_failure:
        if reason.value in (0x86, 0x87):  # bad user name or password / not authorized
            return ConnectOutcome(False, f"the broker refused the credentials ({reason})",
                                  "check [mqtt] username and the mqtt-password credential "
                                  "(/etc/facegate/credentials/mqtt-password) match the broker's "
                                  "account for this unit")
        return ConnectOutcome(False, f"the broker refused the connection ({reason})",
                              "check the broker's log for this client id")
    return ConnectOutcome(True, f"connected in {time.monotonic() - started:.2f} s")


# ----------------------------------------------------------------------------------
# clock, disk, state directory


def _newest_mtime(root: Path) -> tuple[float, Path] | None:
    newest: tuple[float, Path] | None = None
    for path in _files_near(root):
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue
        if newest is None or mtime > newest[0]:
            newest = (mtime, path)
    return newest


def _files_near(root: Path) -> Iterator[Path]:
    """Files in ``root`` and its direct sub-directories (models/)."""
    try:
        entries = list(root.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.is_file():
            yield entry
        elif entry.is_dir():
            try:
                yield from (p for p in entry.iterdir() if p.is_file())
            except OSError:
                continue


def ntp_synchronised() -> bool | None:
    """``timedatectl``'s NTPSynchronized, or None when it cannot tell (no systemd)."""
    exe = shutil.which("timedatectl")
    if exe is None:
        return None
    try:
        result = subprocess.run([exe, "show", "--property=NTPSynchronized", "--value"],
                                capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = result.stdout.strip()
    if result.returncode != 0 or value not in ("yes", "no"):
        return None
    return value == "yes"


def check_clock(state_dir: Path | None, now: Callable[[], float] = time.time,
                ntp: Callable[[], bool | None] = ntp_synchronised) -> CheckResult:
    """The clock is plausible: not before 2024, not before the newest state file or
    the installed software, and NTP-synchronised where that can be told."""
    import device

    current = now()
    stamp = dt.datetime.fromtimestamp(current, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    fix = ("a Pi has no clock battery: it starts at the last shutdown time until NTP answers; "
           "check the network and `timedatectl timesync-status` (sudo timedatectl set-ntp true)")
    if dt.datetime.fromtimestamp(current, dt.UTC).year < MIN_PLAUSIBLE_YEAR:
        return fail("clock", f"{stamp} is before {MIN_PLAUSIBLE_YEAR}", fix)
    references: list[tuple[float, str]] = []
    installed = Path(device.__file__)
    with contextlib.suppress(OSError):
        references.append((installed.stat().st_mtime, f"the installed facegate ({installed})"))
    if state_dir is not None and (newest := _newest_mtime(state_dir)) is not None:
        references.append((newest[0], str(newest[1])))
    for mtime, what in references:
        if mtime > current + CLOCK_SLACK_S:
            later = dt.datetime.fromtimestamp(mtime, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            return fail("clock", f"{stamp} is earlier than {what}, dated {later}", fix)
    synced = ntp()
    if synced is False:
        return warn("clock", f"{stamp}, plausible, but not synchronised by NTP yet", fix)
    note = "NTP-synchronised" if synced else "NTP status unknown (no timedatectl answer)"
    return ok("clock", f"{stamp}, {note}")


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(state_dir: Path, warn_bytes: int = DISK_WARN_BYTES,
               fail_bytes: int = DISK_FAIL_BYTES) -> CheckResult:
    """Free space where the state directory lives."""
    where = _existing(state_dir)
    free = shutil.disk_usage(where).free
    text = f"{free / 1e6:,.0f} MB free on the file system of {state_dir}"
    fix = ("free space: `sudo journalctl --vacuum-size=100M`, remove old files; the outbox, "
           "audit log and gallery need room to grow")
    if free < fail_bytes:
        return fail("disk", text, fix)
    if free < warn_bytes:
        return warn("disk", text, fix)
    return ok("disk", text)


def check_state_dir(state_dir: Path) -> CheckResult:
    """Create, fsync and delete a file in the state directory."""
    name = f"state dir {state_dir}"
    if not state_dir.is_dir():
        return fail(name, "does not exist",
                    "re-run provisioning (systemd also creates it when the service starts: "
                    "StateDirectory=facegate)")
    user = _user_name()
    try:
        fd, tmp = tempfile.mkstemp(prefix=".doctor-", dir=state_dir)
        try:
            os.write(fd, b"facegate doctor write test\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except PermissionError:
        return fail(name, f"not writable by {user}",
                    "run doctor as the service user (sudo -u facegate facegate doctor) or with "
                    "sudo; the directory belongs to facegate (systemd fixes the owner at start)")
    except OSError as exc:
        return fail(name, f"cannot write: {exc.strerror or exc}",
                    "a read-only file system usually means a failing SD card: check `dmesg`, "
                    "replace the card")
    return ok(name, f"writable by {user} (create, fsync, delete)")


def _user_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, ImportError):
        return f"uid {os.geteuid()}"
