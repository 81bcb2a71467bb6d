"""Track templates: the weighted mean, and its own calibration table and threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device.errors import ConfigError
from device.lab import calibration
from device.lab import templates as tpl
from device.service.template import mean_template, template_table_id, template_threshold
from device.service.thresholds import ThresholdPolicy, table_path


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_mean_template_is_the_normalised_weighted_mean() -> None:
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert mean_template([a, b]) == pytest.approx(_unit(np.array([1.0, 1.0])))
    assert mean_template([a, b], [3.0, 1.0]) == pytest.approx(_unit(np.array([3.0, 1.0])))
    assert mean_template([a, b], [0.0, 0.0]) == pytest.approx(_unit(np.array([1.0, 1.0])))
    assert float(np.linalg.norm(mean_template(np.eye(4)[:3]))) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="cancel"):
        mean_template([a, -a])
    with pytest.raises(ValueError, match="weights"):
        mean_template([a, b], [1.0])
    with pytest.raises(ValueError, match="non-negative"):
        mean_template([a, b], [1.0, -1.0])


def test_sequences_are_disjoint_runs_after_the_gallery_photo() -> None:
    labels = ["a"] * 8 + ["b"] * 3 + ["c"]
    seqs = tpl.make_sequences(labels, 3)
    assert seqs.gallery.tolist() == [0, 8, 11]
    assert seqs.sequences.tolist() == [[1, 2, 3], [4, 5, 6]]  # a's 7th is left over
    assert seqs.sequence_labels == ("a", "a")
    assert tpl.needed_photos([str(i) for i in range(12)], labels, 3)[0] == \
        [str(i) for i in range(9)] + ["11"]
    with pytest.raises(ValueError, match="no sequences"):
        tpl.make_sequences(["a", "a", "b"], 3)


def _faces(seed: int = 0, people: int = 150, photos: int = 7, noise: float = 0.9) -> tpl.Faces:
    """People as random directions; each photo its person's direction plus noise."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(people, 32)))
    labels, vectors = [], []
    for p in range(people):
        for _ in range(photos):
            labels.append(f"p{p:03d}")
            vectors.append(_unit(centres[p] + noise * rng.normal(size=32) / np.sqrt(32)))
    n = len(labels)
    return tpl.Faces(tuple(labels), tuple(map(str, range(n))),
                     np.asarray(vectors, np.float32), rng.uniform(0.3, 1.0, n))


def test_template_calibration_meets_its_target_and_differs_from_a_single_face(
    tmp_path: Path,
) -> None:
    faces = _faces()
    seqs = tpl.make_sequences(faces.labels, 3)
    gen_m, imp_m = tpl.scores(faces, seqs, "mean")
    gen_b, imp_b = tpl.scores(faces, seqs, "best")
    assert imp_m.size == imp_b.size == len(seqs.sequence_labels) * (len(seqs.gallery) - 1)
    table = calibration.build_table(imp_m, model_id=template_table_id("m", 3), source="synthetic")
    calibration.save_table(table, table_path(table.model_id, tmp_path))
    calibration.save_table(calibration.build_table(imp_b, model_id="m"), table_path("m", tmp_path))
    for fmr in (1e-2, 1e-3):
        t = template_threshold("m", 3, ThresholdPolicy(target_fmr=fmr, allow_unsafe=True),
                               cache_dir=tmp_path)
        assert t.model_id == "m.template-mean-k3"
        # The table's threshold gives at most the target on the impostors it came from.
        assert float((imp_m >= t.value).mean()) <= fmr * 1.05
        assert float((imp_m >= t.value).mean()) >= fmr * 0.5
    # Averaging pulls the impostor tail in: one face's threshold would be the wrong one.
    single = calibration.build_table(imp_b, model_id="m").threshold_for(1e-3)
    templ = table.threshold_for(1e-3)
    assert templ != pytest.approx(single, abs=1e-3)
    # And the template, at its own threshold, misses fewer genuine sequences.
    mean = tpl.evaluate_mode(gen_m, imp_m, "mean")
    best = tpl.evaluate_mode(gen_b, imp_b, "best")
    assert mean.fnir_at(1e-3) is not None and best.fnir_at(1e-3) is not None
    assert mean.fnir_at(1e-3) < best.fnir_at(1e-3)  # type: ignore[operator]


def test_an_explicit_threshold_reads_the_template_table_at_its_fmr(tmp_path: Path) -> None:
    faces = _faces(seed=1)
    seqs = tpl.make_sequences(faces.labels, 3)
    _, imp_m = tpl.scores(faces, seqs, "mean")
    calibration.save_table(calibration.build_table(imp_m, model_id="m.template-mean-k3"),
                           table_path("m.template-mean-k3", tmp_path))
    t = template_threshold("m", 3, ThresholdPolicy(threshold=0.9, threshold_fmr=1e-3,
                                                   allow_unsafe=True), cache_dir=tmp_path)
    assert t.target_fmr == pytest.approx(1e-3)


def test_template_mode_without_its_table_is_refused_with_the_command(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="facegate eval templates --root DIR --k 3"):
        template_threshold("m", 3, ThresholdPolicy(), cache_dir=tmp_path)
