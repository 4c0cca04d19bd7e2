"""Inception Score from class probabilities or logits (Salimans et al. 2016)."""

from __future__ import annotations

import numpy as np
from scipy.special import rel_entr, softmax


def _score(probs: np.ndarray, splits: int) -> tuple[float, float]:
    n = probs.shape[0]
    scores = []
    for i in range(splits):
        part = probs[i * n // splits:(i + 1) * n // splits]  # (n_i, K)
        p_y = part.mean(axis=0, keepdims=True)  # (1, K) marginal over the split
        kl = rel_entr(part, p_y).sum(axis=1)  # KL(p(y|x) || p(y)) per sample; 0 log 0 = 0
        scores.append(np.exp(kl.mean()))
    scores = np.asarray(scores)
    return float(scores.mean()), float(scores.std())


def _check_splits(n: int, splits: int) -> None:
    if splits < 1:
        raise ValueError(f"splits must be at least 1, got {splits}")
    if n < splits:
        raise ValueError(f"need at least one sample per split: {n} samples for {splits} splits")


def inception_score(probs, *, splits: int = 10) -> tuple[float, float]:
    """IS of (N, K) class probabilities p(y|x), as (mean, std) over `splits` equal consecutive splits.

    Salimans et al. 2016, "Improved Techniques for Training GANs", section 4:
    IS = exp(E_x KL(p(y|x) || p(y))), with p(y) the mean prediction within each split. It ranges
    from 1 (every prediction the same) to K (confident predictions, all classes equally often).
    Rows must be probabilities (non-negative, summing to 1 within 1e-6); pass raw network outputs
    to inception_score_from_logits instead.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be a 2-D (N, K) array of class probabilities, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("probs contains NaN or infinite values")
    if (p < 0).any():
        raise ValueError("probs contains negative values; pass logits to inception_score_from_logits")
    worst = np.abs(p.sum(axis=1) - 1.0).max() if len(p) else 0.0
    if worst > 1e-6:
        raise ValueError(f"rows of probs must sum to 1 (worst row is off by {worst:.3g}); "
                         "pass logits to inception_score_from_logits")
    _check_splits(len(p), splits)
    return _score(p, splits)


def inception_score_from_logits(logits, *, splits: int = 10) -> tuple[float, float]:
    """IS from (N, K) classifier logits: a float64 softmax (max-subtracted, so it never overflows),
    then inception_score."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be a 2-D (N, K) array, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits contains NaN or infinite values")
    _check_splits(len(z), splits)
    return _score(softmax(z, axis=1), splits)
