"""Kernel Inception Distance: unbiased MMD^2 with a cubic polynomial kernel (Bińkowski et al. 2018)."""

from __future__ import annotations

from typing import Callable

import numpy as np


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x . y / d + 1)^3 for all pairs of rows: (n, d), (m, d) -> (n, m)."""
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size samples: the kernel's diagonal terms k(x_i, x_i) are dropped."""
    m = x.shape[0]
    k_xx = _polynomial_kernel(x, x)
    k_yy = _polynomial_kernel(y, y)
    k_xy = _polynomial_kernel(x, y)
    sum_xx = k_xx.sum() - np.trace(k_xx)
    sum_yy = k_yy.sum() - np.trace(k_yy)
    return (sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m)


def subset_size_used(subset_size: int, n1: int, n2: int) -> int:
    """The rows each KID subset draws from each set: subset_size, capped at the smaller set's size."""
    return min(subset_size, n1, n2)


def kernel_inception_distance(features1, features2, *, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0, callback: Callable[[int, int], None] | None = None) -> tuple[float, float]:
    """KID between two (N, D) feature sets, as (mean, std) over random subsets.

    Bińkowski et al. 2018, "Demystifying MMD GANs", section 4: the squared maximum mean discrepancy
    with the polynomial kernel k(x, y) = (x . y / d + 1)^3, estimated without bias. Each of `subsets`
    rounds draws `subset_size` rows from each set without replacement (np.random.default_rng(seed)),
    so the figure is reproducible for a seed; subset_size is capped at the smaller set's size. The
    std is over subsets (ddof 0), the spread of a single estimate of that size. Unlike FID, the
    estimate is unbiased, so it can be slightly negative when the two distributions are the same.
    callback(i, subsets) is called after each subset i = 1..subsets.
    """
    f1 = np.asarray(features1, dtype=np.float64)
    f2 = np.asarray(features2, dtype=np.float64)
    for name, f in (("features1", f1), ("features2", f2)):
        if f.ndim != 2:
            raise ValueError(f"{name} must be a 2-D (N, D) array of features, got shape {f.shape}")
        if not np.isfinite(f).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: features1 has {f1.shape[1]}, features2 has {f2.shape[1]}")
    if subsets < 1:
        raise ValueError(f"subsets must be at least 1, got {subsets}")
    m = subset_size_used(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per subset (subset_size={subset_size}, "
                         f"len(features1)={len(f1)}, len(features2)={len(f2)})")
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        values[i] = _mmd2_unbiased(x, y)
        if callback is not None:
            callback(i + 1, subsets)
    return float(values.mean()), float(values.std())
