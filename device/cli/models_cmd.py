"""``facegate models``: list and verify the models in the manifest."""

from __future__ import annotations

import click

from device.cli import main
from device.cli.common import emit_json, handle_errors, json_option
from device.errors import ModelError
from device.vision import models as model_manifest


@main.group("models")
def models_group() -> None:
    """List, verify and build the models facegate runs."""


@models_group.command("list")
@json_option
@handle_errors
def list_models(as_json: bool) -> None:
    """Every model in the manifest, where its file is and whether its hash checks out."""
    rows = []
    for spec in model_manifest.load_manifest().values():
        try:
            path = model_manifest.verified_path(spec.id)
            status, detail = "ok", str(path)
        except ModelError as exc:
            status, detail = "missing" if "not" in str(exc) else "bad", str(exc)
        rows.append({"id": spec.id, "kind": spec.kind, "source": spec.source,
                     "status": status, "detail": detail})
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        click.echo(f"{row['id']:<20} {row['kind']:<9} {row['source']:<8} {row['status']:<8} "
                   f"{row['detail']}")
