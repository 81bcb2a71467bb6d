"""Embedders without models: registry and configs, chip checks, the Edge TPU backend's
errors, quantisation, and embed_faces' choices (largest, all, whole-image fallback)."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from pydantic import TypeAdapter

from device.errors import ConfigError, HardwareError, ModelError
from device.types import Detection, Embedding, FaceChip, Image
from device.vision import embed as em
from device.vision import stills
from device.vision.align import AlignTemplate, apply_transform
from device.vision.dlib_tflite import DlibTFLiteEmbedder, DlibTFLiteEmbedderConfig
from device.vision.edgetpu_embedder import (
    EdgeTpuEmbedder,
    EdgeTpuEmbedderConfig,
    dequantise,
    quantise,
)
from device.vision.models import ModelSpec

TEMPLATE = AlignTemplate(
    size=(150, 150),
    keypoints=("right_eye", "left_eye", "mouth_center"),
    points=np.array([[46.0, 46.0], [101.0, 46.0], [73.5, 104.0]], np.float32),
    border="replicate",
    box=(6.0, 0.0, 134.0, 138.0),
)


def _edgetpu_available() -> bool:
    try:
        ctypes.CDLL("libedgetpu.so.1")
    except OSError:
        return False
    return True


# ----------------------------------------------------------------------------------
# Registry and configs


def test_registry_covers_every_config_type() -> None:
    from device.vision.dlib_int8 import DlibInt8EmbedderConfig
    from device.vision.mobilefacenet import MobileFaceNetEmbedderConfig

    types = {DlibTFLiteEmbedderConfig().type, EdgeTpuEmbedderConfig(model="x").type,
             DlibInt8EmbedderConfig().type, MobileFaceNetEmbedderConfig().type}
    assert set(em.EMBEDDERS) == types
    adapter: TypeAdapter[object] = TypeAdapter(em.EmbedderConfig)
    int8 = adapter.validate_python({"type": "dlib_int8", "num_threads": 1})
    assert isinstance(int8, DlibInt8EmbedderConfig) and int8.model == "dlib-resnet-v1-int8"


def test_configs_are_chosen_by_type_and_refuse_typos() -> None:
    adapter: TypeAdapter[object] = TypeAdapter(em.EmbedderConfig)
    dlib = adapter.validate_python({"type": "dlib_tflite", "num_threads": 1})
    assert isinstance(dlib, DlibTFLiteEmbedderConfig) and dlib.flip_average
    tpu = adapter.validate_python({"type": "edgetpu", "model": "facenet-edgetpu"})
    assert isinstance(tpu, EdgeTpuEmbedderConfig)
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        adapter.validate_python({"type": "dlib_tflite", "flip_avrage": False})
    with pytest.raises(ValidationError):
        adapter.validate_python({"type": "edgetpu"})  # the model must be named
    with pytest.raises(ValidationError):
        adapter.validate_python({"type": "dlib_tflite", "border": "mirror"})


def test_every_config_field_is_described() -> None:
    for model in (DlibTFLiteEmbedderConfig, EdgeTpuEmbedderConfig):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name}"


def test_config_errors_from_toml_name_the_key(tmp_path: Path) -> None:
    from pydantic import Field

    from device.config import Section, load_toml

    class Wrapper(Section):
        embedder: em.EmbedderConfig = Field(description="x")

    path = tmp_path / "c.toml"
    path.write_text('[embedder]\ntype = "dlib_tflite"\nnum_threads = 0\n')
    with pytest.raises(ConfigError, match=r"c\.toml:3: embedder\.num_threads"):
        load_toml(path, Wrapper)


# ----------------------------------------------------------------------------------
# Chips and vectors


def _chip(width: int, height: int, dtype: type = np.uint8) -> FaceChip:
    return FaceChip(image=np.zeros((height, width, 3), dtype), detection=None,
                    transform=np.eye(2, 3, dtype=np.float32))


def test_wrong_chip_size_is_refused_with_both_sizes() -> None:
    em.check_chip_size(_chip(150, 150), (150, 150), "dlib-resnet-v1")
    with pytest.raises(ModelError, match=r"dlib-resnet-v1 takes 150x150 .*shape \(112, 112, 3\)"):
        em.check_chip_size(_chip(112, 112), (150, 150), "dlib-resnet-v1")
    with pytest.raises(ModelError, match="uint8"):
        em.check_chip_size(_chip(150, 150, np.float32), (150, 150), "dlib-resnet-v1")


def test_l2_normalise() -> None:
    v = em.l2_normalise([3.0, 4.0])
    assert v.dtype == np.float32
    np.testing.assert_allclose(v, [0.6, 0.8])
    with pytest.raises(ModelError, match="zero"):
        em.l2_normalise([0.0, 0.0])
    with pytest.raises(ModelError, match="non-finite"):
        em.l2_normalise([np.inf, 0.0])


def test_quantise_and_back() -> None:
    values = np.array([-1.0, 0.0, 0.5, 1.0, 5.0], np.float32)
    q = quantise(values, scale=1 / 127, zero_point=0, dtype="int8")
    assert q.dtype == np.int8
    assert list(q) == [-127, 0, 64, 127, 127]  # clipped at the top
    back = dequantise(q, 1 / 127, 0)
    np.testing.assert_allclose(back[:4], [-1.0, 0.0, 64 / 127, 1.0], atol=1e-6)
    u = quantise(np.array([0.0, 1.0], np.float32), scale=1 / 255, zero_point=0, dtype="uint8")
    assert list(u) == [0, 255]
    np.testing.assert_array_equal(dequantise(np.array([1.5]), 0.0, 0), [1.5])
    with pytest.raises(ModelError, match="int8/uint8"):
        quantise(values, 0.1, 0, "float32")
    with pytest.raises(ModelError, match="scale"):
        quantise(values, 0.0, 0, "int8")


# ----------------------------------------------------------------------------------
# Edge TPU backend: every missing piece gives an error naming what to fix


def _spec(model_id: str, **extra: object) -> ModelSpec:
    return ModelSpec(id=model_id, kind=str(extra.pop("kind", "embedder")), source="url",
                     sha256="0" * 64, path=f"{model_id}.tflite", url="https://example.invalid/m",
                     extra=dict(extra))


TPU_EXTRA: dict[str, object] = {
    "edgetpu": True,
    "input": {"width": 112, "height": 112, "dtype": "int8", "mean": 127.5, "std": 128.0},
    "template": {"size": [112, 112], "keypoints": ["right_eye", "left_eye", "mouth_center"],
                 "points": [[38, 52], [74, 52], [56, 92]]},
}


def test_edgetpu_model_not_in_manifest() -> None:
    manifest = {"dlib-resnet-v1": _spec("dlib-resnet-v1")}
    with pytest.raises(ModelError, match=r"'facenet-edgetpu' is not in models/manifest\.toml.*"
                       r"edgetpu = true.*input = \{ width, height.*template"):
        EdgeTpuEmbedder(EdgeTpuEmbedderConfig(model="facenet-edgetpu"), manifest=manifest)


def test_edgetpu_entry_that_is_not_an_edgetpu_embedder() -> None:
    manifest = {"det": _spec("det", kind="detector", edgetpu=True)}
    with pytest.raises(ModelError, match="not declared as an Edge TPU embedder"):
        EdgeTpuEmbedder(EdgeTpuEmbedderConfig(model="det"), manifest=manifest)


def test_edgetpu_entry_without_template() -> None:
    extra = {k: v for k, v in TPU_EXTRA.items() if k != "template"}
    manifest = {"tpu": _spec("tpu", **extra)}
    with pytest.raises(ModelError, match=r"no \[models\.tpu\.template\]"):
        EdgeTpuEmbedder(EdgeTpuEmbedderConfig(model="tpu"), manifest=manifest)


def test_edgetpu_template_size_must_match_input() -> None:
    extra = dict(TPU_EXTRA, input={"width": 160, "height": 160})
    with pytest.raises(ModelError, match=r"template's size \(112, 112\) is not the model's"):
        EdgeTpuEmbedder(EdgeTpuEmbedderConfig(model="tpu"),
                           manifest={"tpu": _spec("tpu", **extra)})


@pytest.mark.skipif(_edgetpu_available(), reason="an Edge TPU runtime is installed here")
def test_edgetpu_absent_is_a_hardware_error_saying_what_to_check(tmp_path: Path) -> None:
    manifest = {"tpu": _spec("tpu", **TPU_EXTRA)}
    with pytest.raises(HardwareError, match=r"Edge TPU.*libedgetpu1-std.*plugdev"):
        EdgeTpuEmbedder(EdgeTpuEmbedderConfig(model="tpu"), cache_dir=tmp_path,
                           manifest=manifest)


def test_edgetpu_model_file_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from device.vision import runtime

    monkeypatch.setattr(runtime, "load_edgetpu_delegate", lambda device=None: object())
    manifest = {"tpu": _spec("tpu", **TPU_EXTRA)}
    with pytest.raises(ModelError, match=r"model tpu is not downloaded \(expected .*tpu\.tflite"):
        EdgeTpuEmbedder(EdgeTpuEmbedderConfig(model="tpu"), cache_dir=tmp_path,
                           manifest=manifest)


def test_create_embedder_dispatches_on_type() -> None:
    with pytest.raises(ModelError, match=r"is not in models/manifest\.toml"):
        em.create_embedder(EdgeTpuEmbedderConfig(model="nope"), manifest={})


def test_dlib_embedder_without_template(tmp_path: Path) -> None:
    spec = _spec("dlib-resnet-v1", input={"width": 150, "height": 150})
    with pytest.raises(ModelError, match="template"):
        DlibTFLiteEmbedder(manifest={"dlib-resnet-v1": spec}, cache_dir=tmp_path)


# ----------------------------------------------------------------------------------
# embed_faces


class FakeEmbedder:
    """Embeds a chip as its mean colour per channel (plus 1, never zero)."""

    model_id = "fake"
    input_size = (150, 150)
    template = TEMPLATE

    def __init__(self) -> None:
        self.chips: list[FaceChip] = []

    def embed(self, chips: Sequence[FaceChip]) -> list[Embedding]:
        out = []
        for chip in chips:
            em.check_chip_size(chip, self.input_size, self.model_id)
            self.chips.append(chip)
            vec = chip.image.reshape(-1, 3).mean(axis=0) + 1.0
            out.append(Embedding(vector=em.l2_normalise(vec), model_id=self.model_id))
        return out

    def close(self) -> None:
        pass


class FakeDetector:
    def __init__(self, faces: list[Detection]) -> None:
        self.faces = faces

    def detect(self, image: Image, timer: object = None) -> list[Detection]:
        return list(self.faces)

    def close(self) -> None:
        pass


def _face(x: float, y: float, size: float) -> Detection:
    """A frontal face whose keypoints sit where the template wants them, scaled."""
    s = size / 150.0
    kps = apply_transform(np.array([[s, 0, x], [0, s, y]]), TEMPLATE.points)
    six = (tuple(kps[0]), tuple(kps[1]), (0.0, 0.0), tuple(kps[2]), (0.0, 0.0), (0.0, 0.0))
    return Detection(box=(x, y, size, size), score=0.9,
                     keypoints=tuple((float(a), float(b)) for a, b in six))


def test_largest_face_only_by_default() -> None:
    image = np.zeros((400, 600, 3), np.uint8)
    faces = [_face(10, 10, 60), _face(200, 100, 200), _face(450, 10, 100)]
    embedder = FakeEmbedder()
    out = stills.embed_faces(image, FakeDetector(faces), embedder)
    assert len(out) == 1
    assert out[0].box == (200, 100, 200, 200)
    assert out[0].detection is faces[1] and not out[0].fallback
    assert out[0].embedding.model_id == "fake"


def test_all_faces_largest_first() -> None:
    image = np.zeros((400, 600, 3), np.uint8)
    faces = [_face(10, 10, 60), _face(200, 100, 200), _face(450, 10, 100)]
    out = stills.embed_faces(image, FakeDetector(faces), FakeEmbedder(), all_faces=True)
    assert [f.box[2] for f in out] == [200, 100, 60]


def test_no_face_gives_nothing_or_the_whole_image() -> None:
    image = np.zeros((350, 350, 3), np.uint8)
    image[:, 175:] = 200
    embedder = FakeEmbedder()
    assert stills.embed_faces(image, FakeDetector([]), embedder) == []
    out = stills.embed_faces(image, FakeDetector([]), embedder, fallback_whole=True)
    assert len(out) == 1 and out[0].fallback and out[0].detection is None
    assert out[0].box == (0.0, 0.0, 350.0, 350.0)
    # The whole image is placed where a detector's face box would land in the chip.
    chip = embedder.chips[-1]
    corners = apply_transform(chip.transform, [[0, 0], [350, 350]])
    np.testing.assert_allclose(corners.mean(axis=0), [6 + 67, 0 + 69], atol=1e-3)


def test_aligned_chip_puts_keypoints_on_the_template() -> None:
    image = np.zeros((400, 600, 3), np.uint8)
    face = _face(200, 100, 200)
    embedder = FakeEmbedder()
    stills.embed_faces(image, FakeDetector([face]), embedder)
    chip = embedder.chips[-1]
    kps = np.array([face.keypoints[i] for i in TEMPLATE.indices])
    np.testing.assert_allclose(apply_transform(chip.transform, kps), TEMPLATE.points, atol=1e-3)
