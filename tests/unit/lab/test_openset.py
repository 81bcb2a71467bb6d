"""Open-set 1:N protocol and FNIR-at-FPIR math on synthetic embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device.lab.openset import (
    LabelledEmbeddings,
    evaluate_open_set,
    fnir_at_fpir,
    impostor_scores,
    open_set_split,
)


def test_split_follows_the_protocol() -> None:
    labels = ["a", "a", "a", "b", "b", "c", "d", "d"]
    split = open_set_split(labels)
    assert split.gallery == (0, 3, 6)  # first image of each identity with >= 2
    assert split.mated == (1, 2, 4, 7)
    assert split.non_mated == (5,)  # the single-image identity
    assert split.singletons == ("c",) and split.held_out == ()


def test_held_out_identities_are_seeded_and_never_enrolled() -> None:
    labels = [f"p{i}" for i in range(20) for _ in range(3)]
    a = open_set_split(labels, 0.25, seed=3)
    assert a == open_set_split(labels, 0.25, seed=3)
    assert len(a.held_out) == 5
    gallery_labels = {labels[i] for i in a.gallery}
    assert not gallery_labels & set(a.held_out)
    assert {labels[i] for i in a.non_mated} == set(a.held_out)
    assert len(a.non_mated) == 15 and len(a.gallery) == 15 and len(a.mated) == 30
    with pytest.raises(ValueError):
        open_set_split(labels, 1.0)


def test_fnir_at_fpir_is_exact_and_honest() -> None:
    non_mated = np.arange(100) / 100.0  # 0.00 … 0.99
    mated = np.array([0.995, 0.985, 0.975, 0.5])
    correct = np.array([True, True, False, True])
    p = fnir_at_fpir(mated, correct, non_mated, 0.02)
    # At most two of 100 non-mated searches may alarm: threshold just above 0.97.
    assert p.resolvable and p.fpir == pytest.approx(0.02)
    assert 0.97 < (p.threshold or 0) <= 0.98
    assert p.fnir == pytest.approx(0.5)  # 0.975 is the wrong identity; 0.5 is below
    tiny = fnir_at_fpir(mated, correct, non_mated, 1e-3)
    assert not tiny.resolvable and tiny.fnir is None
    everything = fnir_at_fpir(mated, correct, non_mated, 1.0)
    assert everything.fpir == 1.0 and everything.fnir == pytest.approx(0.25)


def _clusters(identities: int, per: list[int], noise: float, seed: int) -> LabelledEmbeddings:
    rng = np.random.default_rng(seed)
    rows, labels, paths = [], [], []
    for i in range(identities):
        centre = rng.normal(size=64)
        centre /= np.linalg.norm(centre)
        for k in range(per[i % len(per)]):
            v = centre + noise * rng.normal(size=64) / 8
            rows.append(v / np.linalg.norm(v))
            labels.append(f"id{i:03d}")
            paths.append(f"id{i:03d}/{k}.jpg")
    return LabelledEmbeddings(Path("."), tuple(paths), tuple(labels),
                              np.asarray(rows, dtype=np.float32),
                              np.zeros(len(rows), dtype=bool))


def test_evaluate_open_set_separates_clusters() -> None:
    data = _clusters(300, [1, 3, 4], noise=0.3, seed=1)
    result = evaluate_open_set(data, fpirs=(1e-2, 1e-3), thresholds=(0.5,))
    assert result.gallery == 200 and result.singletons == 100
    assert result.mated == 500 and result.non_mated == 100
    assert result.rank1 == 1.0
    at_1e2, at_1e3 = result.points
    assert at_1e2.resolvable and at_1e2.fnir == 0.0 and (at_1e2.fpir or 0) <= 1e-2
    assert not at_1e3.resolvable  # 100 non-mated searches cannot resolve 1e-3
    assert result.at_threshold[0][0] == 0.5


def test_evaluate_needs_non_mated_searches() -> None:
    data = _clusters(5, [3], noise=0.3, seed=2)
    with pytest.raises(ValueError, match="unenrolled_fraction"):
        evaluate_open_set(data)
    result = evaluate_open_set(data, unenrolled_fraction=0.4)
    assert result.held_out == 2 and result.non_mated == 6


def test_impostor_scores_cover_every_cross_pair() -> None:
    data = _clusters(7, [1, 2, 5], noise=0.5, seed=3)
    scores, genuine = impostor_scores(data, block=4)
    n = len(data)
    labels = np.asarray(data.labels)
    same = sum(int((labels[i + 1:] == labels[i]).sum()) for i in range(n))
    assert genuine == same
    assert scores.size == n * (n - 1) // 2 - same
    full = data.matrix @ data.matrix.T
    expected = [full[i, j] for i in range(n) for j in range(i + 1, n) if labels[i] != labels[j]]
    assert np.allclose(np.sort(scores), np.sort(expected), atol=1e-6)
