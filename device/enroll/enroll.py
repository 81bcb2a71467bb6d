"""Enrollment: photos of a person → checked, embedded faces → one gallery transaction.

Each photo must hold exactly one acceptable face. :func:`examine_photo` reads it
(an unreadable file is rejected as ``unreadable``), detects faces the way the quality
gate's enrollment thresholds were calibrated (BlazeFace *short-range*; a tight crop,
or a photo where nothing confident is found, is padded with black and detected
again, see :func:`detect_for_enrollment`), applies the one-face rule and the
enrollment quality preset (:func:`~device.vision.quality.assess_enrollment`), then
aligns and embeds the face. A rejected photo says why with the quality gate's
reasons (``no_face``, ``multiple_faces``, ``too_small``, ``blurred``, ``too_dark``,
``overexposed``, ``extreme_pose``, ``low_confidence``, ``partially_outside_frame``)
or one of :data:`UNREADABLE`, :data:`DUPLICATE`, :data:`UNALIGNABLE`, each with a
human-readable detail.

Batch policy: a batch either commits whole or leaves the gallery untouched, and the
report lists what was accepted and rejected and why: **all or nothing by default**.
One rejected photo, or one identity that cannot be enrolled (its label is taken, too
many photos), and nothing is written; the report lists
every photo with its verdict. ``skip_rejected=True`` is the explicit opt-out: the
accepted photos are committed (still in one transaction) and the rejected ones are
listed as left out. A batch is one identity (``gallery enroll``) or a whole folder
tree (``gallery enroll-dir``), and is written with one
:meth:`~device.gallery.store.GalleryStore.enroll_many` call, so readers see all of
it or none of it.

Duplicates: every photo's file sha256 is stored with its face; a photo whose bytes
are already in the gallery, or appear twice in the batch, is rejected as
``duplicate``. Embeddings live only in memory until the commit; the report never
holds one, and neither does the audit record (identity id and face count only).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from pydantic import Field

from device.audit.log import AuditLog
from device.config import Section
from device.errors import AuditError, EnrollmentError, ImageError
from device.gallery.records import (
    DEFAULT_MAX_FACES_PER_IDENTITY,
    EnrollmentBatch,
    NewFace,
    NewIdentity,
)
from device.gallery.store import GalleryStore
from device.imageio import iter_image_files, read_image
from device.types import Detection, Image
from device.vision.align import align
from device.vision.detect import Detector
from device.vision.embed import Embedder
from device.vision.quality import (
    EnrollmentVerdict,
    QualityConfig,
    QualityReason,
    assess_enrollment,
    head_pose,
)
from device.vision.stills import refine_detection

logger = logging.getLogger(__name__)

#: The file cannot be read or decoded as an image.
UNREADABLE = "unreadable"
#: The same image bytes are already enrolled, or appear twice in the batch.
DUPLICATE = "duplicate"
#: The face has no keypoints to align it with (a detector without landmarks).
UNALIGNABLE = "unalignable"

#: Called after each photo is examined (for progress bars).
Progress = Callable[[Path], object]


#: Below this estimated |yaw| (degrees) a photo counts as frontal.
FRONTAL_YAW_DEG = 15.0


class EnrollmentConfig(Section):
    """How enrollment photos are examined."""

    quality: QualityConfig = Field(
        default_factory=QualityConfig.enrollment,
        description="Quality thresholds; default the stricter enrollment preset.",
    )
    tight_fraction: float = Field(
        0.6, gt=0.0, le=10.0,
        description="A face whose box side is at least this share of the photo's shorter "
        "side is a tight crop: the photo is padded and detected again (BlazeFace scores "
        "frame-filling faces low).",
    )
    pad: float = Field(
        0.25, ge=0.0, le=1.0,
        description="Black border added on each side of a padded photo, as a share of its "
        "height (the quality gate's calibration used a quarter).",
    )


@dataclass(frozen=True)
class PhotoResult:
    """The verdict on one enrollment photo.

    Attributes:
        path: The file.
        reasons: Why it is rejected (empty when accepted).
        detail: What was measured, for people (e.g. ``sharpness 0.041 < 0.08``).
        image_sha256: sha256 of the file's bytes (``None`` if it could not be read).
        faces: Faces detected with at least the enrolment confidence floor (a
            low-confidence candidate is not counted: it is the ``no_face`` case).
        quality: Overall quality score of the enrolled face (``None`` if none).
        padded: Whether the photo was padded before detection.
        detections: Every candidate the detector returned, whatever its confidence.
        yaw: Estimated yaw of the enrolled face in degrees
            (:func:`~device.vision.quality.head_pose`; ``None`` if none).
    """

    path: Path
    reasons: tuple[str, ...]
    detail: str = ""
    image_sha256: str | None = None
    faces: int = 0
    quality: float | None = None
    padded: bool = False
    detections: int = 0
    yaw: float | None = None

    @property
    def accepted(self) -> bool:
        """True when the photo may be enrolled."""
        return not self.reasons

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.path), "accepted": self.accepted, "reasons": list(self.reasons),
            "detail": self.detail, "image_sha256": self.image_sha256, "faces": self.faces,
            "quality": None if self.quality is None else round(self.quality, 4),
            "padded": self.padded, "detections": self.detections,
            "yaw": None if self.yaw is None else round(self.yaw, 1),
        }


@dataclass(frozen=True)
class IdentityReport:
    """What happened to one identity of a batch.

    Attributes:
        label: Display name.
        photos: Every photo's verdict, in the order given.
        identity_id: The stored id, when written.
        problem: Why the identity as a whole cannot be enrolled (label taken, no
            acceptable photo, too many photos), ``None`` otherwise.
    """

    label: str
    photos: tuple[PhotoResult, ...]
    identity_id: str | None = None
    problem: str | None = None

    @property
    def accepted(self) -> tuple[PhotoResult, ...]:
        return tuple(p for p in self.photos if p.accepted)

    @property
    def rejected(self) -> tuple[PhotoResult, ...]:
        return tuple(p for p in self.photos if not p.accepted)

    @property
    def enrolled(self) -> bool:
        return self.identity_id is not None

    @property
    def only_frontal(self) -> bool:
        """Every accepted photo is frontal (estimated ``|yaw|`` below
        :data:`FRONTAL_YAW_DEG`): the identity has no photo of a turned head, so a
        camera seeing it from the side compares against frontal faces only."""
        yaws = [p.yaw for p in self.accepted if p.yaw is not None]
        return bool(yaws) and all(abs(y) < FRONTAL_YAW_DEG for y in yaws)

    @property
    def pose_warning(self) -> str | None:
        """The warning line for :attr:`only_frontal`, else ``None``."""
        if not self.only_frontal:
            return None
        return (f"only frontal photos (every accepted |yaw| < {FRONTAL_YAW_DEG:g}°): add "
                "photos with the head turned 15-45° so side views can be matched")

    def to_json(self) -> dict[str, object]:
        return {
            "label": self.label, "identity_id": self.identity_id, "enrolled": self.enrolled,
            "problem": self.problem, "accepted": len(self.accepted),
            "rejected": len(self.rejected), "photos": [p.to_json() for p in self.photos],
            "only_frontal": self.only_frontal, "pose_warning": self.pose_warning,
        }


@dataclass(frozen=True)
class EnrollmentReport:
    """The outcome of one enrollment batch.

    Attributes:
        identities: One report per identity, in the order given.
        committed: True when the gallery was written.
        reason: Why nothing was written (``None`` when committed).
        dry_run: The batch was only checked.
        acceptable: The batch was written, or (dry run) would have been.
    """

    identities: tuple[IdentityReport, ...]
    committed: bool
    reason: str | None = None
    dry_run: bool = False
    acceptable: bool = False

    @property
    def photos(self) -> tuple[PhotoResult, ...]:
        return tuple(p for i in self.identities for p in i.photos)

    @property
    def accepted(self) -> int:
        return sum(1 for p in self.photos if p.accepted)

    @property
    def rejected(self) -> int:
        return sum(1 for p in self.photos if not p.accepted)

    def to_json(self) -> dict[str, object]:
        return {
            "committed": self.committed, "acceptable": self.acceptable, "reason": self.reason,
            "dry_run": self.dry_run,
            "accepted": self.accepted, "rejected": self.rejected,
            "enrolled": sum(1 for i in self.identities if i.enrolled),
            "identities": [i.to_json() for i in self.identities],
        }


@dataclass(frozen=True)
class IdentityRequest:
    """One identity to enroll: its fields and its photos."""

    identity: NewIdentity
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class ExaminedPhoto:
    """A photo's verdict and, when accepted, its face (kept in memory only)."""

    result: PhotoResult
    face: NewFace | None = field(default=None, repr=False)


