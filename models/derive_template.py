"""Derive the alignment template of dlib's face encoder for BlazeFace keypoints, from data.

dlib's encoder (``dlib-resnet-v1``) was trained on chips cut by
``dlib.get_face_chip(img, shape, size=150, padding=0.25)`` from its 5-point shape
predictor (eye corners and the base of the nose). facegate has BlazeFace's keypoints
instead (eye centres, nose tip, mouth centre, ear tragions), so the question is: where
do *BlazeFace's* keypoints land in *dlib's* chip? This script measures it:

1. On each photo, dlib's HOG detector (upsampled once) and 5-point shape predictor
   give ``dlib.get_face_chip_details(shape, 150, 0.25)``: a rectangle and an angle.
   :func:`chip_mapping` turns them into the similarity from image to chip exactly as
   dlib's ``get_mapping_to_chip`` does (checked against ``dlib.get_face_chip``'s
   pixels on the first faces).
2. facegate's still-photo face finder (BlazeFace full-range, merged with short-range
   on the photo zoomed out by 20 %; keypoints refined by a full-range pass on a crop
   three times the face) runs on the same photo. Each dlib face is matched to the BlazeFace face
   whose box holds the centre of dlib's five landmarks (unique matches only).
3. BlazeFace's keypoints and box are mapped into dlib's chip (continuous pixel
   coordinates: pixel ``i`` spans ``[i, i + 1)``).
4. Robust mean: faces whose keypoints sit further from the per-coordinate median
   than 3.5 robust standard deviations (1.4826 × MAD of the per-face RMS distance)
   are dropped (profile faces, mismatches); the template is the mean of the rest.

It also reports, per keypoint subset, how far the chip facegate would cut (least-
squares similarity from the subset onto the template) is from dlib's chip: the RMS
displacement of a 7×7 grid over the chip's central 90×90 pixels, median and 90th
percentile. That is how the keypoints were chosen (ears are unreliable under yaw).

The photos are read in place from ``../shared/datasets`` (never copied): deepface,
media (single, group, enrolment photos, every 5th frame of the video) and diversity.
LFW is left out so the template is not derived on the acceptance set; ``--lfw N``
adds every N-th LFW image as a cross-check and prints that template separately.

Run: ``.venv/bin/python models/derive_template.py [--datasets DIR] [--lfw 5]``.
It needs the test-only dependencies dlib-bin and face_recognition_models.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from device.imageio import read_image  # noqa: E402
from device.types import KEYPOINT_NAMES, Image  # noqa: E402
from device.vision.align import apply_transform, similarity_transform  # noqa: E402
from device.vision.blazeface import BlazeFaceConfig, BlazeFaceDetector  # noqa: E402
from device.vision.stills import StillFaceFinder  # noqa: E402

CHIP = 150
PADDING = 0.25
MAX_SIDE = 1000
SUBSETS: dict[str, tuple[int, ...]] = {
    "eyes+mouth": (0, 1, 3),
    "eyes+nose+mouth": (0, 1, 2, 3),
    "eyes+nose": (0, 1, 2),
    "all six": (0, 1, 2, 3, 4, 5),
}


@dataclass(frozen=True)
class Face:
    source: str
    chip_keypoints: np.ndarray  # (6, 2) BlazeFace keypoints in dlib chip coordinates
    chip_box: np.ndarray  # (4,) x, y, w, h of BlazeFace's box in dlib chip coordinates


def chip_mapping(details: Any) -> np.ndarray:
    """dlib's ``get_mapping_to_chip``: image pixel centres → chip pixel centres (2×3).

    dlib maps the rotated corners of ``details.rect`` (tl, tr, br) onto
    ``(0, 0), (cols - 1, 0), (cols - 1, rows - 1)``.
    """
    import cv2

    r = details.rect
    cx, cy = (r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2
    c, s = math.cos(details.angle), math.sin(details.angle)

    def rot(x: float, y: float) -> tuple[float, float]:
        return (c * (x - cx) - s * (y - cy) + cx, s * (x - cx) + c * (y - cy) + cy)

    src = np.array([rot(r.left(), r.top()), rot(r.right(), r.top()), rot(r.right(), r.bottom())])
    dst = np.array([(0, 0), (details.cols - 1, 0), (details.cols - 1, details.rows - 1)], float)
    return cv2.getAffineTransform(src.astype(np.float32), dst.astype(np.float32)).astype(float)


def to_chip(mapping: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Continuous image coordinates → continuous chip coordinates under dlib's mapping."""
    return apply_transform(mapping, np.asarray(points, float) - 0.5) + 0.5


