"""``facegate keys``: the Ed25519 keys that sign gallery bundles.

``generate`` writes ``<name>.key`` (private, mode 0600: keep it off the units) and
``<name>.pub`` (copy it into each unit's trusted keys directory).
"""

from __future__ import annotations

from pathlib import Path

import click

from device.cli.common import emit_json, handle_errors, json_option
from device.sync.keys import generate_key, key_id, load_any_public


@click.group("keys")
def keys_group() -> None:
    """Keys that sign gallery bundles."""


@keys_group.command("generate")
@click.option("-o", "--output", "directory", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the key pair (created if missing).")
@click.option("--name", default="gallery-signing", show_default=True,
              help="File name stem: <name>.key and <name>.pub.")
@json_option
@handle_errors
def generate(directory: Path, name: str, as_json: bool) -> None:
    """Create a new signing key pair; existing files are never overwritten."""
    files = generate_key(directory, name)
    if as_json:
        emit_json(files.to_json())
        return
    click.echo(f"key id   {files.keyid}")
    click.echo(f"private  {files.private}  (mode 0600; keep it off the units)")
    click.echo(f"public   {files.public}  (copy into each unit's trusted keys directory)")


@keys_group.command("id")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@handle_errors
def show_id(file: Path, as_json: bool) -> None:
    """The key id of a public or private key file (sha256 of the raw public key)."""
    keyid = key_id(load_any_public(file))
    if as_json:
        emit_json({"file": str(file), "keyid": keyid})
    else:
        click.echo(keyid)