# --------------------------------------------------------------------- detection


def pad_image(image: Image, share: float) -> tuple[Image, int]:
    """``image`` with a black border of ``share`` × its height on every side."""
    pad = round(share * image.shape[0])
    if pad <= 0:
        return image, 0
    out = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return np.ascontiguousarray(out), pad


def _best_score(detections: Sequence[Detection]) -> float:
    return max((d.score for d in detections), default=0.0)


def detect_for_enrollment(
    image: Image, detector: Detector, config: EnrollmentConfig
) -> tuple[Image, list[Detection], bool]:
    """Detect faces in an enrollment photo, padding tight crops.

    The photo is searched as it is. If nothing reaches the enrollment confidence,
    or the largest face is a tight crop (side ≥ ``tight_fraction`` of the photo's
    shorter side), it is padded with black and searched again, and the pass with the
    more confident best face wins. The padded frame is returned with its detections
    so quality and alignment work on the same pixels (the black border is what dlib's
    chips hold outside a photo anyway).

    Returns:
        The frame searched, its detections, and whether it is the padded one.

    Raises:
        ModelError: The detector failed.
    """
    found = detector.detect(image)
    best = _best_score(found)
    short_side = min(image.shape[0], image.shape[1])
    largest = max((min(d.box[2], d.box[3]) for d in found), default=0.0)
    tight = largest >= config.tight_fraction * short_side
    if best >= config.quality.min_score and not tight:
        return image, found, False
    padded, pad = pad_image(image, config.pad)
    if pad == 0:
        return image, found, False
    again = detector.detect(padded)
    best_padded = _best_score(again)
    if best_padded > best or (tight and best_padded >= config.quality.min_score):
        return padded, again, True
    return image, found, False