def photos(datasets: Path, lfw_every: int) -> Iterator[tuple[str, Image]]:
    """(source, RGB image) for every photo used, longer side at most MAX_SIDE."""
    import cv2

    from device.imageio import IMAGE_SUFFIXES

    def files(pattern: str) -> list[Path]:
        return sorted(p for p in datasets.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES)

    groups = {
        "deepface": files("deepface/*"),
        "media": files("media/single/*") + files("media/group/*") + files("media/video/enroll/*"),
        "diversity": files("diversity/*/*"),
    }
    if lfw_every:
        groups["lfw"] = files("lfw/people/*/*")[::lfw_every]
    for source, paths in groups.items():
        for path in paths:
            yield source, read_image(path)
    video = datasets / "media" / "video" / "short_hamilton_clip.mp4"
    if video.is_file():
        cap = cv2.VideoCapture(str(video))
        index = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if index % 5 == 0:
                yield "video", np.ascontiguousarray(frame[:, :, ::-1])
            index += 1
        cap.release()


def collect(datasets: Path, lfw_every: int) -> tuple[list[Face], dict[str, int]]:
    import cv2
    import dlib
    import face_recognition_models as frm

    hog = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    full = BlazeFaceDetector(BlazeFaceConfig(model="full"))
    short = BlazeFaceDetector(BlazeFaceConfig(model="short"))
    finder = StillFaceFinder(full, close_range=short, refiner=full)
    faces: list[Face] = []
    counts = {"photos": 0, "dlib_faces": 0, "matched": 0}
    checked = 0
    for source, photo in photos(datasets, lfw_every):
        counts["photos"] += 1
        image = photo
        if max(photo.shape[:2]) > MAX_SIDE:
            f = MAX_SIDE / max(photo.shape[:2])
            image = cv2.resize(photo, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        found = finder.detect(image)
        for rect in hog(image, 1):
            counts["dlib_faces"] += 1
            shape = predictor(image, rect)
            landmarks = np.array([(shape.part(i).x, shape.part(i).y) for i in range(5)], float)
            centre = landmarks.mean(axis=0)
            inside = [
                d for d in found
                if d.box[0] <= centre[0] <= d.box[0] + d.box[2]
                and d.box[1] <= centre[1] <= d.box[1] + d.box[3]
            ]
            if len(inside) != 1:
                continue
            details = dlib.get_face_chip_details(shape, CHIP, PADDING)
            mapping = chip_mapping(details)
            scale = float(np.hypot(*mapping[:, 0]))
            # The mapping reproduces dlib's own chip (where dlib does not shrink the
            # photo with an image pyramid first, i.e. when the chip is not < half size).
            if checked < 5 and scale > 0.55:
                ours = cv2.warpAffine(image, mapping, (CHIP, CHIP), flags=cv2.INTER_LINEAR)
                theirs = np.asarray(dlib.get_face_chip(image, shape, CHIP, PADDING))
                diff = float(np.abs(ours.astype(float) - theirs).mean())
                if diff > 2.0:
                    raise SystemExit(f"chip mapping disagrees with dlib: mean |diff| {diff:.2f}")
                checked += 1
            d = inside[0]
            x, y, w, h = d.box
            corners = to_chip(mapping, np.array([[x, y], [x + w, y + h]]))
            faces.append(
                Face(
                    source=source,
                    chip_keypoints=to_chip(mapping, np.array(d.keypoints)),
                    chip_box=np.array([*corners[0], *(corners[1] - corners[0])]),
                )
            )
            counts["matched"] += 1
    full.close()
    short.close()
    return faces, counts


def robust_mean(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``(N, K, 2)`` after dropping faces far from the median; and the kept mask."""
    median = np.median(points, axis=0)
    dist = np.sqrt(((points - median) ** 2).sum(axis=2).mean(axis=1))
    mad = 1.4826 * np.median(np.abs(dist - np.median(dist)))
    keep = dist <= np.median(dist) + 3.5 * mad
    return points[keep].mean(axis=0), keep


def chip_error(chip_points: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Per face: RMS displacement (chip pixels) between facegate's chip and dlib's."""
    grid = np.stack(np.meshgrid(np.linspace(30, 120, 7), np.linspace(30, 120, 7)), -1)
    grid = grid.reshape(-1, 2)
    errors = []
    for pts in chip_points:
        m = similarity_transform(pts, template)
        errors.append(math.sqrt(((apply_transform(m, grid) - grid) ** 2).sum(axis=1).mean()))
    return np.array(errors)


def report(faces: list[Face], title: str) -> np.ndarray:
    kps = np.stack([f.chip_keypoints for f in faces])
    boxes = np.stack([f.chip_box for f in faces])
    mean, keep = robust_mean(kps)
    spread = kps[keep].std(axis=0)
    print(f"\n== {title}: {len(faces)} faces, {int(keep.sum())} kept after outlier removal")
    by_source: dict[str, int] = {}
    for f, k in zip(faces, keep, strict=True):
        by_source[f.source] = by_source.get(f.source, 0) + int(k)
    print("   kept by source: " + ", ".join(f"{s} {n}" for s, n in sorted(by_source.items())))
    for name, p, sd in zip(KEYPOINT_NAMES, mean, spread, strict=True):
        print(f"   {name:<18} ({p[0]:7.2f}, {p[1]:7.2f})   sd ({sd[0]:5.2f}, {sd[1]:5.2f})")
    box = boxes[keep].mean(axis=0)
    print(f"   box (x, y, w, h)   ({', '.join(f'{v:.2f}' for v in box)})")
    print("   chip error vs dlib's chip (RMS px over the central 90x90), by keypoint subset:")
    for name, subset in SUBSETS.items():
        err = chip_error(kps[keep][:, subset], mean[list(subset)])
        print(f"     {name:<16} median {np.median(err):.2f}  p90 {np.percentile(err, 90):.2f}")
    return np.concatenate([mean.ravel(), box])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--lfw", type=int, default=0, help="also use every N-th LFW image")
    parser.add_argument("--subset", default="eyes+mouth", choices=sorted(SUBSETS))
    args = parser.parse_args()
    faces, counts = collect(args.datasets, args.lfw)
    print(
        f"{counts['photos']} photos, {counts['dlib_faces']} dlib faces, "
        f"{counts['matched']} matched to a BlazeFace face"
    )
    main_faces = [f for f in faces if f.source != "lfw"]
    result = report(main_faces, "template (deepface, media, video, diversity)")
    if args.lfw:
        check = report([f for f in faces if f.source == "lfw"], "cross-check on LFW only")
        print(f"   max |difference| from the template: {np.abs(check - result).max():.2f} px")
    subset = SUBSETS[args.subset]
    points = result[:12].reshape(6, 2)[list(subset)]
    box = result[12:]
    names = ", ".join(f'"{KEYPOINT_NAMES[i]}"' for i in subset)
    pts = ", ".join(f"[{x:.2f}, {y:.2f}]" for x, y in points)
    print("\n# models/manifest.toml, [models.dlib-resnet-v1]:")
    print(
        f'template = {{ size = [{CHIP}, {CHIP}], keypoints = [{names}], points = [{pts}], '
        f'border = "replicate", box = [{", ".join(f"{v:.2f}" for v in box)}] }}'
    )


if __name__ == "__main__":
    main()
