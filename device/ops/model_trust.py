"""What a ``url`` model's file must be before provisioning takes it: its trusted identity.

A model fetched at provisioning (the Coral detector) is trusted through what the manifest
records for it: a sha256 pin, or the git blob id that the public repository it comes from
records for the file at a given commit (``git_blob``, ``git_commit``), or both. An
installer may add a sha256 of their own (``--coral-sha256``); it never replaces the
manifest's identity, it is checked as well. A file is taken only when it matches every
identity there is; then its sha256 is what provisioning records as the installer pin.

Only the standard library and :mod:`device.vision.models` (itself standard library only)
are imported, so ``provision-unit.sh`` can run the check with the system ``python3``
before the unit's virtual environment exists::

    PYTHONPATH=REPO python3 -m device.ops.model_trust check MODEL [--sha256 H] [--file F]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from device.errors import DeviceError, ModelError
from device.vision import models as model_manifest

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelIdentity:
    """What a model file's bytes must hash to.

    Attributes:
        model_id: Manifest id.
        sha256: Required sha256 (the manifest's pin or the installer's), or ``""``.
        git_blob: Required git blob id (the manifest's), or ``""``.
        origin: Where the blob id comes from (``repo at commit …``), for messages.
    """

    model_id: str
    sha256: str
    git_blob: str = ""
    origin: str = ""

    def describe(self) -> str:
        """One line naming every identity the file must match."""
        parts = []
        if self.git_blob:
            parts.append(f"git blob {self.git_blob} ({self.origin})")
        if self.sha256:
            parts.append(f"sha256 {self.sha256}")
        return f"{self.model_id}: " + " and ".join(parts)

    def check(self, data: bytes, source: str) -> str:
        """Refuse ``data`` unless it matches every identity; return its sha256.

        Args:
            data: The file's bytes.
            source: Where they came from (a path or URL), named in the error.

        Raises:
            ModelError: The bytes match neither or only some of the identities.
        """
        actual = hashlib.sha256(data).hexdigest()
        if self.git_blob:
            blob = model_manifest.git_blob_id_of(data)
            if blob != self.git_blob:
                raise ModelError(
                    f"model {self.model_id}: {source} ({len(data)} bytes) has git blob id "
                    f"{blob}, but the manifest records {self.git_blob} for it "
                    f"({self.origin}); refusing it (truncated, corrupted or not the expected "
                    "file)"
                )
        if self.sha256 and actual != self.sha256:
            raise ModelError(
                f"model {self.model_id}: {source} has sha256 {actual}, expected {self.sha256}; "
                "refusing it (truncated, corrupted or not the expected file)"
            )
        return actual

    def check_file(self, path: Path) -> str:
        """:meth:`check` on a file's bytes.

        Raises:
            ModelError: The file cannot be read or does not match.
        """
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"model {self.model_id}: cannot read {path}: {exc}") from exc
        return self.check(data, str(path))


def expected_identity(
    model_id: str,
    override: str | None = None,
    manifest: Mapping[str, model_manifest.ModelSpec] | None = None,
) -> ModelIdentity:
    """The identity a model's file must have before provisioning takes it.

    Args:
        model_id: Manifest id.
        override: A sha256 the installer took from a source they trust
            (``--coral-sha256``); must agree with the manifest's sha256 pin when there is
            one, and is checked in addition to the manifest's git blob id.
        manifest: Parsed manifest (default the shipped one).

    Raises:
        ModelError: Unknown model, a malformed hash, a disagreement with the manifest, or
            no identity at all (nothing is downloaded without one).
    """
    spec = model_manifest.get_spec(model_id, dict(manifest) if manifest is not None else None)
    pin = spec.sha256.strip().lower()
    given = (override or "").strip().lower()
    if given and not _SHA256.match(given):
        raise ModelError(f"model {model_id}: {override!r} is not a sha256 (64 hex digits)")
    if pin and given and pin != given:
        raise ModelError(
            f"model {model_id}: the manifest pins sha256 {pin}, the installer gave {given}; "
            "they must agree"
        )
    if not (pin or given or spec.git_blob):
        raise ModelError(
            f"model {model_id}: models/manifest.toml pins no sha256 (nor a git blob id) for "
            "it, so it will not be downloaded (an unpinned download could be anything). "
            "Obtain the file's sha256 from a source you trust (e.g. a copy verified on "
            f"another unit: `sha256sum {spec.path}`) and pass it with --coral-sha256 HASH, "
            "or add it to models/manifest.toml"
        )
    return ModelIdentity(model_id, pin or given, spec.git_blob,
                         model_manifest.git_origin(spec) if spec.git_blob else "")


def _cmd_check(args: argparse.Namespace) -> None:
    manifest = model_manifest.load_manifest(Path(args.manifest)) if args.manifest else None
    identity = expected_identity(args.model, args.sha256, manifest)
    if args.file:
        digest = identity.check_file(Path(args.file))
        print(f"{args.file} matches {identity.describe()}; sha256 {digest}")
    else:
        print(identity.describe())


def main(argv: Sequence[str] | None = None) -> int:
    """``check MODEL [--sha256 H] [--file F] [--manifest M]``; errors exit with status 2."""
    parser = argparse.ArgumentParser(prog="python -m device.ops.model_trust",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="print a model's identity, or check a file against it")
    p.add_argument("model")
    p.add_argument("--sha256", help="an installer's sha256, checked as well")
    p.add_argument("--file", help="a local copy to check")
    p.add_argument("--manifest", help="this manifest instead of the installed package's")
    p.set_defaults(func=_cmd_check)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except DeviceError as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
