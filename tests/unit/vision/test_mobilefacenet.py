"""MobileFaceNet backend: registry, input encoding, and galleries bound to their encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import TypeAdapter

from device.errors import EnrollmentError, GalleryError, ModelError
from device.gallery.store import GalleryStore
from device.types import Embedding
from device.vision import models as manifest
from device.vision.embed import EMBEDDERS, EmbedderConfig
from device.vision.mobilefacenet import (
    MobileFaceNetEmbedder,
    MobileFaceNetEmbedderConfig,
    encode,
    input_encoding,
)

SPEC = manifest.get_spec("mobilefacenet")


def test_registered_under_its_type() -> None:
    assert EMBEDDERS["mobilefacenet"] is MobileFaceNetEmbedder
    config = TypeAdapter(EmbedderConfig).validate_python({"type": "mobilefacenet"})
    assert isinstance(config, MobileFaceNetEmbedderConfig) and config.model == "mobilefacenet"
    with pytest.raises(ValueError):
        MobileFaceNetEmbedderConfig.model_validate({"type": "mobilefacenet", "colour": "bgr"})


def test_input_is_rgb_minus_127_5_over_128() -> None:
    assert input_encoding(SPEC) == (127.5, 128.0)
    chips = np.array([[[[0, 128, 255]]]], dtype=np.uint8)
    got = encode(chips, *input_encoding(SPEC))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got[0, 0, 0], [-0.99609375, 0.00390625, 0.99609375])


def test_manifest_entry_is_a_112_chip_192_d_model_with_pins() -> None:
    assert SPEC.extra["input"]["width"] == SPEC.extra["input"]["height"] == 112
    assert manifest.embedding_dim(SPEC) == 192
    up = SPEC.extra["upstream"]
    assert all(len(up[k]) == 64 for k in ("tarball_sha256", "model_sha256", "weights_sha256"))
    assert SPEC.extra["template"]["size"] == [112, 112]


def test_not_built_is_a_clear_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="mobilefacenet"):
        MobileFaceNetEmbedder(cache_dir=tmp_path)


def _vector(dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v)
    return out


def test_dlib_gallery_refuses_mobilefacenet(tmp_path: Path) -> None:
    db = tmp_path / "gallery.sqlite"
    with GalleryStore(db, model_id="dlib-resnet-v1", dim=128, create=True):
        pass
    with pytest.raises(GalleryError, match=r"holds embeddings of model 'dlib-resnet-v1'.*"
                       "'mobilefacenet'"):
        GalleryStore(db, model_id="mobilefacenet", dim=192)


def test_mobilefacenet_gallery_refuses_dlib_embeddings(tmp_path: Path) -> None:
    from device.gallery.records import EnrollmentBatch, NewFace, NewIdentity

    with GalleryStore(tmp_path / "g.sqlite", model_id="mobilefacenet", dim=192,
                      create=True) as store:
        with pytest.raises(GalleryError, match=r"'mobilefacenet'.*'dlib-resnet-v1'"):
            GalleryStore(tmp_path / "g.sqlite", model_id="dlib-resnet-v1", dim=128)
        face = NewFace(embedding=Embedding(vector=_vector(128, 1), model_id="dlib-resnet-v1"),
                       quality=1.0, image_sha256="0" * 64)
        with pytest.raises(EnrollmentError, match=r"model 'dlib-resnet-v1'.*'mobilefacenet'"):
            store.enroll_many([EnrollmentBatch(NewIdentity(label="ada"), (face,))])