# ------------------------------------------------------------------- verdicts


def _detail(verdict: EnrollmentVerdict, cfg: QualityConfig) -> str:
    """One phrase per reason, with the measured value and its limit."""
    rep = verdict.report
    parts: list[str] = []
    for reason in verdict.reasons:
        if reason is QualityReason.NO_FACE:
            parts.append("no face found")
        elif reason is QualityReason.MULTIPLE_FACES:
            parts.append(f"{verdict.faces - verdict.ignored} faces of similar size")
        elif rep is None:
            parts.append(str(reason))
        elif reason is QualityReason.TOO_SMALL:
            iod = "" if rep.interocular_px is None else (
                f", eyes {rep.interocular_px:.0f} px apart (min {cfg.min_interocular_px:.0f})")
            parts.append(f"face {rep.face_px:.0f} px (min {cfg.min_face_px:.0f}){iod}")
        elif reason is QualityReason.BLURRED:
            parts.append(f"sharpness {rep.sharpness:.3f} < {cfg.min_sharpness:g}")
        elif reason is QualityReason.TOO_DARK:
            parts.append(f"brightness {rep.exposure.mean:.0f} (min {cfg.min_brightness:.0f}), "
                         f"contrast {rep.exposure.dynamic_range:.0f} "
                         f"(min {cfg.min_dynamic_range:.0f})")
        elif reason is QualityReason.OVEREXPOSED:
            parts.append(f"brightness {rep.exposure.mean:.0f} (max {cfg.max_brightness:.0f}), "
                         f"{rep.exposure.saturated_fraction:.0%} clipped")
        elif reason is QualityReason.EXTREME_POSE and rep.pose is not None:
            p = rep.pose
            parts.append(f"yaw {p.yaw:.0f}° pitch {p.pitch:.0f}° roll {p.roll:.0f}° (max "
                         f"{cfg.max_yaw_deg:.0f}/{cfg.max_pitch_deg:.0f}/{cfg.max_roll_deg:.0f})")
        elif reason is QualityReason.LOW_CONFIDENCE:
            parts.append(f"detector score {rep.detector_score:.2f} < {cfg.min_score:g}")
        elif reason is QualityReason.PARTIALLY_OUTSIDE_FRAME:
            parts.append(f"{rep.inside_fraction:.0%} of the face inside the photo")
        else:
            parts.append(str(reason))
    return "; ".join(parts)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def examine_photo(
    path: Path, detector: Detector, embedder: Embedder, config: EnrollmentConfig | None = None,
    refiner: Detector | None = None,
) -> tuple[PhotoResult, NewFace | None]:
    """Check one enrollment photo and, if it is acceptable, embed its face.

    Args:
        path: The photo.
        detector: BlazeFace short-range (what the enrollment thresholds assume).
        embedder: The gallery's embedder.
        config: Detection and quality settings.
        refiner: BlazeFace full-range, to refine the accepted face's keypoints before
            alignment (:func:`~device.vision.stills.refine_detection`), as ``identify``
            and ``eval`` do for photos; ``None`` aligns on the first pass's keypoints.

    Returns:
        The verdict, and the face to store when accepted (``None`` otherwise).

    Raises:
        ModelError: The detector or embedder failed (not the photo's fault).
    """
    cfg = config or EnrollmentConfig()
    try:
        data = path.read_bytes()
    except OSError as exc:
        what = "no such file" if isinstance(exc, FileNotFoundError) else (exc.strerror or exc)
        return PhotoResult(path, (UNREADABLE,), str(what)), None
    sha = sha256_bytes(data)
    try:
        image = read_image(path)
    except ImageError as exc:
        return PhotoResult(path, (UNREADABLE,), str(exc), sha), None
    frame, found, padded = detect_for_enrollment(image, detector, cfg)
    verdict = assess_enrollment(frame, found, cfg.quality)
    best = _best_score(found)
    confident = sum(d.score >= cfg.quality.min_score for d in found)
    if found and best < cfg.quality.min_score:
        # Nothing the detector is confident about is a face, for enrollment: a dog
        # scores 0.6 on short-range BlazeFace.
        return PhotoResult(
            path, (str(QualityReason.NO_FACE),),
            f"no face with confidence >= {cfg.quality.min_score:g} "
            f"(best candidate {best:.2f})", sha, confident, None, padded, len(found)), None
    if not verdict.accepted or verdict.face is None or verdict.report is None:
        return PhotoResult(path, tuple(str(r) for r in verdict.reasons),
                           _detail(verdict, cfg.quality), sha, confident, None, padded,
                           len(found)), None
    face = verdict.face
    if refiner is not None:
        face = refine_detection(frame, face, refiner)
    try:
        chip = align(frame, face, embedder.template)
    except ValueError as exc:
        return PhotoResult(path, (UNALIGNABLE,), f"cannot align the face: {exc}", sha,
                           confident, None, padded, len(found)), None
    embedding = embedder.embed([chip])[0]
    quality = float(verdict.report.score)
    pose = head_pose(face)
    return (PhotoResult(path, (), "", sha, confident, quality, padded, len(found),
                        None if pose is None else pose.yaw),
            NewFace(embedding=embedding, quality=quality, image_sha256=sha))


