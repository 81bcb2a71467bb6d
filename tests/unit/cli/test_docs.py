"""The README documents every command of the ``facegate`` tree (sqlite-utils' test_docs)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from device.cli import main

README = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")


def _walk(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[str, click.Command]]:
    yield " ".join(path), command
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from _walk(command.commands[name], (*path, name))


COMMANDS = [(name, cmd) for name, cmd in _walk(main, ("facegate",)) if name != "facegate"]


def _options(command: click.Command) -> Iterator[tuple[str, ...]]:
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            yield tuple(param.opts)


def test_the_tree_is_walked() -> None:
    names = {name for name, _ in COMMANDS}
    assert {"facegate gallery enroll", "facegate eval identify", "facegate bench embed",
            "facegate sync apply", "facegate run"} <= names


@pytest.mark.parametrize("name", [name for name, _ in COMMANDS])
def test_every_verb_is_in_the_readme(name: str) -> None:
    assert re.search(rf"{re.escape(name)}(?![\w-])", README), f"README does not mention `{name}`"


@pytest.mark.parametrize(
    ("name", "option"),
    [(name, opt) for name, cmd in COMMANDS if not isinstance(cmd, click.Group)
     for opt in _options(cmd)],
)
def test_every_option_is_in_the_readme_or_its_help_is(name: str, option: tuple[str, ...]
                                                     ) -> None:
    """Each option is named in the README (any of its spellings), or the README sends
    the reader to ``<command> --help`` for it."""
    assert any(re.search(rf"{re.escape(o)}(?![\w-])", README) for o in option) or (
        f"`{name} --help`" in README), f"README names neither {option} nor `{name} --help`"
