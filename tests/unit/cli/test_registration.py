"""The command tree is registered in one place: verb modules never import ``main``."""

from __future__ import annotations

import ast
from pathlib import Path

from click.testing import CliRunner

import device.cli
from device.cli import main

CLI = Path(device.cli.__file__).parent
VERBS = ["audit", "bench", "calibrate", "console", "demo", "detect", "doctor", "embed", "eval",
         "gallery", "identify", "keys", "models", "run", "status", "sync"]


def test_no_verb_module_attaches_itself_to_main() -> None:
    for module in sorted(CLI.glob("*.py")):
        if module.name == "__init__.py":
            continue
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "device.cli":
                names = {a.name for a in node.names}
                assert not names & {"main", "bench"}, f"{module.name} imports {names}"


def test_help_lists_every_verb() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.output.split("Commands:\n", 1)[1].splitlines()
              if line.startswith("  ")]
    assert listed == VERBS
    assert sorted(main.commands) == VERBS
