"""Distances between two sets of feature vectors: FID, KID, precision/recall and nearest neighbours.

numpy/torch only, no networks: training/metrics/inception.py makes the features, face_quality.py
turns these figures into the metric entries. FID and KID follow torch-fidelity's formulas
(metric_fid.py after TTUR, metric_kid.py after MMD-GAN, the same defaults); precision and recall
are Kynkaanniemi et al. 2019 with k = 3. Every figure's uncertainty is a bootstrap over the
generated set, the real set held fixed.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

BOOTSTRAP = 200  # resamples for the cheap per-image metrics
BOOTSTRAP_HEAVY = 10  # resamples for FID and SWD (each one recomputes a covariance / sorts)
PR_NEIGHBOURS = 3  # Kynkaanniemi et al. 2019 / StyleGAN2-ADA pr50k3: k = 3
KID_SUBSETS, KID_SUBSET_SIZE, KID_DEGREE, KID_COEF0 = 100, 1000, 3, 1.0  # torch-fidelity's defaults


class MetricsError(ValueError):
    """Bad input to the metrics (a named file that is missing or unusable, wrong image arrays), in one line."""


def bootstrap_std(statistic, count: int, rng: np.random.Generator, resamples: int = BOOTSTRAP) -> float:
    """Standard deviation of statistic(indices) over bootstrap resamples of `count` items."""
    return float(np.std([statistic(rng.integers(0, count, count)) for _ in range(resamples)], ddof=1))


# ----------------------------------------------------------------------------------------------
# FID and KID (formulas of torch-fidelity's metric_fid.py / metric_kid.py).


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) between two Gaussians (torch-fidelity's fid_statistics_to_metric)."""
    diff = mu1 - mu2
    tr_covmean = np.sum(np.sqrt(np.linalg.eigvals(sigma1.dot(sigma2)).astype("complex128")).real)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def _trace_sqrt_product(fake: np.ndarray, sigma_real: np.ndarray, sqrt_sigma_real) -> float:
    """tr (S_fake S_real)^1/2 from fake features, via a symmetric eigenproblem of size min(n - 1, d).

    S_fake S_real has the eigenvalues of X S_real X^T (n x n, X the centred fakes / sqrt(n - 1)) and of
    R S_fake R (d x d, R = S_real^1/2); both are symmetric PSD, so eigvalsh is exact and fast."""
    x = (fake - fake.mean(0)) / np.sqrt(len(fake) - 1)
    matrix = x @ sigma_real @ x.T if len(fake) <= x.shape[1] else sqrt_sigma_real() @ (x.T @ x) @ sqrt_sigma_real()
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(matrix), 0, None)).sum())


def fid_from_features(fake: np.ndarray, real: np.ndarray, rng: np.random.Generator, resamples: int = BOOTSTRAP_HEAVY) -> tuple[float, float | None]:
    """FID and its bootstrap std over the fakes (the real statistics fixed); None for the std when resamples < 2."""
    fake, real = fake.astype(np.float64), real.astype(np.float64)
    mu_real, sigma_real = real.mean(0), np.cov(real, rowvar=False)
    trace_real = np.trace(sigma_real)

    @functools.cache
    def sqrt_sigma_real() -> np.ndarray:  # only needed when there are more fakes than feature dimensions
        eigenvalues, vectors = np.linalg.eigh(sigma_real)
        return (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T

    def fid(rows) -> float:
        sample = fake[rows]
        diff = sample.mean(0) - mu_real
        trace_fake = np.sum(np.var(sample, axis=0, ddof=1))
        return float(diff @ diff + trace_fake + trace_real - 2 * _trace_sqrt_product(sample, sigma_real, sqrt_sigma_real))

    return fid(np.arange(len(fake))), bootstrap_std(fid, len(fake), rng, resamples) if resamples >= 2 else None


def _mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD^2 from kernel matrices (torch-fidelity's mmd2(..., mmd_est="unbiased"))."""
    m = len(k_xx)
    sum_xx = k_xx.sum() - np.trace(k_xx)
    sum_yy = k_yy.sum() - np.trace(k_yy)
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))


