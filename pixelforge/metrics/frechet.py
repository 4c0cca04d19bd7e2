"""Fréchet distance between Gaussians fitted to feature sets (FID, Heusel et al. 2017)."""

from __future__ import annotations

import numpy as np


def _as_features(features, name: str) -> np.ndarray:
    """(N, D) float64 array of finite values with N >= 2, or a ValueError naming the argument."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array of features, got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples to estimate a covariance, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return f


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features: the Gaussian FID compares."""
    f = _as_features(features, "features")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix; rounding-level negative eigenvalues count as 0."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _check_stats(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1:
        raise ValueError(f"mu{name} must be a 1-D (D,) mean vector, got shape {mu.shape}")
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise ValueError(f"sigma{name} must have shape ({d}, {d}) to match mu{name}, got {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"mu{name} or sigma{name} contains NaN or infinite values")
    if not np.allclose(sigma, sigma.T, rtol=0.0, atol=1e-5 * max(np.abs(sigma).max(), 1e-300)):
        raise ValueError(f"sigma{name} must be a symmetric covariance matrix")
    return mu, (sigma + sigma.T) / 2  # exact symmetry for eigh


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
    Equilibrium", eq. for FID: ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).

    The trace term is computed without a general matrix square root of the non-symmetric product
    sigma1 sigma2 (scipy.linalg.sqrtm can return complex values or NaN there when the covariances
    are nearly singular, as they are with fewer samples than feature dimensions). Instead, with
    R = sigma1^(1/2) from a symmetric eigen-decomposition:
        sigma1 sigma2 is similar to R sigma2 R = M M^T with M = R sigma2^(1/2),
    so tr((sigma1 sigma2)^(1/2)) = tr((M M^T)^(1/2)) = sum of the singular values of M.
    Singular values are taken from M directly rather than as square roots of the eigenvalues of
    M M^T: that keeps eigenvalues near zero accurate to machine precision instead of to its square
    root (the distance of a rank-deficient feature set to itself comes out ~1e-13, not ~1e-5).
    Everything stays real; the result is clamped at 0 against rounding and returned as a float.
    """
    mu1, sigma1 = _check_stats(mu1, sigma1, "1")
    mu2, sigma2 = _check_stats(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: mu1 has {mu1.shape[0]}, mu2 has {mu2.shape[0]}")
    diff = mu1 - mu2
    m = _psd_sqrt(sigma1) @ _psd_sqrt(sigma2)  # (D, D)
    tr_covmean = np.linalg.svd(m, compute_uv=False).sum()
    fid = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
    return float(max(fid, 0.0))


def fid_from_features(features1, features2) -> float:
    """FID between two (N, D) feature sets: frechet_distance of their feature_stats."""
    f1 = _as_features(features1, "features1")
    f2 = _as_features(features2, "features2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: features1 has {f1.shape[1]}, features2 has {f2.shape[1]}")
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))
