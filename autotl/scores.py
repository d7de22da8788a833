"""Transferability scores: rank candidate source models from their frozen features, before any training.

Every score takes the frozen features ``F`` (N x D) a source model gives the target task's N training
examples, and the examples' integer class labels ``y`` (N,). Higher is better for all of them. They are
cheap priors for the search, never its only judge: in published comparisons the scores often disagree
with one another and with fine-tuned accuracy, and a plain k-NN accuracy on the frozen features is a
strong baseline (see ``/work/shared/REFERENCES.md``, "Transferability scores").

* :func:`logme` -- LogME (You et al., ICML 2021): the maximised Bayesian log evidence of a linear
  model from the features to one-vs-rest targets, per example. :func:`logme_evidence` evaluates the
  evidence at a given (alpha, beta).
* :func:`knn_accuracy` -- cross-validated k-NN accuracy on L2-normalised features.
* :func:`hscore` -- the H-score (Bao et al., ICIP 2019) with a Ledoit-Wolf shrunk feature covariance.
* :func:`combined_rank` and :func:`kendall_tau` -- combine several scores into one order, and compare
  two orders.

Pure numpy / scipy / scikit-learn, float64 throughout, no torch: the module can score features that
were computed anywhere.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Hashable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["logme", "logme_evidence", "knn_accuracy", "hscore", "combined_rank", "kendall_tau"]

_LOG_2PI = math.log(2.0 * math.pi)
_TINY = np.finfo(np.float64).tiny
_EPS = np.finfo(np.float64).eps

#: MacKay's fixed point stops when alpha and beta both change by less than this, relatively ...
LOGME_RTOL = 1e-3
#: ... or after this many iterations.
LOGME_MAX_ITER = 100


# -- input checks -------------------------------------------------------------------------------

def _check_features(features: Any) -> np.ndarray:
    """``features`` as a finite, non-empty float64 N x D array, or a ValueError saying what is wrong."""
    try:
        f = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"features must be a numeric array: {exc}") from None
    if f.ndim != 2:
        raise ValueError(f"features must be a 2-D (N x D) array, got {f.ndim}-D with shape {f.shape}")
    if f.shape[0] == 0 or f.shape[1] == 0:
        raise ValueError(f"features must have at least one row and one column, got shape {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError("features contain NaN or infinite values")
    return f


def _check_labels(labels: Any, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Integer labels of length ``n`` with >= 2 classes, as (codes 0..C-1, per-class counts)."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got {y.ndim}-D with shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"features have {n} rows but labels have {y.shape[0]} entries")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError("labels must be integer class ids, got non-integer values")
        y = y.astype(np.int64)
    elif not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {y.dtype}")
    classes, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
    if classes.size < 2:
        raise ValueError(f"need at least 2 classes, got {classes.size}")
    return codes.reshape(-1), counts


def _check_xy(features: Any, labels: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = _check_features(features)
    codes, counts = _check_labels(labels, f.shape[0])
    return f, codes, counts


# -- LogME --------------------------------------------------------------------------------------

def _logme_terms(s2: np.ndarray, z: np.ndarray, res0: float, alpha: float, beta: float
                 ) -> Tuple[float, float, float]:
    """(||m||^2, ||t - F m||^2, log det(alpha I_r + beta S^2)) in the SVD basis of F.

    With F = U S V^T (thin, rank r), z = U^T t and ``res0`` = ||t - U z||^2 (the part of t outside the
    column space of F): m = V diag(beta s / (alpha + beta s^2)) z, so
    ||m||^2 = sum beta^2 s^2 z^2 / d^2 and ||t - F m||^2 = res0 + sum (alpha z / d)^2, d = alpha + beta s^2.
    The log det covers only the r non-zero eigenvalues; the caller adds (D - r) log alpha.
    """
    d = alpha + beta * s2
    m2 = float(np.sum(beta * beta * s2 * z * z / (d * d)))
    res = float(res0 + np.sum((alpha * z / d) ** 2))
    return m2, res, float(np.sum(np.log(d)))


def _logme_value(s2: np.ndarray, z: np.ndarray, res0: float, n: int, dim: int, alpha: float, beta: float
                 ) -> float:
    """The LogME log evidence L(alpha, beta) from the SVD quantities (see :func:`_logme_terms`)."""
    m2, res, logdet_r = _logme_terms(s2, z, res0, alpha, beta)
    logdet = logdet_r + (dim - s2.size) * math.log(alpha)
    return (0.5 * dim * math.log(alpha) + 0.5 * n * math.log(beta) - 0.5 * n * _LOG_2PI
            - 0.5 * beta * res - 0.5 * alpha * m2 - 0.5 * logdet)


def _logme_fixed_point(s2: np.ndarray, z: np.ndarray, res0: float, n: int, alpha: float, beta: float
                       ) -> Tuple[float, float]:
    """MacKay's fixed point for (alpha, beta), from the given start, until the relative change of both
    is below :data:`LOGME_RTOL` or :data:`LOGME_MAX_ITER` iterations have run."""
    for _ in range(LOGME_MAX_ITER):
        lam = alpha / beta
        gamma = float(np.sum(s2 / (s2 + lam)))
        m2, res, _ = _logme_terms(s2, z, res0, alpha, beta)
        # Floors keep degenerate targets (m = 0: no signal; res = 0: a perfect fit) finite.
        new_alpha = max(gamma, _TINY) / max(m2, _TINY)
        new_beta = max(n - gamma, _EPS) / max(res, _TINY)
        if not (math.isfinite(new_alpha) and math.isfinite(new_beta)):
            break
        done = (abs(new_alpha - alpha) <= LOGME_RTOL * alpha and abs(new_beta - beta) <= LOGME_RTOL * beta)
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return alpha, beta


def logme(features: Any, labels: Any) -> float:
    """LogME (You et al., ICML 2021): the maximised log evidence per example, averaged over classes.

    For each class c, the one-vs-rest target t (1 where the label is c, else 0) is modelled as
    t = F w + noise with w ~ N(0, I/alpha) and noise ~ N(0, I/beta). The log evidence

        L(alpha, beta) = D/2 log alpha + N/2 log beta - N/2 log 2 pi - beta/2 ||t - F m||^2
                         - alpha/2 ||m||^2 - 1/2 log det(alpha I + beta F^T F),
        m = beta (alpha I + beta F^T F)^-1 F^T t,

    is maximised by MacKay's fixed point (lambda = alpha/beta, gamma = sum s_i^2/(s_i^2 + lambda),
    alpha <- gamma/||m||^2, beta <- (N - gamma)/||t - F m||^2) until alpha and beta change by less
    than 0.1 % (at most 100 iterations). The score is the mean over classes of max L / N; higher means
    the features explain the labels better with a linear model. Features are used as given (not
    centred), as in the paper.

    One thin SVD F = U S V^T serves every class; the iteration and the evidence work in its basis, so
    N < D is handled: F^T F has only r = rank(F) non-zero eigenvalues s_i^2, and its D - r zero ones
    contribute (D - r) log alpha to the log det.

    Scale invariance: the evidence as defined is exactly invariant to a global feature scale c, since
    L_{cF}(c^2 alpha, beta) = L_F(alpha, beta) (m scales by 1/c, F m is unchanged, and the c^2 factors
    of D/2 log alpha and of the log det cancel). So its maximum is invariant, and no standardisation is
    needed. To make the *computed* score invariant too (not only the true maximum), the iteration
    starts from alpha = ||F||_F^2 / D (which scales by c^2) and beta = 1: every iterate of the scaled
    problem is then the rescaled iterate of the original, and the scores agree to float error.

    Args:
        features: N x D frozen features (any real dtype; computed in float64).
        labels: N integer class labels; at least 2 distinct classes.

    Returns:
        The LogME score (mean over classes of the maximised evidence divided by N).

    Raises:
        ValueError: features not a finite 2-D array, lengths that differ, fewer than 2 classes, or
            features that are all zero (no evidence can be computed).
    """
    f, codes, counts = _check_xy(features, labels)
    n, dim = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    if s[0] <= 0.0:
        raise ValueError("features are all zero; LogME is undefined")
    keep = s > s[0] * max(n, dim) * _EPS
    u, s = u[:, keep], s[keep]
    s2 = s * s
    rank = s.size
    alpha0 = float(np.sum(s2)) / dim
    total = 0.0
    for c in range(counts.size):
        rows = codes == c
        z = u[rows].sum(axis=0)  # U^T t for the 0/1 target t of class c
        # ||t - U z||^2 = ||t||^2 - ||z||^2 (U has orthonormal columns); exactly 0 when F spans R^N.
        res0 = 0.0 if rank == n else max(float(counts[c]) - float(z @ z), 0.0)
        alpha, beta = _logme_fixed_point(s2, z, res0, n, alpha0, 1.0)
        total += _logme_value(s2, z, res0, n, dim, alpha, beta) / n
    return total / counts.size


def logme_evidence(features: Any, target: Any, alpha: float, beta: float) -> float:
    """The LogME log evidence L(alpha, beta) of one real target vector (the formula in :func:`logme`).

    Computed directly from alpha I + beta F^T F (a D x D solve and log-determinant), independently of
    the SVD path :func:`logme` uses, so that comparing the two -- or maximising this function
    numerically -- checks :func:`logme`. It costs O(N D^2 + D^3) per call: meant for tests and small
    D, not for scoring.

    Args:
        features: N x D features.
        target: N real targets (for LogME, the 0/1 one-vs-rest indicator of one class).
        alpha: prior precision of the weights, > 0.
        beta: noise precision, > 0.

    Returns:
        The log evidence (not divided by N).

    Raises:
        ValueError: malformed features or target, lengths that differ, or alpha / beta not positive
            and finite.
    """
    f = _check_features(features)
    t = np.asarray(target, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"target must be a 1-D array, got {t.ndim}-D with shape {t.shape}")
    if t.shape[0] != f.shape[0]:
        raise ValueError(f"features have {f.shape[0]} rows but target has {t.shape[0]} entries")
    if not np.all(np.isfinite(t)):
        raise ValueError("target contains NaN or infinite values")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    alpha, beta = float(alpha), float(beta)
    n, dim = f.shape
    a = alpha * np.eye(dim) + beta * (f.T @ f)
    m = beta * np.linalg.solve(a, f.T @ t)
    sign, logdet = np.linalg.slogdet(a)
    if sign <= 0:
        raise ValueError("alpha I + beta F^T F is numerically singular at this (alpha, beta)")
    r = t - f @ m
    return float(0.5 * dim * math.log(alpha) + 0.5 * n * math.log(beta) - 0.5 * n * _LOG_2PI
                 - 0.5 * beta * (r @ r) - 0.5 * alpha * (m @ m) - 0.5 * logdet)


# -- k-NN accuracy ------------------------------------------------------------------------------

def knn_accuracy(features: Any, labels: Any, k: Optional[int] = None, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated k-nearest-neighbour accuracy on L2-normalised frozen features.

    A strong, assumption-free baseline for transferability (it beat 23 dedicated scores over 42,000
    experiments, arXiv 2503.18528). Rows are scaled to unit L2 norm (all-zero rows stay zero), so the
    Euclidean neighbours are the cosine neighbours and the score is invariant to any per-example
    scale. Uses scikit-learn's ``KNeighborsClassifier`` under a shuffled ``StratifiedKFold`` with
    min(folds, smallest class count) splits, but at least 2: a class with a single example still
    works (it is simply misclassified when it is in the test fold).

    Args:
        features: N x D features.
        labels: N integer class labels; at least 2 classes, and at least one class with 2 or more
            examples.
        k: neighbours. Default: min(5, the smallest count of any class present in a training fold),
            so that a rare class can still win a vote. An explicit k is capped at the smallest
            training fold size.
        folds: the most cross-validation folds to use, >= 2.
        seed: the fold shuffle's seed.

    Returns:
        The mean test accuracy over the folds, in [0, 1].

    Raises:
        ValueError: malformed input, k < 1, folds < 2, or no class with 2 or more examples.
    """
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier

    f, codes, counts = _check_xy(features, labels)
    if isinstance(folds, bool) or not isinstance(folds, numbers.Integral) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1):
        raise ValueError(f"k must be a positive integer or None, got {k!r}")
    if counts.max() < 2:
        raise ValueError("k-NN accuracy needs at least one class with 2 or more examples")
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    f = f / np.where(norms > 0, norms, 1.0)

    n_splits = max(2, min(int(folds), int(counts.min())))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "The least populated class has only 1 members": expected for rare classes, handled below.
        warnings.filterwarnings("ignore", message=".*least populated class.*", category=UserWarning)
        splits = list(cv.split(f, codes))

    smallest_train = min(len(train) for train, _ in splits)
    if k is None:
        smallest_class = min(int(np.bincount(codes[train])[np.bincount(codes[train]) > 0].min())
                             for train, _ in splits)
        k = min(5, smallest_class)
    k = max(1, min(int(k), smallest_train))

    accuracies = []
    for train, test in splits:
        clf = KNeighborsClassifier(n_neighbors=k)
        clf.fit(f[train], codes[train])
        accuracies.append(float(np.mean(clf.predict(f[test]) == codes[test])))
    return float(np.mean(accuracies))