# ------------------------------------------------------------------ the batch


def identity_folders(root: Path) -> list[tuple[str, tuple[Path, ...]]]:
    """``(label, photos)`` for each sub-folder of ``root`` (label = folder name), sorted.

    Photos are the image files in the folder and below it. Files directly in
    ``root`` belong to no one and are refused.

    Raises:
        EnrollmentError: ``root`` is not a folder, holds loose files, or has no
            sub-folder with images.
    """
    if not root.is_dir():
        raise EnrollmentError(f"{root}: not a folder (expected one sub-folder per identity)")
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if loose:
        raise EnrollmentError(
            f"{root}: holds files outside any identity folder ({', '.join(loose[:3])}"
            f"{'…' if len(loose) > 3 else ''}); put each person's photos in a sub-folder "
            "named after them")
    out: list[tuple[str, tuple[Path, ...]]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out.append((folder.name, tuple(iter_image_files(folder))))
    if not out:
        raise EnrollmentError(f"{root}: no identity sub-folders")
    return out


def collect_paths(paths: Sequence[Path]) -> tuple[Path, ...]:
    """Expand folders into their image files (sorted); files are kept as given.

    A folder with no image files is kept out; a missing path is kept in (it is then
    rejected as unreadable, so the report names it).
    """
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(iter_image_files(path))
        else:
            out.append(path)
    return tuple(out)


def examine(
    requests: Sequence[IdentityRequest],
    detector: Detector,
    embedder: Embedder,
    config: EnrollmentConfig | None = None,
    progress: Progress | None = None,
    refiner: Detector | None = None,
) -> list[list[ExaminedPhoto]]:
    """Examine every photo of every request; duplicates inside the batch are rejected.

    ``refiner`` as in :func:`examine_photo`.

    Raises:
        ModelError: The detector or embedder failed.
    """
    seen: dict[str, Path] = {}
    out: list[list[ExaminedPhoto]] = []
    for request in requests:
        results: list[ExaminedPhoto] = []
        for path in request.paths:
            result, face = examine_photo(path, detector, embedder, config, refiner)
            sha = result.image_sha256
            if sha is not None and sha in seen:
                result = replace(result, reasons=(*result.reasons, DUPLICATE),
                                 detail=_join(result.detail, f"same image as {seen[sha]}"))
                face = None
            elif sha is not None:
                seen[sha] = path
            results.append(ExaminedPhoto(result, face))
            if progress is not None:
                progress(path)
        out.append(results)
    return out


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _check_against_gallery(
    store: GalleryStore | None, requests: Sequence[IdentityRequest],
    examined: list[list[ExaminedPhoto]]
) -> list[str | None]:
    """Mark photos already in the gallery as duplicates; name identity-level problems.

    ``store`` None stands for a gallery that does not exist yet (empty).
    """
    shas = [e.result.image_sha256 for rows in examined for e in rows
            if e.result.image_sha256 is not None]
    owners = store.find_images(shas) if shas and store is not None else {}
    cap = store.max_faces_per_identity if store is not None else DEFAULT_MAX_FACES_PER_IDENTITY
    problems: list[str | None] = []
    labels_in_batch: set[str] = set()
    for request, rows in zip(requests, examined, strict=True):
        for k, item in enumerate(rows):
            sha = item.result.image_sha256
            if sha is not None and sha in owners:
                rows[k] = ExaminedPhoto(replace(
                    item.result, reasons=(*item.result.reasons, DUPLICATE),
                    detail=_join(item.result.detail,
                                 f"already enrolled for identity {owners[sha]}")))
        label = request.identity.label.strip()
        taken = store.find_by_label(label) if store is not None else ()
        accepted = sum(1 for e in rows if e.face is not None)
        problem: str | None = None
        if taken:
            problem = (f"label {label!r} is already enrolled as identity {taken[0].id}; "
                       "delete it first or choose another label")
        elif label in labels_in_batch:
            problem = f"label {label!r} appears twice in the batch"
        elif not request.paths:
            problem = "no photos given"
        elif accepted > cap:
            problem = f"{accepted} acceptable photos exceed the cap of {cap} faces per identity"
        elif accepted == 0:
            problem = "no acceptable photo"
        labels_in_batch.add(label)
        problems.append(problem)
    return problems


@dataclass(frozen=True)
class Plan:
    """What a batch would write.

    Attributes:
        reports: One per identity (no ids yet).
        writable: Indexes of the identities that would be written.
        reason: Why nothing would be written (``None`` when the batch is acceptable).
        rejected: Photos rejected.
    """

    reports: tuple[IdentityReport, ...]
    writable: tuple[int, ...]
    reason: str | None
    rejected: int

    @property
    def acceptable(self) -> bool:
        return self.reason is None


def plan(
    store: GalleryStore | None,
    requests: Sequence[IdentityRequest],
    examined: list[list[ExaminedPhoto]],
    *,
    skip_rejected: bool = False,
) -> Plan:
    """Check an examined batch against the gallery and the batch policy; write nothing.

    Args:
        store: The gallery; ``None`` for one that does not exist yet.
        requests: The identities, as given to :func:`examine`.
        examined: Its result (duplicates against the gallery are marked here).
        skip_rejected: See :func:`commit`.

    Raises:
        GalleryError: The gallery cannot be read.
    """
    problems = _check_against_gallery(store, requests, examined)
    reports = tuple(IdentityReport(r.identity.label.strip(), tuple(e.result for e in rows),
                                   None, p)
                    for r, rows, p in zip(requests, examined, problems, strict=True))
    rejected = sum(1 for r in reports for p in r.photos if not p.accepted)
    blocked = sum(1 for r in reports if r.problem is not None)
    writable = tuple(i for i, r in enumerate(reports) if r.problem is None)
    reason: str | None = None
    if not skip_rejected and (rejected or blocked):
        parts = []
        if rejected:
            parts.append(f"{rejected} of {sum(len(r.photos) for r in reports)} photos rejected")
        if blocked:
            parts.append(f"{blocked} of {len(reports)} identities cannot be enrolled")
        reason = " and ".join(parts) + "; the batch is all or nothing, so nothing was written"
    elif not writable:
        reason = "nothing acceptable to enroll; nothing was written"
    return Plan(reports, writable, reason, rejected)


def commit(
    store: GalleryStore,
    requests: Sequence[IdentityRequest],
    examined: list[list[ExaminedPhoto]],
    *,
    skip_rejected: bool = False,
    dry_run: bool = False,
    audit: AuditLog | None = None,
    actor: str = "cli",
) -> EnrollmentReport:
    """Write the examined batch in one transaction, or nothing (see the module doc).

    Args:
        store: The gallery.
        requests: The identities, as given to :func:`examine`.
        examined: Its result (duplicates against the gallery are added here).
        skip_rejected: Commit the accepted photos and leave the rejected ones (and
            identities without an acceptable photo) out, instead of refusing the whole
            batch.
        dry_run: Check everything, write nothing.
        audit: Record one ``enroll`` event per identity written (ids and counts only).
        actor: Who enrolled, for the audit record.

    Returns:
        The report; ``committed`` says whether the gallery changed.

    Raises:
        EnrollmentError: The store refused the write (nothing was written).
        AuditError: The gallery was written but an audit record failed.
    """
    checked = plan(store, requests, examined, skip_rejected=skip_rejected)
    if not checked.acceptable or dry_run:
        final = checked.reason or "dry run: the batch is acceptable; nothing was written"
        logger.info("enrollment batch not written: %s", final)
        return EnrollmentReport(checked.reports, False, final, dry_run, checked.acceptable)
    reports = list(checked.reports)
    batches = [EnrollmentBatch(requests[i].identity,
                               tuple(e.face for e in examined[i] if e.face is not None))
               for i in checked.writable]
    stored = store.enroll_many(batches)
    for i, ident in zip(checked.writable, stored, strict=True):
        reports[i] = replace(reports[i], identity_id=ident.id)
    version = store.metadata().version
    if audit is not None:
        try:
            for ident in stored:
                audit.record_enroll(ident.id, gallery_version=version,
                                    samples=ident.face_count, actor=actor)
        except AuditError as exc:
            raise AuditError(
                f"enrolled {len(stored)} identities, but recording them in the audit log "
                f"failed: {exc}") from exc
    logger.info("enrolled %d identities (%d faces)%s", len(stored),
                sum(i.face_count for i in stored),
                f"; left out {checked.rejected} rejected photos" if checked.rejected else "")
    return EnrollmentReport(tuple(reports), True, None, False, True)


def enroll_batch(
    store: GalleryStore,
    detector: Detector,
    embedder: Embedder,
    requests: Sequence[IdentityRequest],
    *,
    config: EnrollmentConfig | None = None,
    skip_rejected: bool = False,
    dry_run: bool = False,
    audit: AuditLog | None = None,
    actor: str = "cli",
    progress: Progress | None = None,
    refiner: Detector | None = None,
) -> EnrollmentReport:
    """Examine and commit several identities as one batch (see :func:`commit`).

    ``refiner`` as in :func:`examine_photo`.

    Raises:
        EnrollmentError: The embedder's model is not the gallery's, or the store
            refused the write; nothing was written.
        ModelError: The detector or embedder failed; nothing was written.
        AuditError: As :func:`commit`.
    """
    if embedder.model_id != store.model_id:
        raise EnrollmentError(
            f"the embedder runs model {embedder.model_id!r}, the gallery {store.path} holds "
            f"{store.model_id!r} embeddings; nothing was written")
    examined = examine(requests, detector, embedder, config, progress, refiner)
    return commit(store, requests, examined, skip_rejected=skip_rejected, dry_run=dry_run,
                  audit=audit, actor=actor)


def enroll_images(
    store: GalleryStore,
    detector: Detector,
    embedder: Embedder,
    label: str,
    paths: Sequence[Path],
    *,
    identity: NewIdentity | None = None,
    config: EnrollmentConfig | None = None,
    skip_rejected: bool = False,
    dry_run: bool = False,
    audit: AuditLog | None = None,
    actor: str = "cli",
    progress: Progress | None = None,
    refiner: Detector | None = None,
) -> EnrollmentReport:
    """Enroll one person from photos (files or folders of them), all or nothing.

    Args:
        store: The gallery.
        detector: BlazeFace short-range (what the enrollment thresholds assume).
        embedder: The gallery's embedder.
        label: Display name.
        paths: Photos, or folders searched recursively for them.
        identity: Other fields (expiry, consent reference…); its label is replaced.
        config: Detection and quality settings.
        skip_rejected: See :func:`commit`.
        dry_run: See :func:`commit`.
        audit: See :func:`commit`.
        actor: See :func:`commit`.
        progress: Called after each photo.
        refiner: See :func:`examine_photo`.

    Raises:
        EnrollmentError: See :func:`enroll_batch`.
        ModelError: See :func:`enroll_batch`.
        AuditError: See :func:`commit`.
    """
    fields = replace(identity, label=label) if identity is not None else NewIdentity(label=label)
    request = IdentityRequest(fields, collect_paths(paths))
    return enroll_batch(store, detector, embedder, [request], config=config,
                        skip_rejected=skip_rejected, dry_run=dry_run, audit=audit,
                        actor=actor, progress=progress, refiner=refiner)


def enroll_directory(
    store: GalleryStore,
    detector: Detector,
    embedder: Embedder,
    root: Path,
    *,
    template: NewIdentity | None = None,
    config: EnrollmentConfig | None = None,
    skip_rejected: bool = False,
    dry_run: bool = False,
    audit: AuditLog | None = None,
    actor: str = "cli",
    progress: Progress | None = None,
    refiner: Detector | None = None,
) -> EnrollmentReport:
    """Enroll every sub-folder of ``root`` as one identity, the whole tree as one batch.

    Args:
        template: Fields shared by every identity (expiry, legal basis…); each gets
            its folder's name as label.
        refiner: See :func:`examine_photo`.

    Raises:
        EnrollmentError: ``root`` is not a folder of identity folders, or as
            :func:`enroll_batch`.
        ModelError: See :func:`enroll_batch`.
        AuditError: See :func:`commit`.
    """
    base = template or NewIdentity(label="")
    requests = [IdentityRequest(replace(base, label=label, id=None), paths)
                for label, paths in identity_folders(root)]
    return enroll_batch(store, detector, embedder, requests, config=config,
                        skip_rejected=skip_rejected, dry_run=dry_run, audit=audit,
                        actor=actor, progress=progress, refiner=refiner)


def photo_count(requests: Sequence[IdentityRequest]) -> int:
    """Photos in a batch (for progress bars)."""
    return sum(len(r.paths) for r in requests)

