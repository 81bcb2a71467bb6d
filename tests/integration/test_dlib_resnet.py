"""dlib's face encoder compiled to TFLite: built once per session, checked against dlib itself.

Fidelity: on real 150x150 chips (LFW centre crops and 5-point aligned chips,
deepface colour photos aligned with ``dlib.get_face_chip``, low-resolution
"diversity" crops) the TFLite descriptor must have cosine >= 0.9999 with dlib's
``compute_face_descriptor`` for every chip.  Also: the build is deterministic and
matches the pinned sha256, is idempotent, refuses bad upstream files, and the runner
refuses malformed chips.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from device.cli import main
from device.errors import ModelError
from device.modelzoo import build as model_build
from device.modelzoo.dlib_runner import MODEL_ID, DlibResnetTFLite
from device.vision import models as model_manifest

dlib = pytest.importorskip("dlib", reason="dlib-bin (the reference) is not installed")
pytest.importorskip("ai_edge_litert.interpreter")
Image = pytest.importorskip("PIL.Image")

pytestmark = pytest.mark.dataset


def _models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("face_recognition_models is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@pytest.fixture(scope="session")
def spec() -> model_manifest.ModelSpec:
    return model_manifest.get_spec(MODEL_ID)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory, spec: model_manifest.ModelSpec) -> Path:
    """Build the model once for the whole session into a temporary cache."""
    _models_dir()
    cache = tmp_path_factory.mktemp("model-cache")
    result = model_build.build_model(spec, cache)
    assert result.built
    return cache


@pytest.fixture(scope="session")
def runner(model_cache: Path) -> Any:
    with DlibResnetTFLite.from_cache(model_cache, num_threads=2) as embedder:
        yield embedder


@pytest.fixture(scope="session")
def reference() -> Any:
    path = _models_dir() / "dlib_face_recognition_resnet_model_v1.dat"
    return dlib.face_recognition_model_v1(str(path))


def _aligned_chips(image: np.ndarray, detector: Any, predictor: Any) -> list[np.ndarray]:
    return [
        np.asarray(dlib.get_face_chip(image, predictor(image, box), size=150, padding=0.25))
        for box in detector(image, 0)
    ]


@pytest.fixture(scope="session")
def chips(datasets: Path) -> dict[str, list[np.ndarray]]:
    """Real 150x150 RGB chips from four kinds of source, in a fixed order."""
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(_models_dir() / "shape_predictor_5_face_landmarks.dat"))
    people = sorted((datasets / "lfw" / "people").iterdir())
    lfw_files = [sorted(person.glob("*.jpg"))[0] for person in people[::10]]

    def lfw_rgb(path: Path) -> Any:
        return Image.open(path).convert("RGB")  # grayscale, 350x350, tightly cropped

    sources: dict[str, list[np.ndarray]] = {"lfw-crop": [], "lfw-aligned": []}
    for path in lfw_files[:100]:
        img = lfw_rgb(path)
        box = (35, 35, 315, 315)  # centre crop, then down to 150x150
        sources["lfw-crop"].append(np.asarray(img.crop(box).resize((150, 150), Image.BILINEAR)))
    for path in lfw_files[100:180]:
        sources["lfw-aligned"] += _aligned_chips(np.asarray(lfw_rgb(path)), detector, predictor)[:1]
    sources["deepface-aligned"] = []
    for path in sorted((datasets / "deepface").glob("*.jpg")):
        img = Image.open(path).convert("RGB")
        img.thumbnail((640, 640))
        sources["deepface-aligned"] += _aligned_chips(np.asarray(img), detector, predictor)
    diversity = sorted((datasets / "diversity").glob("*/*.jpg"))[::25]
    sources["diversity-upscaled"] = [
        np.asarray(Image.open(p).convert("RGB").resize((150, 150), Image.BICUBIC))
        for p in diversity
    ]
    for name, items in sources.items():
        assert items, f"no chips from {name}"
        assert all(c.shape == (150, 150, 3) and c.dtype == np.uint8 for c in items), name
    return sources


# --------------------------------------------------------------------------------------
# Fidelity


def test_tflite_matches_dlib_on_real_chips(
    chips: dict[str, list[np.ndarray]],
    runner: DlibResnetTFLite,
    reference: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines, worst_overall = [], []
    total = 0
    for name, items in chips.items():
        cosines, diffs = [], []
        for chip in items:
            ours = runner.run(chip).astype(np.float64)
            theirs = np.asarray(reference.compute_face_descriptor(chip), dtype=np.float64)
            cosines.append(ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs)))
            diffs.append(np.abs(ours - theirs).max())
        total += len(items)
        worst_overall += cosines
        lines.append(
            f"  {name:<20} n={len(items):<4} min cos {min(cosines):.12f}  "
            f"mean cos {np.mean(cosines):.12f}  max |diff| {max(diffs):.2e}"
        )
        assert min(cosines) >= 0.9999, f"{name}: a chip has cosine {min(cosines)}"
    with capsys.disabled():
        print(f"\nTFLite vs dlib compute_face_descriptor on {total} real chips:")
        print("\n".join(lines))
        print(
            f"  {'all':<20} n={total:<4} min cos {min(worst_overall):.12f}  "
            f"mean cos {np.mean(worst_overall):.12f}"
        )
    assert total >= 200


def test_descriptor_is_raw_not_normalised(
    chips: dict[str, list[np.ndarray]], runner: DlibResnetTFLite
) -> None:
    norms = [np.linalg.norm(runner.run(c)) for c in chips["deepface-aligned"][:10]]
    assert all(abs(n - 1.0) > 0.05 for n in norms), norms


def test_xnnpack_runs_the_whole_graph(runner: DlibResnetTFLite) -> None:
    assert runner.fully_delegated()


# --------------------------------------------------------------------------------------
# Bad input to the runner


@pytest.mark.parametrize(
    ("chip", "message"),
    [
        (np.zeros((160, 160, 3), np.uint8), r"must be 150x150x3 RGB.*got shape \(160, 160, 3\)"),
        (np.zeros((150, 150), np.uint8), r"got shape \(150, 150\)"),
        (np.zeros((150, 150, 4), np.uint8), r"got shape \(150, 150, 4\)"),
        (np.zeros((1, 150, 150, 3), np.uint8), r"got shape \(1, 150, 150, 3\)"),
        (np.zeros((150, 150, 3), np.int64), "must be uint8 or float RGB"),
        (np.full((150, 150, 3), 300.0), "within 0..255"),
        (np.full((150, 150, 3), np.nan), "finite"),
    ],
)
def test_malformed_chips_are_refused(
    runner: DlibResnetTFLite, chip: np.ndarray, message: str
) -> None:
    with pytest.raises(ModelError, match=message):
        runner.run(chip)


def test_float_and_uint8_chips_agree(
    chips: dict[str, list[np.ndarray]], runner: DlibResnetTFLite
) -> None:
    chip = chips["lfw-aligned"][0]
    np.testing.assert_array_equal(runner.run(chip), runner.run(chip.astype(np.float32)))


def test_closed_runner_refuses(model_cache: Path) -> None:
    embedder = DlibResnetTFLite.from_cache(model_cache)
    embedder.close()
    embedder.close()
    assert embedder.closed
    with pytest.raises(ModelError, match="closed"):
        embedder.run(np.zeros((150, 150, 3), np.uint8))


def test_a_file_that_is_not_this_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.tflite"
    path.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ModelError, match=r"x\.tflite: cannot load as a TFLite model"):
        DlibResnetTFLite(path)


# --------------------------------------------------------------------------------------
# The build


def test_build_matches_the_pinned_hash_and_is_deterministic(
    model_cache: Path, spec: model_manifest.ModelSpec, tmp_path: Path
) -> None:
    built = model_cache / spec.path
    assert model_manifest.sha256_file(built) == spec.sha256
    again = model_build.build_model(spec, tmp_path)
    assert again.built
    assert hashlib.sha256(again.path.read_bytes()).hexdigest() == spec.sha256


def test_second_build_does_nothing(model_cache: Path, spec: model_manifest.ModelSpec) -> None:
    path = model_cache / spec.path
    before = path.stat().st_mtime_ns
    messages: list[str] = []
    result = model_build.build_model(spec, model_cache, messages.append)
    assert not result.built
    assert messages == []
    assert path.stat().st_mtime_ns == before


def test_cli_build_reports_up_to_date(model_cache: Path) -> None:
    result = CliRunner().invoke(main, ["models", "build", "--cache-dir", str(model_cache)])
    assert result.exit_code == 0, result.output
    assert "dlib-resnet-v1" in result.output and "nothing to do" in result.output
    result = CliRunner().invoke(
        main, ["models", "build", "--cache-dir", str(model_cache), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert '"status":"up-to-date"' in result.output


def test_corrupted_output_is_rebuilt(spec: model_manifest.ModelSpec, tmp_path: Path) -> None:
    path = tmp_path / spec.path
    path.write_bytes(b"half a model")
    messages: list[str] = []
    result = model_build.build_model(spec, tmp_path, messages.append)
    assert result.built
    assert model_manifest.sha256_file(path) == spec.sha256
    assert any("rebuilding" in m for m in messages)
    assert [p.name for p in tmp_path.iterdir()] == [spec.path]  # no temp files left


def test_wrong_upstream_hash_is_refused(spec: model_manifest.ModelSpec, tmp_path: Path) -> None:
    upstream = dict(spec.extra["upstream"], sha256="0" * 64)
    bad = dataclasses.replace(spec, extra={**spec.extra, "upstream": upstream})
    with pytest.raises(ModelError, match=r"dlib-resnet-v1 upstream: model file .* has sha256"):
        model_build.build_model(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_output_hash_mismatch_writes_nothing(
    spec: model_manifest.ModelSpec, tmp_path: Path
) -> None:
    bad = dataclasses.replace(spec, sha256="f" * 64)
    with pytest.raises(ModelError, match="Nothing was written"):
        model_build.build_model(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_build_is_fast(spec: model_manifest.ModelSpec, tmp_path: Path) -> None:
    assert model_build.build_model(spec, tmp_path).seconds < 30


def test_bench_embed_prints_both_timings(model_cache: Path) -> None:
    args = ["bench", "embed", "--cache-dir", str(model_cache), "--chips", "3", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    names = [row["embedder"] for row in report["rows"]]
    assert names == ["tflite (XNNPACK)", "tflite (XNNPACK)", "dlib compute_face_descriptor"]
    assert report["xnnpack_whole_graph"] is True
    assert report["cosine_first_chip"] > 0.9999