# -- H-score ------------------------------------------------------------------------------------

def hscore(features: Any, labels: Any) -> float:
    """The shrinkage H-score: tr(pinv(cov_f) cov_g), with a Ledoit-Wolf shrunk feature covariance.

    The H-score (Bao et al., "An Information-Theoretic Approach to Transferability in Task Transfer
    Learning", ICIP 2019) measures how much of the features' variance lies between classes:
    ``cov_g`` is the covariance of g = E[f | y] (each row replaced by its class's mean feature
    vector) and ``cov_f`` the covariance of the features. The plain sample ``cov_f`` is singular or
    ill-conditioned when D is large against N, which makes the score unstable; Ibrahim et al. ("Newer
    is not always better: Rethinking transferability metrics, their peculiarities, stability and
    performance", ECML-PKDD 2022) replace it by a shrunk estimate. Here it is scikit-learn's
    ``LedoitWolf`` on the centred features, and ``cov_g`` uses the same 1/N normalisation. (Their
    H_alpha also multiplies cov_g by (1 - shrinkage); this function deliberately does not.)

    Both covariances scale by c^2 under a global feature scale c and the pseudo-inverse by 1/c^2, and
    the Ledoit-Wolf shrinkage coefficient is scale-free, so the score is invariant to a global scale.
    It is about 0 for features independent of the labels (of order D (C - 1) / N from sampling
    noise) and grows with class separation.

    Args:
        features: N x D features.
        labels: N integer class labels; at least 2 classes.

    Returns:
        The H-score, >= 0 (0 for constant features).

    Raises:
        ValueError: malformed input.
    """
    from sklearn.covariance import LedoitWolf

    f, codes, counts = _check_xy(features, labels)
    fc = f - f.mean(axis=0, keepdims=True)
    if not np.any(fc):
        return 0.0
    cov_f = LedoitWolf(assume_centered=True, store_precision=False).fit(fc).covariance_
    means = np.zeros((counts.size, f.shape[1]))
    np.add.at(means, codes, fc)
    means /= counts[:, None]
    g = means[codes]  # E[f | y], row by row; its mean is 0 because fc is centred
    cov_g = (g.T @ g) / f.shape[0]
    # tr(A B) for symmetric A, B without forming the product.
    return float(np.sum(np.linalg.pinv(cov_f, hermitian=True) * cov_g))


