"""``facegate gallery``: look at, delete, export and import enrolled identities.

Every command takes ``--db PATH`` (default: ``gallery.db`` in the unit's state
directory) and ``--json``. Embeddings are never printed.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import sys
from pathlib import Path

import click

from device.audit import AuditLog, default_audit_path
from device.cli.common import (
    STATE_DIR_HELP,
    announce_state_dir,
    audit_log_option,
    emit_json,
    handle_errors,
    json_option,
)
from device.errors import GalleryError
from device.events.config import OUTBOX_FILENAME
from device.events.outbox import Outbox
from device.gallery.erase import erase_identity
from device.gallery.exchange import read_export
from device.gallery.records import Identity, iso_time
from device.gallery.store import GalleryStore, integrity_check
from device.paths import default_state_dir
from device.statelock import SERVICE_HOLDER, StateDirBusyError, StateLock

SERVICE_HOLDER_CLI = "facegate gallery delete"

GALLERY_FILE = "gallery.db"

db_option = click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Gallery database file. [default: <state dir>/{GALLERY_FILE}; {STATE_DIR_HELP}]",
)


def gallery_path(db_path: Path | None) -> Path:
    """The ``--db`` value, or the gallery in the unit's state directory."""
    return db_path if db_path is not None else default_state_dir() / GALLERY_FILE


def _date(ts: float | None) -> str:
    text = iso_time(ts)
    return "-" if text is None else text[:19].replace("T", " ")


@click.group("gallery")
def gallery_group() -> None:
    """The local gallery of enrolled identities."""


@gallery_group.command("info")
@db_option
@json_option
@handle_errors
def info(db_path: Path | None, as_json: bool) -> None:
    """What the gallery is: model, dimension, version and counts."""
    path = gallery_path(db_path)
    with GalleryStore(path, read_only=True) as store:
        meta = store.metadata()
        identities, faces = store.counts()
    if as_json:
        emit_json({"path": str(path), **meta.to_json(), "identities": identities,
                   "faces": faces})
        return
    click.echo(f"gallery     {path}")
    click.echo(f"id          {meta.gallery_id}")
    click.echo(f"model       {meta.model_id} (dim {meta.dim})")
    click.echo(f"version     {meta.version} (revision {meta.revision}, "
               f"schema {meta.schema_version})")
    click.echo(f"created     {_date(meta.created_at)}")
    click.echo(f"updated     {_date(meta.updated_at)}")
    click.echo(f"identities  {identities}")
    click.echo(f"faces       {faces}")


@gallery_group.command("list")
@db_option
@json_option
@handle_errors
def list_identities(db_path: Path | None, as_json: bool) -> None:
    """Every enrolled identity, sorted by label."""
    with GalleryStore(gallery_path(db_path), read_only=True) as store:
        identities = store.list_identities()
    if as_json:
        emit_json([i.to_json() for i in identities])
        return
    if not identities:
        click.echo("no identities enrolled")
        return
    click.echo(f"{'id':<18} {'faces':>5}  {'enrolled':<19}  {'expires':<19}  label")
    for i in identities:
        click.echo(f"{i.id:<18} {i.face_count:>5}  {_date(i.created_at):<19}  "
                   f"{_date(i.expires_at):<19}  {i.label}")


def _show_text(ident: Identity) -> None:
    for name, value in ident.to_json().items():
        if name != "face_count":
            click.echo(f"{name:<13} {'-' if value is None else value}")


def _by_id_or_label(store: GalleryStore, key: str) -> Identity:
    """The identity with id ``key``, else the only one labelled ``key``.

    Raises:
        GalleryError: Neither, or several identities carry that label (their ids listed).
    """
    try:
        return store.get(key)
    except GalleryError:
        named = store.find_by_label(key)
        if len(named) == 1:
            return named[0]
        if named:
            raise GalleryError(f"{len(named)} identities are labelled {key!r}; give an id: "
                               + ", ".join(i.id for i in named)) from None
        raise GalleryError(f"no identity {key!r} in gallery {store.path}: neither an id nor "
                           "a label (`facegate gallery list` shows both)") from None


