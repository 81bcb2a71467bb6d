"""Configuration models and the TOML loader.

Every section is a pydantic model derived from :class:`Section`: unknown keys are
refused, every field carries a description. Backends (detectors, embedders, frame
sources) define their own section next to their code and are chosen by a ``type``
literal, Frigate-style; the service's top-level model composes them.

:func:`load_toml` validates a file against a model and, on failure, names every bad
key with its line in the file, e.g.::

    /etc/facegate/config.toml:12: cameras[1].fps: Input should be greater than 0
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from device.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """Base of every configuration model: frozen, unknown keys refused."""

    # hide_input_in_errors: a bad value may be a secret (a password in an RTSP URL);
    # errors name the key and line, never echo the value.
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, hide_input_in_errors=True
    )


_TABLE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_PART = r"""(?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)"""
_KEY = re.compile(rf"^\s*({_PART}(?:\s*\.\s*{_PART})*)\s*=")


def _split_dotted(key: str) -> list[str]:
    parts = re.findall(r"""\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_\-]+)""", key)
    return [a or b or c for a, b, c in parts]


def key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Map each key path in a TOML document to the 1-based line that defines it.

    Handles tables, arrays of tables (``[[cameras]]`` gives indices 0, 1, …) and dotted
    keys; values spanning lines (multi-line arrays or strings) are attributed to the
    line of their key, which is what a person wants to see.
    """
    lines: dict[tuple[str | int, ...], int] = {}
    counters: dict[tuple[str | int, ...], int] = {}
    prefix: tuple[str | int, ...] = ()
    in_multiline: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_multiline:
            if in_multiline in line:
                in_multiline = None
            continue
        if m := _TABLE.match(line):
            path: list[str | int] = []
            parts = _split_dotted(m.group(2))
            for i, part in enumerate(parts):
                path.append(part)
                if i < len(parts) - 1 and tuple(path) in counters:
                    path.append(counters[tuple(path)] - 1)
            if m.group(1) == "[[":
                key = tuple(path)
                counters[key] = counters.get(key, 0) + 1
                path.append(counters[key] - 1)
            prefix = tuple(path)
            lines.setdefault(prefix, number)
            continue
        if m := _KEY.match(line):
            full = prefix + tuple(_split_dotted(m.group(1)))
            lines.setdefault(full, number)
            rest = line[m.end():]
            for quote in ('"""', "'''"):
                if rest.count(quote) == 1:
                    in_multiline = quote
    return lines


def _format_loc(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _line_for(loc: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> int | None:
    for end in range(len(loc), 0, -1):
        if (found := lines.get(loc[:end])) is not None:
            return found
    return None


def load_toml(path: str | Path, model: type[M]) -> M:
    """Read a TOML file and validate it against ``model``.

    Raises:
        ConfigError: The file is missing or unreadable, not valid TOML (with line and
            column), or fails validation; the message lists every bad key with its line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return validate_mapping(data, model, source=str(path), text=text)


def validate_mapping(data: dict[str, Any], model: type[M], source: str, text: str = "") -> M:
    """Validate an already-parsed mapping; errors name keys (and lines when ``text`` given).

    Raises:
        ConfigError: Validation failed.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = key_lines(text) if text else {}
        problems = []
        for err in exc.errors():
            loc = _key_path(tuple(err["loc"]), data)
            where = _line_for(loc, lines)
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (not allowed here)"
            at = f"{source}:{where}" if where else source
            problems.append(f"{at}: {_format_loc(loc)}: {msg}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None


def _key_path(loc: tuple[str | int, ...], data: Any) -> tuple[str | int, ...]:
    """Drop the tags pydantic puts into locations inside discriminated unions.

    For ``cameras[1]`` of ``type = "video"`` pydantic reports ``cameras.1.video.fps``;
    a person wrote ``cameras[1].fps``.
    """
    out: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part not in node and any(
            node.get(tag) == part for tag in ("type", "kind")
        ):
            continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part) if isinstance(part, str) else None
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)