# -- combining and comparing ---------------------------------------------------------------------

def combined_rank(scores: Mapping[Hashable, Mapping[str, float]],
                  weights: Optional[Mapping[str, float]] = None) -> List[Hashable]:
    """Order candidate models best first by the (weighted) mean of their per-score ranks.

    Each score is ranked separately across the candidates (rank 1 = highest value; tied values share
    their average rank; NaN ranks last), and the ranks are averaged. Ranks rather than raw values are
    averaged because the scores live on unrelated scales (LogME is a log-likelihood per example, k-NN
    an accuracy, the H-score a trace). Candidates with the same mean rank are ordered by name.

    Args:
        scores: candidate name -> {score name -> value}, every value higher-is-better. Every
            candidate must have the same score names.
        weights: score name -> non-negative weight. Default: equal weights. Score names not in
            ``weights`` get weight 0; the weights must not all be 0.

    Returns:
        The candidate names, best first (an empty list for no candidates).

    Raises:
        ValueError: candidates with differing or no score names, non-numeric scores, or bad weights.
    """
    from scipy.stats import rankdata

    names = list(scores)
    if not names:
        return []
    score_names = sorted(scores[names[0]])
    if not score_names:
        raise ValueError(f"candidate {names[0]!r} has no scores")
    for name in names:
        if sorted(scores[name]) != score_names:
            raise ValueError(f"candidate {name!r} has scores {sorted(scores[name])}, expected {score_names}")
    if weights is None:
        w = {s: 1.0 for s in score_names}
    else:
        unknown = sorted(set(weights) - set(score_names))
        if unknown:
            raise ValueError(f"weights name unknown scores {unknown}; known: {score_names}")
        w = {s: float(weights.get(s, 0.0)) for s in score_names}
        if any(not math.isfinite(v) or v < 0 for v in w.values()) or sum(w.values()) <= 0:
            raise ValueError(f"weights must be finite, non-negative and not all zero, got {dict(weights)}")

    mean_rank = np.zeros(len(names))
    for s in score_names:
        try:
            values = np.array([float(scores[name][s]) for name in names])
        except (TypeError, ValueError):
            raise ValueError(f"score {s!r} has a non-numeric value") from None
        # Rank -value so the highest value gets rank 1; NaN becomes +inf and so ranks last.
        keyed = np.where(np.isnan(values), np.inf, -values)
        mean_rank += w[s] * rankdata(keyed, method="average")
    mean_rank /= sum(w.values())
    order = sorted(range(len(names)), key=lambda i: (mean_rank[i], str(names[i])))
    return [names[i] for i in order]


