"""Transferability scores (autotl.scores) on synthetic features: each score orders informative features
above weak ones above noise, LogME matches a direct maximisation of its evidence, the scale-free scores
are scale-free, and malformed input is refused with a ValueError."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from autotl.scores import combined_rank, hscore, kendall_tau, knn_accuracy, logme, logme_evidence


def gaussian_classes(separation: float, n: int = 300, dim: int = 16, classes: int = 4, seed: int = 0):
    """Class-dependent Gaussians: class means drawn at scale ``separation`` (0 = pure noise), unit noise."""
    rs = np.random.RandomState(seed)
    labels = np.arange(n) % classes
    centres = rs.randn(classes, dim) * separation
    return centres[labels] + rs.randn(n, dim), labels


# -- LogME --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logme_ranks_informative_above_weak_above_noise(seed):
    strong = logme(*gaussian_classes(3.0, seed=seed))
    weak = logme(*gaussian_classes(0.5, seed=seed))
    noise = logme(*gaussian_classes(0.0, seed=seed))
    assert strong > weak > noise
    assert all(math.isfinite(v) for v in (strong, weak, noise))


def _direct_logme(features, labels):
    """Mean over classes of max evidence / N, maximised numerically over (log alpha, log beta)."""
    per_class = []
    for c in np.unique(labels):
        target = (labels == c).astype(np.float64)

        def negative(p, target=target):
            return -logme_evidence(features, target, math.exp(p[0]), math.exp(p[1]))

        best = max(-minimize(negative, x0, method="Nelder-Mead",
                             options={"xatol": 1e-7, "fatol": 1e-9, "maxiter": 2000}).fun
                   for x0 in [(0.0, 0.0), (3.0, 1.0), (-3.0, 2.0), (1.0, -1.0)])
        per_class.append(best / len(labels))
    return float(np.mean(per_class))


@pytest.mark.parametrize("separation", [0.0, 1.0])
@pytest.mark.parametrize("case", ["N>D", "N<D", "rank-deficient"])
def test_logme_matches_direct_maximisation_of_the_evidence(separation, case):
    if case == "N>D":
        features, labels = gaussian_classes(separation, n=60, dim=5, classes=3, seed=4)
    elif case == "N<D":  # thin SVD: the D - N zero eigenvalues of F^T F enter as log alpha terms
        features, labels = gaussian_classes(separation, n=12, dim=20, classes=3, seed=4)
    else:  # 7 columns of rank 3
        features, labels = gaussian_classes(separation, n=40, dim=3, classes=3, seed=4)
        features = np.hstack([features, features @ np.random.RandomState(0).randn(3, 4)])
    assert logme(features, labels) == pytest.approx(_direct_logme(features, labels), rel=1e-3)


@pytest.mark.parametrize("alpha, beta", [(1.0, 1.0), (0.05, 7.0), (30.0, 0.2)])
def test_logme_evidence_is_the_marginal_likelihood_of_the_target(alpha, beta):
    # The evidence formula equals log N(t; 0, I/beta + F F^T/alpha), the Gaussian marginal likelihood.
    from scipy.stats import multivariate_normal

    features, labels = gaussian_classes(1.0, n=30, dim=4, classes=3, seed=5)
    target = (labels == 1).astype(float)
    cov = np.eye(30) / beta + features @ features.T / alpha
    expected = multivariate_normal(mean=np.zeros(30), cov=cov).logpdf(target)
    assert logme_evidence(features, target, alpha, beta) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("scale", [0.01, 100.0])
@pytest.mark.parametrize("shape", [(200, 10), (20, 50)])  # N > D and N < D
def test_logme_is_invariant_to_a_global_feature_scale(scale, shape):
    features, labels = gaussian_classes(1.0, n=shape[0], dim=shape[1], classes=3, seed=6)
    assert logme(features * scale, labels) == pytest.approx(logme(features, labels), rel=1e-9, abs=1e-12)


def test_logme_handles_fewer_examples_than_dimensions():
    informative = logme(*gaussian_classes(2.0, n=24, dim=64, classes=3, seed=7))
    noise = logme(*gaussian_classes(0.0, n=24, dim=64, classes=3, seed=7))
    assert math.isfinite(informative) and math.isfinite(noise)
    assert informative > noise


def test_logme_handles_rank_deficient_features():
    features, labels = gaussian_classes(2.0, n=100, dim=6, classes=3, seed=8)
    padded = np.hstack([features, features[:, :2] * 2.0, np.zeros((100, 3))])  # rank 6 of 11 columns
    value = logme(padded, labels)
    assert math.isfinite(value)
    assert logme(padded * 1e3, labels) == pytest.approx(value, rel=1e-9)


# -- k-NN accuracy ------------------------------------------------------------------------------

def test_knn_accuracy_is_perfect_on_separated_clusters_and_chance_on_noise():
    assert knn_accuracy(*gaussian_classes(10.0, n=200, seed=9)) >= 0.99
    noise = knn_accuracy(*gaussian_classes(0.0, n=400, classes=4, seed=9))
    assert abs(noise - 0.25) < 0.1


def test_knn_accuracy_handles_a_class_with_few_examples():
    features, labels = gaussian_classes(10.0, n=60, classes=3, seed=10)
    rs = np.random.RandomState(10)
    rare_centre = rs.randn(features.shape[1]) * 10.0
    for rare in (2, 1):
        f = np.vstack([features, rare_centre + rs.randn(rare, features.shape[1])])
        y = np.concatenate([labels, np.full(rare, 7)])
        accuracy = knn_accuracy(f, y)
        assert 0.9 <= accuracy <= 1.0  # the common classes are still found; at most the rare one is missed
    assert knn_accuracy(features, labels, k=50, folds=3) <= 1.0  # k capped at the training fold size


def test_knn_accuracy_is_reproducible_and_scale_free():
    features, labels = gaussian_classes(0.7, n=120, classes=3, seed=11)
    base = knn_accuracy(features, labels, seed=3)
    assert knn_accuracy(features, labels, seed=3) == base
    assert knn_accuracy(features * 1e4, labels, seed=3) == base


# -- H-score ------------------------------------------------------------------------------------

def test_hscore_orders_separation_and_is_near_zero_on_noise():
    separated = hscore(*gaussian_classes(3.0, seed=12))
    overlapping = hscore(*gaussian_classes(0.3, seed=12))
    noise = hscore(*gaussian_classes(0.0, n=2000, dim=10, classes=3, seed=12))
    assert separated > overlapping > noise >= 0.0
    assert noise < 0.05  # sampling noise only: about D (C - 1) / N = 0.01
    assert hscore(np.ones((10, 3)), np.arange(10) % 2) == 0.0  # constant features carry nothing


@pytest.mark.parametrize("scale", [0.01, 100.0])
def test_hscore_is_invariant_to_a_global_feature_scale(scale):
    features, labels = gaussian_classes(1.0, n=80, dim=30, classes=3, seed=13)
    assert hscore(features * scale, labels) == pytest.approx(hscore(features, labels), rel=1e-9)


# -- combining and comparing ---------------------------------------------------------------------

def test_combined_rank_puts_a_dominant_candidate_first_and_breaks_ties_by_name():
    scores = {
        "mid": {"logme": -0.5, "knn": 0.7, "hscore": 1.0},
        "best": {"logme": -0.1, "knn": 0.9, "hscore": 2.0},
        "worst": {"logme": -0.9, "knn": 0.3, "hscore": 0.1},
    }
    assert combined_rank(scores) == ["best", "mid", "worst"]
    tied = {"b": {"x": 1.0, "y": 0.0}, "a": {"x": 0.0, "y": 1.0}, "c": {"x": 0.5, "y": 0.5}}
    assert combined_rank(tied) == ["a", "b", "c"]  # all mean rank 2
    assert combined_rank(tied, weights={"x": 3.0, "y": 1.0}) == ["b", "c", "a"]
    assert combined_rank(tied, weights={"y": 1.0}) == ["a", "c", "b"]  # unlisted scores weigh 0
    assert combined_rank({"ok": {"s": 0.1}, "failed": {"s": float("nan")}}) == ["ok", "failed"]
    assert combined_rank({}) == []


def test_kendall_tau_on_orders_and_scores():
    order = ["a", "b", "c", "d"]
    assert kendall_tau(order, order) == 1.0
    assert kendall_tau(order, order[::-1]) == -1.0
    assert kendall_tau([1.0, 2.0, 3.0], [10, 20, 30]) == pytest.approx(1.0)
    assert kendall_tau([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert kendall_tau([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == 0.0  # undefined -> 0
    assert kendall_tau([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0]) == 0.0
    assert kendall_tau([1.0], [2.0]) == 0.0
    assert isinstance(kendall_tau(order, order), float)


# -- bad input ----------------------------------------------------------------------------------

GOOD_F = np.random.RandomState(14).randn(12, 3)
GOOD_Y = np.arange(12) % 2
SCORES = [logme, knn_accuracy, hscore]


@pytest.mark.parametrize("score", SCORES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("features, labels, message", [
    (GOOD_F[:, 0], GOOD_Y, "2-D"),
    (GOOD_F[None], GOOD_Y, "2-D"),
    (GOOD_F, GOOD_Y[:-1], "12 rows but labels have 11"),
    (GOOD_F, np.zeros(12, dtype=int), "at least 2 classes"),
    (np.where(np.eye(12, 3) > 0, np.nan, GOOD_F), GOOD_Y, "NaN or infinite"),
    (GOOD_F, GOOD_Y + 0.5, "integer class ids"),
    (GOOD_F, np.array(["a", "b"] * 6), "integer class ids"),
    (GOOD_F, GOOD_Y[:, None], "1-D"),
    (np.zeros((0, 3)), np.zeros(0, dtype=int), "at least one row"),
    ([["x", "y"], ["z", "w"]], [0, 1], "numeric"),
])
def test_bad_input_raises_value_error(score, features, labels, message):
    with pytest.raises(ValueError, match=message):
        score(features, labels)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="all zero"):
        logme(np.zeros((6, 2)), np.arange(6) % 2)
    with pytest.raises(ValueError, match="k must be"):
        knn_accuracy(GOOD_F, GOOD_Y, k=0)
    with pytest.raises(ValueError, match="folds must be"):
        knn_accuracy(GOOD_F, GOOD_Y, folds=1)
    with pytest.raises(ValueError, match="2 or more examples"):
        knn_accuracy(GOOD_F[:2], np.array([0, 1]))
    with pytest.raises(ValueError, match="alpha must be"):
        logme_evidence(GOOD_F, GOOD_Y.astype(float), 0.0, 1.0)
    with pytest.raises(ValueError, match="target has 11"):
        logme_evidence(GOOD_F, GOOD_Y[:-1].astype(float), 1.0, 1.0)
    with pytest.raises(ValueError, match="same score names|expected"):
        combined_rank({"a": {"x": 1.0}, "b": {"y": 1.0}})
    with pytest.raises(ValueError, match="unknown scores"):
        combined_rank({"a": {"x": 1.0}}, weights={"z": 1.0})
    with pytest.raises(ValueError, match="not all zero"):
        combined_rank({"a": {"x": 1.0}}, weights={"x": 0.0})
    with pytest.raises(ValueError, match="same length"):
        kendall_tau([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="same distinct names"):
        kendall_tau(["a", "b"], ["a", "c"])
