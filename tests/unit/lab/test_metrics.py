"""Verification metrics on score arrays with known answers, and against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from device.lab import metrics


def test_separated_scores() -> None:
    genuine = [0.9, 0.8, 0.95, 0.7]
    impostor = [0.1, 0.2, 0.3, 0.4, 0.5]
    v = metrics.verification(genuine, impostor, (1e-2, 0.2))
    assert v.genuine == 4 and v.impostors == 5
    assert v.eer == 0.0
    assert v.best_accuracy == 1.0
    assert 0.5 <= v.best_accuracy_threshold < 0.7
    # FMR 1e-2 of 5 impostors allows none: the threshold is the highest impostor score.
    point = v.at_fmr[1e-2]
    assert point.threshold == 0.5 and point.tar == 1.0 and point.fmr == 0.0
    # FMR 0.2 allows one impostor: accept scores > 0.4.
    assert v.at_fmr[0.2].threshold == 0.4 and v.at_fmr[0.2].fmr == pytest.approx(0.2)


def test_known_tar_at_fmr_and_threshold() -> None:
    impostor = np.arange(1000) / 1000.0  # 0.000 .. 0.999
    genuine = np.array([0.9985, 0.9975, 0.995, 0.99, 0.5, 0.2])
    v = metrics.verification(genuine, impostor, (1e-3, 1e-2))
    # 1e-3 of 1000 allows 1 impostor (0.999): threshold 0.998, genuine above it: 1 of 6.
    assert v.at_fmr[1e-3].threshold == pytest.approx(0.998)
    assert v.at_fmr[1e-3].tar == pytest.approx(1 / 6)
    assert v.at_fmr[1e-3].fmr == pytest.approx(1e-3)
    # 1e-2 allows 10 (0.990 .. 0.999): threshold 0.989; 4 genuine above it.
    assert v.at_fmr[1e-2].threshold == pytest.approx(0.989)
    assert v.at_fmr[1e-2].tar == pytest.approx(4 / 6)


def test_ties_at_the_threshold_are_not_accepted() -> None:
    impostor = [0.5] * 10
    genuine = [0.5, 0.6]
    point = metrics.verification(genuine, impostor, (0.05,)).at_fmr[0.05]
    assert point.threshold == 0.5
    assert point.fmr == 0.0  # no impostor is strictly above 0.5
    assert point.tar == 0.5


def test_eer_of_mirrored_uniform_scores() -> None:
    # Genuine uniform on [0.4, 1.0], impostor on [0, 0.6]: they cross at 0.5 where each
    # error is 1/6.
    rng = np.random.default_rng(0)
    genuine = rng.uniform(0.4, 1.0, 200_000)
    impostor = rng.uniform(0.0, 0.6, 200_000)
    v = metrics.verification(genuine, impostor)
    assert v.eer == pytest.approx(1 / 6, abs=2e-3)
    assert v.eer_threshold == pytest.approx(0.5, abs=5e-3)
    assert v.best_accuracy == pytest.approx(5 / 6, abs=2e-3)


def _brute(genuine: np.ndarray, impostor: np.ndarray, fmr: float) -> tuple[float, float]:
    best_tar, best_t = -1.0, 0.0
    for t in np.concatenate([genuine, impostor, [min(genuine.min(), impostor.min()) - 1]]):
        if (impostor > t).mean() <= fmr:
            tar = (genuine > t).mean()
            if tar > best_tar:
                best_tar, best_t = tar, t
    return best_tar, best_t


def _brute_accuracy(genuine: np.ndarray, impostor: np.ndarray) -> float:
    ts = np.concatenate([genuine, impostor, [min(genuine.min(), impostor.min()) - 1]])
    n = genuine.size + impostor.size
    return max(((genuine > t).sum() + (impostor <= t).sum()) / n for t in ts)


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    genuine = np.round(rng.normal(0.6, 0.15, 150), 2)  # rounded: plenty of ties
    impostor = np.round(rng.normal(0.2, 0.15, 700), 2)
    v = metrics.verification(genuine, impostor, (1e-2, 5e-2))
    for fmr in (1e-2, 5e-2):
        tar, _ = _brute(genuine, impostor, fmr)
        assert v.at_fmr[fmr].tar == pytest.approx(tar)
        assert v.at_fmr[fmr].fmr <= fmr
    assert v.best_accuracy == pytest.approx(_brute_accuracy(genuine, impostor))


def test_millions_of_impostors_are_quick() -> None:
    import time

    rng = np.random.default_rng(7)
    genuine = rng.normal(0.7, 0.1, 50_000)
    impostor = rng.normal(0.2, 0.1, 5_000_000)
    started = time.perf_counter()
    v = metrics.verification(genuine, impostor, (1e-3, 1e-4))
    assert time.perf_counter() - started < 30
    # Two normals 5 sd apart: the EER sits where both tails are P(z > 2.5) = 0.0062.
    assert v.eer == pytest.approx(0.0062, abs=5e-4)
    assert v.at_fmr[1e-4].fmr <= 1e-4


def test_roc_points() -> None:
    genuine = np.linspace(0.5, 1.0, 100)
    impostor = np.linspace(0.0, 0.6, 10_000)
    fmr, tar = metrics.roc_points(genuine, impostor, points=50)
    assert fmr.shape == tar.shape
    assert fmr.max() == 1.0 and tar.max() == 1.0
    assert (np.diff(fmr) >= 0).all() and (np.diff(tar) >= 0).all()
    assert fmr[fmr > 0].min() <= 1e-4


def test_pair_scores_by_label_against_brute_force() -> None:
    rng = np.random.default_rng(3)
    labels = ["a", "b", "a", "c", "b", "a"]
    x = rng.normal(size=(6, 4))
    sim = metrics.cosine_matrix(x)
    gen, imp = metrics.pair_scores_by_label(sim, labels)
    want_g = sorted(float(sim[i, j]) for i in range(6) for j in range(i + 1, 6)
                    if labels[i] == labels[j])
    want_i = sorted(float(sim[i, j]) for i in range(6) for j in range(i + 1, 6)
                    if labels[i] != labels[j])
    np.testing.assert_allclose(sorted(gen), want_g, rtol=1e-6)
    np.testing.assert_allclose(sorted(imp), want_i, rtol=1e-6)
    assert len(gen) == 4 and len(imp) == 11


def test_cosine_matrix() -> None:
    sim = metrics.cosine_matrix([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    np.testing.assert_allclose(np.diag(sim), 1.0, rtol=1e-6)
    assert sim[0, 1] == pytest.approx(0.0, abs=1e-7)
    assert sim[0, 2] == pytest.approx(np.sqrt(0.5), rel=1e-6)
    with pytest.raises(ValueError, match="zero vector"):
        metrics.cosine_matrix([[0.0, 0.0], [1.0, 0.0]])


@pytest.mark.parametrize(
    ("genuine", "impostor", "fmrs", "message"),
    [
        ([], [0.1], (1e-2,), "no genuine"),
        ([0.1], [], (1e-2,), "no impostor"),
        ([np.nan], [0.1], (1e-2,), "finite"),
        ([0.5], [0.1], (1.5,), "within"),
    ],
)
def test_bad_input(genuine: list[float], impostor: list[float], fmrs: tuple[float, ...],
                   message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metrics.verification(genuine, impostor, fmrs)


def test_fmr_labels() -> None:
    assert [metrics.fmr_label(f) for f in (1e-2, 1e-3, 1e-4, 5e-2)] == [
        "1e-2", "1e-3", "1e-4", "5e-2"]
