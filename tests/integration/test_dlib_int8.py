"""dlib's encoder as int8: a deterministic, pinned build whose ops the Edge TPU maps, refused
when changed, and close to the float encoder on real aligned chips."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from device.errors import ModelError
from device.modelzoo import build as model_build
from device.modelzoo.dlib_runner import DlibResnetTFLite
from device.vision import models as model_manifest
from device.vision.dlib_int8 import DlibInt8Embedder, DlibInt8EmbedderConfig
from device.vision.embed import create_embedder

schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
if importlib.util.find_spec("face_recognition_models") is None:
    pytest.skip("face_recognition_models (dlib's weights) is not installed",
                allow_module_level=True)

INT8_ID = "dlib-resnet-v1-int8"

#: Operators the Edge TPU compiler maps (coral.ai/docs/edgetpu/models-intro, "Supported
#: operations"), with the limits that matter here: PAD and MEAN along x/y only, a
#: CONCATENATION with a constant only as two inputs with an all-zero constant.
EDGETPU_OPS = {"ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D",
               "FULLY_CONNECTED", "MAX_POOL_2D", "MEAN", "PAD", "RELU", "QUANTIZE",
               "RESHAPE", "SOFTMAX", "L2_NORMALIZATION", "LOGISTIC", "MUL", "SUB"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    for model_id in ("dlib-resnet-v1", INT8_ID):
        assert model_build.build_model(model_manifest.get_spec(model_id), directory).built
    return directory


def _names(enum: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum).items() if not k.startswith("_")}


def test_the_build_is_deterministic_and_pinned(cache: Path, tmp_path: Path) -> None:
    spec = model_manifest.get_spec(INT8_ID)
    first = (cache / spec.path).read_bytes()
    again = model_build.build_model(spec, tmp_path)
    assert again.built and again.sha256 == spec.sha256
    assert (tmp_path / spec.path).read_bytes() == first
    # The second build of the same cache is a no-op.
    assert not model_build.build_model(spec, tmp_path).built


def test_a_changed_ranges_file_is_refused(tmp_path: Path) -> None:
    spec = model_manifest.get_spec(INT8_ID)
    path, _ = model_build.ranges_file(spec)
    changed = tmp_path / path.name
    changed.write_bytes(path.read_bytes().replace(b'"minmax"', b'"minmaX"'))
    spec = dataclasses.replace(spec, extra={**spec.extra, "ranges": {
        "path": str(changed.resolve()), "sha256": spec.extra["ranges"]["sha256"]}})
    with pytest.raises(ModelError, match=r"activation ranges.*sha256"):
        model_build.build_model(spec, tmp_path / "cache")


def test_every_op_is_one_the_edge_tpu_maps(cache: Path) -> None:
    data = (cache / model_manifest.get_spec(INT8_ID).path).read_bytes()
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    sub = model.subgraphs[0]
    ops = _names(schema.BuiltinOperator)
    types = _names(schema.TensorType)
    names = [ops[model.operatorCodes[op.opcodeIndex].builtinCode] for op in sub.operators]
    # Only the last op, the dequantisation of the 128 outputs, is not on the list: the
    # compiler leaves it to the CPU, after everything else ran on the TPU.
    assert names[-1] == "DEQUANTIZE" and names.count("DEQUANTIZE") == 1
    assert set(names[:-1]) <= EDGETPU_OPS, set(names[:-1]) - EDGETPU_OPS
    for op, name in zip(sub.operators, names, strict=True):
        if name in ("PAD", "MEAN"):
            const = sub.tensors[op.inputs[1]]
            values = np.frombuffer(bytes(model.buffers[const.buffer].data), "<i4")
            if name == "PAD":
                assert not values.reshape(4, 2)[[0, 3]].any(), "PAD beyond x/y"
            else:
                assert sorted(values.tolist()) == [1, 2]
        if name == "CONCATENATION":
            assert len(op.inputs) == 2
            const = sub.tensors[op.inputs[1]]
            data8 = np.frombuffer(bytes(model.buffers[const.buffer].data), np.int8)
            assert (data8 == const.quantization.zeroPoint[0]).all()  # real zeros
    # Everything but the DEQUANTIZE's output is int8 (activations, weights) or int32 (biases,
    # shapes); the input is int8 with the pixels folded in.
    inp = sub.tensors[sub.inputs[0]]
    assert types[inp.type] == "INT8"
    assert list(inp.quantization.scale) == [1.0] and list(inp.quantization.zeroPoint) == [-128]
    floats = [t for t in sub.tensors if types[t.type] == "FLOAT32"]
    assert [t.name for t in floats] == [sub.tensors[sub.outputs[0]].name]


def test_a_one_byte_change_is_refused_before_loading(cache: Path, tmp_path: Path) -> None:
    spec = model_manifest.get_spec(INT8_ID)
    data = bytearray((cache / spec.path).read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / spec.path).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="has sha256"):
        model_manifest.verified_path(INT8_ID, cache_dir=tmp_path)
    with pytest.raises(ModelError, match="has sha256"):
        DlibInt8Embedder(cache_dir=tmp_path)


def test_the_backend_refuses_a_float_model(cache: Path) -> None:
    with pytest.raises(ModelError, match="not int8"):
        DlibInt8Embedder(DlibInt8EmbedderConfig(model="dlib-resnet-v1"), cache_dir=cache)


@pytest.mark.dataset
def test_int8_stays_close_to_float_on_real_chips(cache: Path, datasets: Path) -> None:
    """24 LFW faces (not calibration data), aligned like the unit aligns them."""
    from device.imageio import read_image
    from device.vision.align import align
    from device.vision.stills import StillFaceFinder

    photos = sorted((datasets / "lfw" / "people").rglob("*.jpg"))[::211][:24]
    embedder = create_embedder(DlibInt8EmbedderConfig(), cache_dir=cache)
    assert embedder.model_id == INT8_ID
    cosines, embedded = [], []
    with StillFaceFinder.from_config(cache_dir=cache) as finder, \
            DlibResnetTFLite(cache / model_manifest.get_spec("dlib-resnet-v1").path) as fl, \
            DlibResnetTFLite(cache / model_manifest.get_spec(INT8_ID).path) as q8:
        for path in photos:
            image = read_image(path)
            found = finder.find(image, largest_only=True)
            if not found:
                continue
            chip = align(image, found[0], embedder.template)
            a = fl.run(chip.image).astype(np.float64)
            b = q8.run(chip.image).astype(np.float64)
            cosines.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            embedded.append(embedder.embed([chip])[0].vector)
    embedder.close()
    assert len(cosines) >= 20
    assert np.median(cosines) >= 0.99 and min(cosines) >= 0.97, cosines
    norms = np.linalg.norm(np.array(embedded), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
