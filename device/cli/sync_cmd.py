"""``facegate sync``: build, sign, publish and apply signed gallery bundles.

Operator side: ``build`` (a full snapshot, or ``--delta-from`` a previous bundle),
``sign`` (add a further signature for a threshold), ``publish`` (retained MQTT
chunks, then the manifest). Unit side: ``apply`` (a bundle directory, e.g. from a
USB stick) and ``status``.

``apply`` exits 0 when the bundle was applied or is already live, 3 when it was
refused (the reason is printed), 2 on any other error.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import click

from device.audit import AuditLog
from device.cli.common import (
    STATE_DIR_HELP,
    announce_state_dir,
    audit_log_option,
    emit_json,
    handle_errors,
    json_option,
    reported_here,
)
from device.cli.gallery_cmd import GALLERY_FILE, gallery_path
from device.errors import ModelError
from device.events.config import read_secret
from device.sync.apply import GallerySync, SyncPolicy, read_status
from device.sync.bundle import DEFAULT_CHUNK_SIZE, build_bundle, sign_bundle
from device.sync.keys import TrustedKeys, load_private_key
from device.sync.layout import GalleryLayout
from device.sync.mqtt import BrokerLogin, publish_bundle
from device.sync.state import GalleryState
from device.vision.dlib_tflite import DLIB_MODEL_ID
from device.vision.models import embedding_dim, get_spec

DEFAULT_TRUSTED_KEYS = Path("/etc/facegate/credentials/trusted-keys")
EXIT_ERROR = 2
EXIT_REFUSED = 3

db_option = click.option(
    "--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help=f"The unit's gallery. [default: <state dir>/{GALLERY_FILE}; "
         f"{STATE_DIR_HELP}]")


@click.group("sync")
def sync_group() -> None:
    """Signed, versioned gallery bundles."""


@sync_group.command("build")
@click.option("--gallery", required=True, type=click.Path(exists=True, path_type=Path),
              help="The new gallery: a gallery .db file or a .jsonl export.")
@click.option("--version", "version", required=True, type=click.IntRange(min=1),
              help="Bundle version; units accept only increasing versions.")
@click.option("--key", "keys", required=True, multiple=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Private signing key; repeat for a threshold of keys.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Bundle directory to create (must not exist or be empty).")
@click.option("--delta-from", type=click.Path(exists=True, path_type=Path), default=None,
              help="Build a delta against this full bundle directory (or gallery file "
              "with --base-version).")
@click.option("--base-version", type=click.IntRange(min=1), default=None,
              help="Published version of a --delta-from gallery file.")
@click.option("--gallery-id", default=None, help="Gallery lineage id [default: the file's].")
@click.option("--expires-days", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="Days until units refuse the bundle.")
@click.option("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, show_default=True,
              help="Bytes per MQTT chunk.")
@click.option("--url", default=None, help="HTTPS URL the payload will also be served from.")
@click.option("--unit", "units", multiple=True,
              help="Restrict the bundle to this unit id (repeatable); default: whole fleet.")
@json_option
@handle_errors
def build(gallery: Path, version: int, keys: tuple[Path, ...], output: Path,
          delta_from: Path | None, base_version: int | None, gallery_id: str | None,
          expires_days: float, chunk_size: int, url: str | None, units: tuple[str, ...],
          as_json: bool) -> None:
    """Build and sign a bundle directory (manifest.json + payload)."""
    built = build_bundle(
        gallery, output, version=version, keys=[load_private_key(k) for k in keys],
        delta_from=delta_from, base_version=base_version, gallery_id=gallery_id,
        expires_in_s=int(expires_days * 86400), chunk_size=chunk_size, url=url,
        units=units or None, clock=time.time)
    info = built.to_json()
    if as_json:
        emit_json(info)
        return
    click.echo(f"built {info['kind']} bundle version {version} in {output}")
    click.echo(f"bundle   {info['bundle_sha256']}")
    click.echo(f"gallery  {info['gallery_id']}: {info['identities']} identities, "
               f"{info['faces']} faces (+{info['added']} -{info['removed']})")
    click.echo(f"payload  {info['payload_bytes']} bytes in {info['chunks']} chunks, "
               f"expires {info['expires']}")


@sync_group.command("sign")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--key", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Private key to add a signature with.")
@json_option
@handle_errors
def sign(directory: Path, key: Path, as_json: bool) -> None:
    """Add a signature to a bundle (several key holders reach a threshold)."""
    manifest = sign_bundle(directory, load_private_key(key))
    keyids = [s.keyid for s in manifest.signatures]
    if as_json:
        emit_json({"bundle_sha256": manifest.digest, "signed_by": keyids})
    else:
        click.echo(f"{len(keyids)} signature(s): " + ", ".join(k[:16] for k in keyids))


@sync_group.command("publish")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--broker", required=True, help="mqtt://host[:port] or mqtts://host[:port].")
@click.option("--unit", default=None, help="Publish as this unit's override, not the fleet's.")
@click.option("--username", default=None, help="MQTT username.")
@click.option("--password-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the MQTT password.")
@click.option("--ca-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CA bundle for mqtts://.")
@json_option
@handle_errors
def publish(directory: Path, broker: str, unit: str | None, username: str | None,
            password_file: str | None, ca_file: Path | None, as_json: bool) -> None:
    """Publish a bundle: retained chunks first, then the retained manifest (QoS 1)."""
    password = read_secret(password_file, "MQTT password") if password_file else None
    report = publish_bundle(directory, BrokerLogin(broker, username, password, ca_file),
                            unit=unit)
    if as_json:
        emit_json(report.to_json())
    else:
        click.echo(f"published version {report.version} ({report.chunk_topics} chunks) "
                   f"on {report.manifest_topic}")


@sync_group.command("apply")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--config", "config_path", default=None,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The unit's configuration: its gallery, audit log and embedder.")
@db_option
@click.option("--trusted-keys", type=click.Path(path_type=Path), default=DEFAULT_TRUSTED_KEYS,
              show_default=True, help="Directory of trusted public keys.")
@click.option("--threshold", type=click.IntRange(min=1), default=1, show_default=True,
              help="Distinct trusted keys that must have signed.")
@click.option("--unit-id", default=None,
              help="This unit's id (for bundles naming units). [default: the config's]")
@click.option("--model-id", default=None,
              help="The model the unit runs [default: the config's embedder, else the live "
                   "gallery's, else the default embedder's].")
@click.option("--dim", type=click.IntRange(min=1), default=None,
              help="Its embedding dimension [default: the model's, from the manifest].")
@audit_log_option
@json_option
@handle_errors
def apply(directory: Path, config_path: Path | None, db_path: Path | None, trusted_keys: Path,
          threshold: int, unit_id: str | None, model_id: str | None, dim: int | None,
          audit_path: Path | None, as_json: bool) -> None:
    """Verify and apply a bundle directory (offline delivery, e.g. a USB stick).

    A bundle for a model other than the unit's is refused. The unit's model is the
    embedder of --config (or the live gallery's, or the default embedder's on a unit
    with no gallery yet); its dimension comes from the model manifest.
    """
    path = db_path
    if config_path is not None:
        from device.service.config import load_config  # the service's models: only here

        config, _ = load_config(config_path)
        path = path or config.gallery_path
        audit_path = audit_path or config.audit_path
        unit_id = unit_id or config.unit_id
        model_id = model_id or config.embedder.model
    path = gallery_path(path)
    announce_state_dir(path)
    if model_id is None and not _live_readable(GalleryLayout(path)):
        # No gallery, or a damaged one (which sync replaces): the embedder `facegate run`
        # uses by default.
        model_id = DLIB_MODEL_ID
    if model_id is not None and dim is None:
        # A model the manifest does not describe: the live gallery's dim, or --dim.
        with contextlib.suppress(ModelError):
            dim = embedding_dim(get_spec(model_id))
    policy = SyncPolicy(unit_id=unit_id, model_id=model_id, dim=dim, threshold=threshold)
    audit = AuditLog(audit_path) if audit_path is not None else None
    try:
        sync = GallerySync(path, TrustedKeys.load(trusted_keys), policy, audit=audit)
        sync.recover()
        with reported_here("device.sync.apply"):
            result = sync.apply_dir(directory)
    finally:
        if audit is not None:
            audit.close()
    if as_json:
        emit_json(result.to_json())
    elif result.ok:
        word = "applied" if result.outcome == "ok" else "already live:"
        click.echo(f"{word} version {result.version} ({result.state.identities} identities)")
    else:  # the message starts with its outcome: "refused (…): …" or "error (…): …"
        click.echo(result.message, err=True)
    if result.outcome == "refused":
        sys.exit(EXIT_REFUSED)
    if result.outcome == "error":
        sys.exit(EXIT_ERROR)


def _live_readable(layout: GalleryLayout) -> bool:
    """Whether a live gallery exists and its metadata (model, dimension) can be read."""
    if layout.live_target() is None:
        return False
    try:
        return layout.live_info() is not None
    except OSError:
        return False


@sync_group.command("status")
@db_option
@json_option
@handle_errors
def status(db_path: Path | None, as_json: bool) -> None:
    """The live gallery's version and the last sync outcome.

    Exits 2 when the live gallery exists but is damaged or unreadable (the state
    then says why, and the floor a replacing bundle's version must exceed).
    """
    layout = GalleryLayout(gallery_path(db_path))
    state = read_status(layout)
    floor = layout.read_record().floor
    try:
        live = layout.live_info()
    except OSError:
        live, unusable = None, True  # read_status put the reason in the state's message
    else:
        unusable = False
    expires = live.manifest.body()["expires"] if live and live.manifest else None
    if as_json:
        emit_json({**state.to_json(), "floor": floor, "expires": expires})
    else:
        _print_state(state, floor, expires)
    if unusable:
        sys.exit(EXIT_ERROR)


def _print_state(state: GalleryState, floor: int, expires: object) -> None:
    click.echo(f"state       {state.status}")
    click.echo(f"version     {state.version} (floor {floor})")
    if state.gallery_id:
        click.echo(f"gallery     {state.gallery_id}")
    click.echo(f"identities  {state.identities} ({state.templates} faces)")
    if state.bundle_sha256:
        click.echo(f"bundle      {state.bundle_sha256}")
    if expires is not None:
        click.echo(f"expires     {expires}")
    if state.message:
        click.echo(f"last        {state.message}")
    refusal = state.last_refusal
    if refusal is not None:
        click.echo(f"refused     {refusal.message}")