def _is_number(x: Any) -> bool:
    return isinstance(x, (numbers.Real, np.number)) and not isinstance(x, (bool, np.bool_))


def kendall_tau(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Kendall's tau between two paired score lists, or between two orders of the same names.

    A wrapper of ``scipy.stats.kendalltau`` (tau-b, which handles ties) used to check a score's
    ranking of candidates against their fine-tuned accuracies. If ``a`` and ``b`` are numbers, they
    are compared pairwise (a[i] with b[i]). Otherwise they must be two orderings (best first, as
    :func:`combined_rank` returns) of the same distinct names, and the names' positions are compared.

    Args:
        a: numbers, or names in order.
        b: numbers, or the same names in another order; the same length as ``a``.

    Returns:
        tau in [-1, 1]: 1 for the same order, -1 for the reversed one. 0.0 when tau is undefined
        (fewer than 2 items, a constant list, or NaN in the input).

    Raises:
        ValueError: lengths that differ, or name lists that are not permutations of each other.
    """
    from scipy.stats import kendalltau

    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"kendall_tau needs two sequences of the same length, got {len(a)} and {len(b)}")
    if len(a) < 2:
        return 0.0
    if all(_is_number(x) for x in a) and all(_is_number(x) for x in b):
        x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    else:
        if len(set(a)) != len(a) or set(a) != set(b):
            raise ValueError("kendall_tau on names needs two orderings of the same distinct names")
        position = {name: i for i, name in enumerate(b)}
        x = np.arange(len(a), dtype=np.float64)
        y = np.array([position[name] for name in a], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input warns and returns NaN
        tau = kendalltau(x, y).statistic
    tau = float(tau)
    return tau if math.isfinite(tau) else 0.0

