"""docs/ARCHITECTURE.md lists every package of device/ with its job, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "ARCHITECTURE.md"


def _listed() -> list[str]:
    rows = re.findall(r"^\| `(device/[\w/]*)` \|", DOC.read_text(), flags=re.MULTILINE)
    return [r.rstrip("/") for r in rows]


def _packages() -> set[str]:
    return {
        str(p.parent.relative_to(REPO))
        for p in (REPO / "device").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }


def test_every_listed_package_exists() -> None:
    listed = _listed()
    assert listed, "the package table of docs/ARCHITECTURE.md is empty"
    missing = [p for p in listed if not (REPO / p / "__init__.py").is_file()]
    assert not missing, f"listed in docs/ARCHITECTURE.md but not a package: {missing}"


def test_every_package_is_listed_once() -> None:
    listed = _listed()
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    unlisted = sorted(_packages() - set(listed))
    assert not unlisted, f"packages missing from docs/ARCHITECTURE.md: {unlisted}"


def test_named_core_modules_exist() -> None:
    for name in re.findall(r"\(`(\w+\.py)`\)", DOC.read_text()):
        assert (REPO / "device" / name).is_file(), f"docs/ARCHITECTURE.md names device/{name}"


def test_the_runtime_never_imports_the_lab() -> None:
    offenders = []
    for path in (REPO / "device").rglob("*.py"):
        rel = path.relative_to(REPO / "device").parts
        if rel[0] in {"lab", "cli", "ops"}:
            continue
        if re.search(r"^\s*(from|import) device\.lab\b", path.read_text(), flags=re.MULTILINE):
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"runtime modules importing device.lab: {offenders}"


def test_the_runtime_never_imports_the_console() -> None:
    offenders = []
    for path in (REPO / "device").rglob("*.py"):
        rel = path.relative_to(REPO / "device").parts
        if rel[0] in {"console", "cli", "lab", "ops"}:
            continue
        if re.search(r"^\s*(from|import) device\.console\b", path.read_text(),
                     flags=re.MULTILINE):
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"unit modules importing device.console: {offenders}"


def test_unit_tests_mirror_the_package_tree() -> None:
    unit = REPO / "tests" / "unit"
    strays = [
        str(d.relative_to(unit)) for d in unit.rglob("*")
        if d.is_dir() and d.name != "__pycache__"
        and not (REPO / "device" / d.relative_to(unit) / "__init__.py").is_file()
    ]
    assert not strays, f"tests/unit folders with no device package of that name: {strays}"
