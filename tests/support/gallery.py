"""Shared by the gallery store and CLI tests: seeded unit vectors, faces, raw-file scans."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from device.gallery.store import GalleryStore, NewFace, NewIdentity
from device.types import Embedding

MODEL = "test-embedder-v1"
DIM = 128
T0 = 1_750_000_000.0  # 2025-06-15


class Clock:
    """A settable clock: ``clock()`` returns ``clock.now``."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FaceMaker:
    """Seeded random unit vectors wrapped as :class:`NewFace` with unique image hashes."""

    def __init__(self, seed: int = 0, dim: int = DIM, model_id: str = MODEL) -> None:
        self.rng = np.random.default_rng(seed)
        self.dim = dim
        self.model_id = model_id
        self.count = 0

    def vector(self) -> np.ndarray:
        v = self.rng.normal(size=self.dim)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def face(self, vector: np.ndarray | None = None, model_id: str | None = None) -> NewFace:
        self.count += 1
        sha = hashlib.sha256(f"image-{self.count}-{self.rng.integers(1 << 60)}".encode())
        vec = self.vector() if vector is None else vector
        return NewFace(Embedding(vec, model_id or self.model_id), 0.5 + self.count % 5 / 10,
                       sha.hexdigest())

    def faces(self, n: int) -> list[NewFace]:
        return [self.face() for _ in range(n)]


def blob(face: NewFace) -> bytes:
    """The bytes the store keeps for a face already of unit length."""
    return np.asarray(face.embedding.vector, dtype="<f4").tobytes()


def raw_files(db: Path) -> dict[str, bytes]:
    """The raw bytes of a database, its WAL and its shared-memory file (those that exist)."""
    out = {}
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if path.exists():
            out[path.name] = path.read_bytes()
    return out


def where(files: dict[str, bytes], needle: bytes) -> list[str]:
    """The names of the files that contain ``needle``."""
    return [name for name, data in files.items() if needle in data]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def enroll(store: GalleryStore, maker: FaceMaker, label: str, n: int = 3,
           **fields: object) -> tuple[str, list[NewFace]]:
    """Enroll ``label`` with ``n`` fresh faces; returns the id and the faces."""
    faces = maker.faces(n)
    ident = store.add_identity_with_faces(NewIdentity(label=label, **fields), faces)  # type: ignore[arg-type]
    return ident.id, faces