@gallery_group.command("show")
@click.argument("identity", metavar="ID_OR_LABEL")
@db_option
@json_option
@handle_errors
def show(identity: str, db_path: Path | None, as_json: bool) -> None:
    """One identity and its faces (never the embeddings), by id or by a unique label."""
    with GalleryStore(gallery_path(db_path), read_only=True) as store:
        ident = _by_id_or_label(store, identity)
        faces = store.faces(ident.id)
    if as_json:
        emit_json({**ident.to_json(), "faces": [f.to_json() for f in faces]})
        return
    _show_text(ident)
    click.echo(f"faces         {len(faces)}")
    for f in faces:
        click.echo(f"  face {f.id:<6} quality {f.quality:.3f}  image {f.image_sha256[:16]}  "
                   f"{_date(f.created_at)}")


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def _erasure_paths(config_path: Path | None, db_path: Path | None, outbox_path: Path | None,
                   audit_path: Path | None) -> tuple[Path, Path | None, Path | None]:
    """Gallery, outbox and audit log: the options, else the config's, else the state
    directory's (outbox and audit log only if they exist there)."""
    if config_path is not None:
        from device.service.config import load_config  # the service's models: only here

        config, _ = load_config(config_path)
        return (db_path or config.gallery_path, outbox_path or config.mqtt.outbox_path,
                audit_path or config.audit_path)
    state = default_state_dir()
    if outbox_path is None and (state / OUTBOX_FILENAME).exists():
        outbox_path = state / OUTBOX_FILENAME
    if audit_path is None and default_audit_path().exists():
        audit_path = default_audit_path()
    return gallery_path(db_path), outbox_path, audit_path


def _confirmed(question: str) -> bool:
    """Ask on the terminal; no answer (no terminal, end of input, ^C) is a no."""
    try:
        return click.confirm(question, default=False, err=True)
    except click.Abort:
        click.echo("", err=True)
        return False


