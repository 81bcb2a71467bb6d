"""``facegate gallery enroll`` and ``facegate gallery enroll-dir``: add people from photos.

Each photo must hold exactly one acceptable face; a batch is all or nothing unless
``--skip-rejected`` (see :mod:`device.enroll.enroll`). The report lists every photo:
accepted, or rejected with its reasons. Exit status 0 when the batch was written (or,
with ``--dry-run``, would be), 1 when it was refused, 2 on errors.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import click

from device.audit.log import AuditLog, default_audit_path
from device.cli.common import (
    announce_state_dir,
    audit_log_option,
    emit_json,
    handle_errors,
    json_option,
)
from device.cli.face_tools import (
    model_option,
    open_detector,
    open_embedder,
    progress_bar,
    threads_option,
)
from device.cli.gallery_cmd import db_option, gallery_path
from device.enroll.enroll import (
    EnrollmentReport,
    IdentityReport,
    IdentityRequest,
    collect_paths,
    commit,
    examine,
    identity_folders,
    photo_count,
    plan,
)
from device.errors import EnrollmentError, GalleryError
from device.gallery.records import NewIdentity
from device.gallery.store import GalleryStore


def parse_expiry(text: str | None, now: datetime | None = None) -> float | None:
    """``--expires`` as seconds since the epoch: an ISO date (midnight UTC) or date-time.

    Raises:
        click.BadParameter: Not a date, or not in the future.
    """
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM[+HH:MM]",
            param_hint="--expires") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when <= (now or datetime.now(UTC)):
        raise click.BadParameter(f"{text} is not in the future", param_hint="--expires")
    return when.timestamp()


def _identity_options(func: click.decorators.FC) -> click.decorators.FC:
    for option in reversed((
        click.option("--expires", default=None, metavar="DATE",
                     help="Delete the identity at this date (YYYY-MM-DD, UTC, or ISO time)."),
        click.option("--consent-ref", default=None, help="Reference to the consent record."),
        click.option("--legal-basis", default=None,
                     help="Why the unit may hold this person's biometric data."),
        click.option("--enrolled-by", default=None,
                     help="Who enrolls (stored, and the audit record's actor). "
                          "[default: the OS user]"),
        click.option("--skip-rejected", is_flag=True,
                     help="Write the accepted photos and leave the rejected ones out, instead "
                          "of refusing the whole batch."),
        click.option("--dry-run", is_flag=True, help="Check every photo; write nothing."),
        audit_log_option,
    )):
        func = option(func)
    return func


def _actor(enrolled_by: str | None) -> str:
    if enrolled_by:
        return enrolled_by
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def _audit(path: Path | None) -> AuditLog | None:
    if path is not None:
        return AuditLog(path)
    default = default_audit_path()
    return AuditLog(default) if default.exists() else None


def run_batch(
    requests: Sequence[IdentityRequest],
    *,
    db_path: Path | None,
    model_id: str,
    threads: int,
    skip_rejected: bool,
    dry_run: bool,
    audit_path: Path | None,
    actor: str,
    as_json: bool = False,
) -> EnrollmentReport:
    """Examine the photos, then write the batch (creating the gallery if needed).

    A gallery that does not exist is created only when the batch is written, so a
    refused batch leaves nothing behind.

    Raises:
        DeviceError: Models, gallery or audit log unusable.
    """
    path = gallery_path(db_path)
    store = GalleryStore(path, model_id=model_id) if path.exists() else None
    try:
        with open_detector("short", threads) as detector, \
                open_detector("full", threads) as refiner, \
                open_embedder(model_id, threads) as embedder, \
                progress_bar(photo_count(requests), "examining", as_json=as_json) as advance:
            if store is not None and store.model_id != embedder.model_id:
                raise EnrollmentError(f"gallery {path} holds {store.model_id!r} embeddings, "
                                      f"the embedder makes {embedder.model_id!r}")
            examined = examine(requests, detector, embedder,
                               progress=lambda _p: advance(1), refiner=refiner)
        if store is None:
            checked = plan(None, requests, examined, skip_rejected=skip_rejected)
            if not checked.acceptable or dry_run:
                reason = checked.reason or "dry run: the batch is acceptable; nothing was written"
                return EnrollmentReport(checked.reports, False, reason, dry_run,
                                        checked.acceptable)
            face = next(e.face for rows in examined for e in rows if e.face is not None)
            store = GalleryStore(path, model_id=model_id,
                                 dim=int(face.embedding.vector.shape[0]), create=True)
            created = True
        else:
            created = False
        audit = None if dry_run else _audit(audit_path)
        if not dry_run:
            announce_state_dir(path, audit.path if audit is not None else None)
        try:
            return commit(store, requests, examined, skip_rejected=skip_rejected,
                          dry_run=dry_run, audit=audit, actor=actor)
        except GalleryError:
            if created:
                store.close()
                for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                    leftover.unlink(missing_ok=True)
            raise
        finally:
            if audit is not None:
                audit.close()
    finally:
        if store is not None:
            store.close()


def _print_identity(report: IdentityReport, committed: bool) -> None:
    state = (f"enrolled as {report.identity_id}" if report.enrolled else
             "not enrolled" + (f": {report.problem}" if report.problem else ""))
    if not committed and report.problem is None:
        state = "acceptable"
    click.echo(f"{report.label}: {len(report.accepted)} accepted, {len(report.rejected)} "
               f"rejected; {state}")
    for p in report.photos:
        if p.accepted:
            yaw = "" if p.yaw is None else f", yaw {p.yaw:+.0f}°"
            click.echo(f"  ok        {p.path}  (quality {p.quality:.2f}{yaw})")
        else:
            click.echo(f"  rejected  {p.path}  {', '.join(p.reasons)}: {p.detail}")
    if report.pose_warning:
        click.echo(f"  warning: {report.pose_warning}")


def _output(report: EnrollmentReport, as_json: bool, db_path: Path | None) -> None:
    if as_json:
        emit_json({"gallery": str(gallery_path(db_path)), **report.to_json()})
    else:
        for ident in report.identities:
            _print_identity(ident, report.committed)
        if report.committed:
            n = sum(1 for i in report.identities if i.enrolled)
            click.echo(f"written: {n} identities, {report.accepted} faces into "
                       f"{gallery_path(db_path)}"
                       + (f" ({report.rejected} rejected photos left out)"
                          if report.rejected else ""))
        else:
            click.echo(report.reason or "nothing was written")
    if not report.acceptable:
        sys.exit(1)


@click.command("enroll")
@click.argument("photos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--label", required=True, help="The person's display name.")
@_identity_options
@model_option
@threads_option
@db_option
@json_option
@handle_errors
def enroll(photos: tuple[Path, ...], label: str, expires: str | None, consent_ref: str | None,
           legal_basis: str | None, enrolled_by: str | None, skip_rejected: bool,
           dry_run: bool, audit_path: Path | None, model_id: str, threads: int,
           db_path: Path | None, as_json: bool) -> None:
    """Enroll one person from PHOTOS (image files, or folders of them).

    Each photo must hold exactly one acceptable face (BlazeFace short-range, the
    enrollment quality preset); a rejected photo is listed with its reasons (no_face,
    multiple_faces, too_small, blurred, too_dark, overexposed, extreme_pose,
    low_confidence, partially_outside_frame, unreadable, duplicate). All photos are
    written in one transaction, or none: one rejected photo refuses the batch
    unless --skip-rejected.
    """
    identity = NewIdentity(label=label, enrolled_by=enrolled_by or _actor(None),
                           legal_basis=legal_basis, consent_ref=consent_ref,
                           expires_at=parse_expiry(expires))
    request = IdentityRequest(identity, collect_paths(photos))
    report = run_batch([request], db_path=db_path, model_id=model_id, threads=threads,
                       skip_rejected=skip_rejected, dry_run=dry_run, audit_path=audit_path,
                       actor=_actor(enrolled_by), as_json=as_json)
    _output(report, as_json, db_path)


@click.command("enroll-dir")
@click.argument("root", type=click.Path(file_okay=False, path_type=Path))
@_identity_options
@model_option
@threads_option
@db_option
@json_option
@handle_errors
def enroll_dir(root: Path, expires: str | None, consent_ref: str | None,
               legal_basis: str | None, enrolled_by: str | None, skip_rejected: bool,
               dry_run: bool, audit_path: Path | None, model_id: str, threads: int,
               db_path: Path | None, as_json: bool) -> None:
    """Enroll every sub-folder of ROOT as one person named after the folder.

    The whole tree is one batch: every identity is written in one transaction, or
    none is (unless --skip-rejected). The options apply to every identity.
    """
    expires_at = parse_expiry(expires)
    requests = [IdentityRequest(NewIdentity(
        label=label, enrolled_by=enrolled_by or _actor(None), legal_basis=legal_basis,
        consent_ref=consent_ref, expires_at=expires_at), paths)
        for label, paths in identity_folders(root)]
    report = run_batch(requests, db_path=db_path, model_id=model_id, threads=threads,
                       skip_rejected=skip_rejected, dry_run=dry_run, audit_path=audit_path,
                       actor=_actor(enrolled_by), as_json=as_json)
    _output(report, as_json, db_path)

