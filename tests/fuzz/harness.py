"""What a fuzz target is, and the registry of targets.

A target module defines ``NAME``, ``INSTRUMENT`` (module prefixes atheris instruments
for coverage), ``MAX_LEN`` and ``prepare(workdir) -> Harness``. ``prepare`` builds
whatever the parser needs (a gallery, keys, a signed manifest) under ``workdir`` and
returns the seed corpus and the function that feeds one input to the parser.

``one_input`` lets a parser's *documented* errors pass silently and lets anything
else propagate: an exception that escapes it is a crash.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

#: The targets, in the order the runner and the tests use them.
TARGETS = (
    "image",
    "config",
    "manifest",
    "sync_manifest",
    "sync_chunk",
    "sync_payload",
    "mqtt_events",
)

REGRESSIONS = Path(__file__).resolve().parent / "regressions"


@dataclass(frozen=True)
class Harness:
    """A prepared target.

    Attributes:
        seeds: The seed corpus (small inputs generated at run time).
        one_input: Feeds one input to the parser; raises only on a crash.
    """

    seeds: tuple[bytes, ...]
    one_input: Callable[[bytes], None]


def target_module(name: str) -> ModuleType:
    """The module of target ``name``.

    Raises:
        KeyError: No such target.
    """
    if name not in TARGETS:
        raise KeyError(f"no fuzz target {name!r}; targets: {', '.join(TARGETS)}")
    return importlib.import_module(f"tests.fuzz.targets.{name}")


def regression_inputs(name: str) -> list[Path]:
    """The kept crash inputs of target ``name``, sorted."""
    folder = REGRESSIONS / name
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def split_message(data: bytes) -> tuple[bytes, bytes]:
    """An MQTT message from fuzz bytes: the topic before the first NUL, the payload after."""
    topic, _, payload = data.partition(b"\x00")
    return topic, payload
