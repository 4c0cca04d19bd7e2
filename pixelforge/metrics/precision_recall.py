"""Improved precision and recall of generated samples via k-NN manifolds (Kynkäänniemi et al. 2019)."""

from __future__ import annotations

from typing import Callable

import numpy as np

Progress = Callable[[int], None]  # called with the number of rows just processed


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (n, m) as ||a||^2 + ||b||^2 - 2 a.b in float64, clamped at 0."""
    d2 = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d2, 0.0)


def _kth_neighbour_sq_radii(x: np.ndarray, k: int, batch: int, advance: Progress = lambda rows: None) -> np.ndarray:
    """Squared distance from each row of x to its k-th nearest other row (itself excluded): (N,)."""
    n = x.shape[0]
    radii = np.empty(n)
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        d2 = _sq_distances(x[start:stop], x)  # (b, N)
        d2[np.arange(stop - start), np.arange(start, stop)] = np.inf  # a point is not its own neighbour
        radii[start:stop] = np.partition(d2, k - 1, axis=1)[:, k - 1]
        advance(stop - start)
    return radii


def _coverage(manifold: np.ndarray, sq_radii: np.ndarray, queries: np.ndarray, batch: int,
              advance: Progress = lambda rows: None) -> float:
    """Share of query rows inside at least one ball (centre a manifold row, its radius)."""
    inside = 0
    for start in range(0, len(queries), batch):
        d2 = _sq_distances(queries[start:start + batch], manifold)  # (b, N_manifold)
        inside += int((d2 <= sq_radii[None, :]).any(axis=1).sum())
        advance(len(d2))
    return inside / len(queries)


def precision_recall(real, fake, *, k: int = 3, batch: int = 1000,
                     callback: Callable[[int, int], None] | None = None) -> tuple[float, float]:
    """(precision, recall) of fake (M, D) features against real (N, D) features.

    Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for Assessing Generative
    Models", section 2: each real point's ball has the radius of its k-th nearest other real point,
    and their union estimates the real manifold. Precision is the share of fake points inside that
    manifold (are the samples realistic?); recall is the share of real points inside the manifold
    built the same way from the fake points (is the real variety covered?). Distances are computed
    in float64 in blocks of `batch` rows, so memory stays at batch x max(N, M) values; the result is
    deterministic. callback(done, total) reports the rows processed over the four passes (each set's
    radii and coverage), total = 2 (N + M).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    r = np.asarray(real, dtype=np.float64)
    f = np.asarray(fake, dtype=np.float64)
    for name, x in (("real", r), ("fake", f)):
        if x.ndim != 2:
            raise ValueError(f"{name} must be a 2-D (N, D) array of features, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        if x.shape[0] <= k:
            raise ValueError(f"{name} needs more than k={k} samples for k-nearest-neighbour radii, got {x.shape[0]}")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dimensions differ: real has {r.shape[1]}, fake has {f.shape[1]}")
    done, total = 0, 2 * (len(r) + len(f))

    def advance(rows: int) -> None:
        nonlocal done
        done += rows
        if callback is not None:
            callback(done, total)

    precision = _coverage(r, _kth_neighbour_sq_radii(r, k, batch, advance), f, batch, advance)
    recall = _coverage(f, _kth_neighbour_sq_radii(f, k, batch, advance), r, batch, advance)
    return precision, recall