@gallery_group.command("delete")
@click.argument("identity_id")
@click.option("--erase", is_flag=True,
              help="Also rebuild the database file (VACUUM) so nothing of the identity "
                   "remains in any page, and erase the identity's pending events from the "
                   "outbox.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--config", "config_path", default=None,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The unit's configuration: its gallery, outbox and audit log.")
@click.option("--outbox", "outbox_path", default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Outbox to erase the identity's pending events from. [default: the "
                   "config's, else the state directory's outbox.sqlite3 if it exists]")
@audit_log_option
@db_option
@json_option
@handle_errors
def delete(identity_id: str, erase: bool, yes: bool, config_path: Path | None,
           outbox_path: Path | None, audit_path: Path | None, db_path: Path | None,
           as_json: bool) -> None:
    """Delete an identity and its faces; their embeddings leave the files on disk.

    The rows are deleted with SQLite's secure_delete and the write-ahead log is
    truncated; the command then checks that no deleted embedding's bytes remain in
    the database, its WAL or its shared-memory file. With --erase the file is also
    rebuilt and the identity's pending events leave the outbox (file and WAL). The
    audit log records the deletion by identity id only: never the label, never
    biometric data. Events already sent cannot be recalled. While `facegate run` is
    running with the same state directory the command refuses (exit 2) and changes
    nothing: stop the service, delete, start it again.
    """
    path, outbox_file, audit_file = _erasure_paths(config_path, db_path, outbox_path,
                                                   audit_path)
    with contextlib.ExitStack() as stack:
        # The service is the one writer of its outbox and audit log: erase only while
        # holding their state directories, never behind a running service.
        states = {f.parent for f in (outbox_file, audit_file) if f is not None}
        for state in sorted(d for d in states if d.is_dir()):
            try:
                stack.enter_context(StateLock(state, SERVICE_HOLDER_CLI))
            except StateDirBusyError as exc:
                who = ("the service is running" if exc.holder == SERVICE_HOLDER
                       else f"{exc.holder or 'another process'} is running")
                raise GalleryError(
                    f"{identity_id} not deleted: {who} (pid "
                    f"{exc.pid if exc.pid is not None else '?'}) with state directory "
                    f"{state}, the one writer of its outbox and audit log; stop it "
                    "(systemctl stop facegate), run this again, then start it"
                ) from exc
        with GalleryStore(path) as store:
            ident = store.get(identity_id)
            if not yes and not _confirmed(
                    f"Delete {ident.id} ({ident.label}) and its {ident.face_count} faces"
                    f"{' and erase them from the file and the outbox' if erase else ''}?"):
                click.echo("not deleted: not confirmed (-y/--yes confirms without asking)",
                           err=True)
                sys.exit(1)
            announce_state_dir(path, outbox_file, audit_file)
            outbox = (stack.enter_context(Outbox(outbox_file))
                      if erase and outbox_file is not None and outbox_file.exists() else None)
            audit = (stack.enter_context(AuditLog(audit_file))
                     if audit_file is not None else None)
            report, done = erase_identity(store, identity_id, erase=erase, outbox=outbox,
                                          audit=audit, reason="cli", actor=_actor())
    erased = done.outbox_erased
    if erase and outbox_file is not None and erased is None:
        erased = 0  # the outbox file does not exist: nothing was waiting
    if as_json:
        emit_json({**report.to_json(), "label": ident.label, "outbox_erased": erased,
                   "audited": audit_file is not None})
        return
    click.echo(f"deleted {ident.id} ({ident.label}): {report.faces} faces"
               f"{', file rebuilt' if report.erased else ''}"
               f"{f', {erased} pending events erased from the outbox' if erased else ''}")
    if erase and outbox_file is None:
        click.echo("no outbox found: pass --config or --outbox to erase pending events too",
                   err=True)
    if audit_file is None:
        click.echo("no audit log found: the deletion is not recorded (pass --config or "
                   "--audit-log)", err=True)


@gallery_group.command("export")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="File to write (JSON Lines; holds biometric data).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@db_option
@json_option
@handle_errors
def export(output: Path, force: bool, db_path: Path | None, as_json: bool) -> None:
    """Write every identity and its embeddings to a portable file (mode 0600)."""
    with GalleryStore(gallery_path(db_path), read_only=True) as store:
        report = store.export(output, overwrite=force)
    if as_json:
        emit_json(report.to_json())
        return
    click.echo(f"exported {report.identities} identities ({report.faces} faces) to {output}")


@gallery_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@db_option
@json_option
@handle_errors
def import_file(file: Path, db_path: Path | None, as_json: bool) -> None:
    """Add every identity of an export file, all or nothing.

    A gallery that does not exist yet is created for the export's model.
    """
    path = gallery_path(db_path)
    announce_state_dir(path)
    created = not path.exists()
    if created:
        header = read_export(file).header  # refuse a bad file before creating anything
        model_id, dim = header.get("model_id"), header.get("dim")
        if not isinstance(model_id, str) or not isinstance(dim, int):
            raise GalleryError(f"{file}: the header has no usable model_id and dim")
        store = GalleryStore(path, model_id=model_id, dim=dim, create=True)
    else:
        store = GalleryStore(path)
    try:
        with store:
            report = store.import_(file)
    except GalleryError:
        if created:
            for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                leftover.unlink(missing_ok=True)
        raise
    if as_json:
        emit_json({**report.to_json(), "gallery": str(path), "created": created})
        return
    click.echo(f"imported {report.identities} identities ({report.faces} faces) into {path}"
               f"{' (new gallery)' if created else ''}")


@gallery_group.command("check")
@click.option("--model-id", default=None, help="Model id the gallery must hold.")
@click.option("--dim", type=int, default=None, help="Embedding dimension it must hold.")
@db_option
@json_option
@handle_errors
def check(model_id: str | None, dim: int | None, db_path: Path | None, as_json: bool) -> None:
    """Check a gallery file without changing it; exit status 2 if anything is wrong."""
    report = integrity_check(gallery_path(db_path), expect_model_id=model_id, expect_dim=dim)
    if as_json:
        emit_json(report.to_json())
    elif report.ok:
        click.echo(f"ok: {report.path}: {report.identities} identities, {report.faces} faces, "
                   f"model {report.model_id} (dim {report.dim}), version {report.version}")
    if not report.ok:
        report.raise_for_problems()