def kid_from_features(fake: np.ndarray, real: np.ndarray, rng: np.random.Generator) -> tuple[float, float, int]:
    """KID: mean unbiased MMD^2, kernel (a.b / d + 1)^3, over KID_SUBSETS random subsets; and the std over them.

    torch-fidelity's kid with its defaults, except that a subset holds at most half of the smaller set
    (torch-fidelity: all of it when it has under 1000), so subsets differ and their spread means
    something. The estimator is unbiased, so the subset size changes the spread, not the expectation."""
    size = min(KID_SUBSET_SIZE, len(fake) // 2, len(real) // 2)
    if size < 2:
        raise MetricsError(f"KID needs at least 4 faces in each set, got {len(fake)} generated and {len(real)} real")
    x, y = torch.from_numpy(np.ascontiguousarray(fake, np.float32)), torch.from_numpy(np.ascontiguousarray(real, np.float32))
    kernel = lambda gram: (np.asarray(gram, np.float64) / x.shape[1] + KID_COEF0) ** KID_DEGREE  # Gram in float32, sums in float64
    # Small sets: one Gram matrix per pair of sets, subsets index into them. Large sets: products per subset.
    whole = len(x) ** 2 + len(y) ** 2 + len(x) * len(y) <= 3 * KID_SUBSETS * size**2
    grams = [(a @ b.T).numpy() for a, b in ((x, x), (y, y), (x, y))] if whole else None
    values = []
    for _ in range(KID_SUBSETS):
        rows_x, rows_y = rng.choice(len(x), size, replace=False), rng.choice(len(y), size, replace=False)
        if whole:
            pairs = zip(grams, ((rows_x, rows_x), (rows_y, rows_y), (rows_x, rows_y)))
            values.append(_mmd2_unbiased(*(kernel(gram[np.ix_(a, b)]) for gram, (a, b) in pairs)))
        else:
            a, b = x[torch.from_numpy(rows_x)], y[torch.from_numpy(rows_y)]
            values.append(_mmd2_unbiased(kernel(a @ a.T), kernel(b @ b.T), kernel(a @ b.T)))
    return float(np.mean(values)), float(np.std(values)), size


# ----------------------------------------------------------------------------------------------
# Precision / recall (Kynkaanniemi et al. 2019) and the memorisation check, on Inception features.


def nearest_distances(query: np.ndarray, reference: np.ndarray, k: int = 1, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Distances [Q, k] and indices [Q, k] of each query row's k nearest reference rows (L2), in row blocks."""
    ref = torch.from_numpy(np.ascontiguousarray(reference, np.float32))
    distances, indices = [], []
    for start in range(0, len(query), block):
        rows = torch.from_numpy(np.ascontiguousarray(query[start : start + block], np.float32))
        found = torch.cdist(rows, ref).topk(k, dim=1, largest=False)  # topk is sorted: nearest first
        distances.append(found.values.numpy())
        indices.append(found.indices.numpy())
    return np.concatenate(distances), np.concatenate(indices)


def _within_any_ball(query: np.ndarray, centres: np.ndarray, radii: np.ndarray, block: int = 1024) -> np.ndarray:
    """bool [Q]: the query row lies within radii[j] of some centre j."""
    centres_t, radii_t = torch.from_numpy(np.ascontiguousarray(centres, np.float32)), torch.from_numpy(radii.astype(np.float32))
    inside = [(torch.cdist(torch.from_numpy(np.ascontiguousarray(query[s : s + block], np.float32)), centres_t) <= radii_t).any(1).numpy()
              for s in range(0, len(query), block)]
    return np.concatenate(inside)


def precision_recall(fake: np.ndarray, real: np.ndarray, k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall: a set's manifold is the union of balls reaching each member's k-th neighbour."""
    radius = lambda features: nearest_distances(features, features, k + 1)[0][:, k]  # neighbour 0 is the point itself
    precision = float(_within_any_ball(fake, real, radius(real)).mean())
    recall = float(_within_any_ball(real, fake, radius(fake)).mean())
    return precision, recall
