"""Specifications of the metric functions: closed forms on Gaussians, limiting cases, parity with
scipy, determinism, and clean (antialiased, unquantised) resizing."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from pixelforge.metrics import (
    feature_stats,
    fid_from_features,
    frechet_distance,
    inception_score,
    inception_score_from_logits,
    kernel_inception_distance,
    precision_recall,
    resize_for_features,
)


def _random_spd(rng, d, low=0.1, high=3.0):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q, (q * rng.uniform(low, high, d)) @ q.T


def _checkerboard(side):
    return (np.indices((side, side)).sum(axis=0) % 2 * 255).astype(np.uint8)


# ---- Fréchet distance -------------------------------------------------------------------------

def test_frechet_distance_matches_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    d = 12
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_closed_form_for_commuting_covariances():
    # s1 = Q diag(a) Q^T and s2 = Q diag(b) Q^T commute; then tr sqrt(s1 s2) = sum sqrt(a b).
    rng = np.random.default_rng(1)
    d = 10
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.05, 5.0, d), rng.uniform(0.05, 5.0, d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_is_finite_and_real_for_rank_deficient_covariances():
    # 10 samples in 64 dimensions: both covariances have rank 9.
    rng = np.random.default_rng(2)
    f1, f2 = rng.standard_normal((10, 64)), rng.standard_normal((10, 64)) + 0.5
    value = fid_from_features(f1, f2)
    assert isinstance(value, float) and np.isfinite(value) and value > 0
    # and the rank-deficient set against itself is still 0 to numerical precision
    assert 0.0 <= fid_from_features(f1, f1) < 1e-9


def test_frechet_distance_is_finite_and_real_for_tiny_eigenvalues():
    rng = np.random.default_rng(3)
    d = 16
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    eig = np.full(d, 1e-12)
    eig[:4] = [2.0, 1.0, 0.5, 0.1]
    s1 = (q * eig) @ q.T
    _, s2 = _random_spd(rng, d)
    value = frechet_distance(np.zeros(d), s1, np.ones(d), s2)
    assert isinstance(value, float) and np.isfinite(value)
    # the same matrices with the 1e-12 eigenvalues replaced by exact zeros give the same figure
    eig0 = np.where(eig < 1e-6, 0.0, eig)
    assert value == pytest.approx(frechet_distance(np.zeros(d), (q * eig0) @ q.T, np.ones(d), s2), abs=1e-4)
    assert 0.0 <= frechet_distance(np.zeros(d), s1, np.zeros(d), s1) < 1e-9


def test_frechet_distance_agrees_with_scipy_sqrtm():
    rng = np.random.default_rng(4)
    f1 = rng.standard_normal((400, 20)) @ rng.standard_normal((20, 20))
    f2 = rng.standard_normal((300, 20)) @ rng.standard_normal((20, 20)) + 0.3
    mu1, s1 = np.mean(f1, axis=0), np.cov(f1, rowvar=False)
    mu2, s2 = np.mean(f2, axis=0), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real
    assert fid_from_features(f1, f2) == pytest.approx(reference, rel=1e-6)


def test_fid_of_a_feature_set_against_itself_is_zero():
    rng = np.random.default_rng(5)
    f = rng.standard_normal((500, 32)) * rng.uniform(0.1, 10.0, 32) + 3.0
    value = fid_from_features(f, f)
    assert 0.0 <= value < 1e-6


def test_fid_is_invariant_to_sample_order():
    rng = np.random.default_rng(6)
    f1, f2 = rng.standard_normal((200, 8)), rng.standard_normal((150, 8)) * 1.5
    base = fid_from_features(f1, f2)
    assert fid_from_features(f1[rng.permutation(200)], f2[rng.permutation(150)]) == pytest.approx(base, rel=1e-10)


def test_fid_of_a_mean_shift_delta_is_about_delta_squared():
    rng = np.random.default_rng(7)
    n, d, delta = 20000, 8, 2.0
    shift = np.zeros(d)
    shift[0] = delta
    f1 = rng.standard_normal((n, d))
    f2 = rng.standard_normal((n, d)) + shift
    # with equal covariances only the mean term remains; sampling error is O(d^2 / n)
    assert fid_from_features(f1, f2) == pytest.approx(delta ** 2, abs=0.1)


def test_feature_stats_are_mean_and_unbiased_covariance():
    rng = np.random.default_rng(8)
    f = rng.standard_normal((50, 4))
    mu, sigma = feature_stats(f)
    centred = f - f.mean(axis=0)
    np.testing.assert_allclose(mu, f.mean(axis=0))
    np.testing.assert_allclose(sigma, centred.T @ centred / 49)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="dimensions differ"):
        fid_from_features(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="2-D"):
        feature_stats(np.zeros(5))
    with pytest.raises(ValueError, match="at least 2 samples"):
        feature_stats(np.zeros((1, 5)))


# ---- KID --------------------------------------------------------------------------------------

def test_kid_of_two_samples_of_one_distribution_is_near_zero():
    rng = np.random.default_rng(10)
    f1, f2 = rng.standard_normal((2000, 16)), rng.standard_normal((2000, 16))
    mean, std = kernel_inception_distance(f1, f2, subsets=50, subset_size=200)
    # The estimator is unbiased, so the mean is 0 up to noise. `std` is the spread of one
    # 200-sample estimate; an average of such estimates cannot spread more than one of them.
    assert std > 0
    assert abs(mean) < 3 * std


def test_kid_of_a_shifted_distribution_is_clearly_positive():
    rng = np.random.default_rng(11)
    f1, f2 = rng.standard_normal((2000, 16)), rng.standard_normal((2000, 16)) + 1.0
    mean, std = kernel_inception_distance(f1, f2, subsets=50, subset_size=200)
    assert mean > 10 * std > 0


def test_kid_is_deterministic_for_a_seed():
    rng = np.random.default_rng(12)
    f1, f2 = rng.standard_normal((300, 8)), rng.standard_normal((300, 8)) + 0.2
    first = kernel_inception_distance(f1, f2, subsets=10, subset_size=100, seed=3)
    assert kernel_inception_distance(f1, f2, subsets=10, subset_size=100, seed=3) == first
    assert kernel_inception_distance(f1, f2, subsets=10, subset_size=100, seed=4) != first


def test_kid_matches_a_direct_unbiased_mmd_on_the_full_sets():
    # subset_size >= N uses every sample in every subset: a direct double loop over pairs.
    rng = np.random.default_rng(13)
    x, y = rng.standard_normal((20, 3)), rng.standard_normal((20, 3)) + 0.5
    m = 20

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    mean, std = kernel_inception_distance(x, y, subsets=3, subset_size=1000)
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2 samples"):
        kernel_inception_distance(np.zeros((1, 4)), np.zeros((10, 4)))


# ---- Inception Score --------------------------------------------------------------------------

def test_inception_score_of_a_confident_balanced_classifier_is_the_class_count():
    k, splits = 10, 5
    labels = np.tile(np.arange(k), 4 * splits)  # every split holds each class equally often
    probs = np.eye(k)[labels]
    mean, std = inception_score(probs, splits=splits)
    assert mean == pytest.approx(k, rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_uniform_predictions_is_one():
    mean, std = inception_score(np.full((100, 7), 1 / 7), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_from_logits_agrees_with_probabilities():
    rng = np.random.default_rng(20)
    logits = rng.standard_normal((200, 10)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    from_logits = inception_score_from_logits(logits, splits=4)
    assert from_logits == pytest.approx(inception_score(probs, splits=4), rel=1e-10)
    # large logits do not overflow the softmax
    assert np.isfinite(inception_score_from_logits(logits * 1000 + 1e4, splits=4)).all()


def test_inception_score_rejects_rows_that_are_not_probabilities():
    probs = np.full((20, 4), 0.25)
    probs[3, 0] = 0.3
    with pytest.raises(ValueError, match="sum to 1"):
        inception_score(probs, splits=2)
    with pytest.raises(ValueError, match="sample per split"):
        inception_score(np.full((3, 4), 0.25), splits=10)


def test_inception_score_is_deterministic():
    rng = np.random.default_rng(21)
    logits = rng.standard_normal((100, 5))
    assert inception_score_from_logits(logits, splits=5) == inception_score_from_logits(logits, splits=5)


# ---- precision / recall -----------------------------------------------------------------------

def test_precision_recall_of_identical_sets_is_one_one():
    f = np.random.default_rng(30).standard_normal((300, 8))
    assert precision_recall(f, f.copy(), k=3, batch=64) == (1.0, 1.0)


def test_precision_recall_of_far_apart_clouds_is_zero_zero():
    rng = np.random.default_rng(31)
    real, fake = rng.standard_normal((200, 8)), rng.standard_normal((200, 8)) + 100.0
    assert precision_recall(real, fake) == (0.0, 0.0)


def test_samples_from_one_of_two_modes_have_high_precision_and_half_recall():
    rng = np.random.default_rng(32)
    d, n = 2, 1000
    centre = np.zeros(d)
    centre[0] = 20.0
    real = np.concatenate([rng.standard_normal((n, d)) - centre, rng.standard_normal((n, d)) + centre])
    fake = rng.standard_normal((n, d)) + centre  # fresh samples, all from the second mode
    precision, recall = precision_recall(real, fake, k=3, batch=256)
    assert precision > 0.95
    assert recall == pytest.approx(0.5, abs=0.03)


def test_precision_recall_does_not_depend_on_the_batch_size():
    rng = np.random.default_rng(33)
    real, fake = rng.standard_normal((257, 6)), rng.standard_normal((190, 6)) * 1.3
    first = precision_recall(real, fake, k=5, batch=1000)
    assert precision_recall(real, fake, k=5, batch=1000) == first
    assert precision_recall(real, fake, k=5, batch=17) == first


def test_precision_recall_needs_more_than_k_samples():
    with pytest.raises(ValueError, match="more than k=3"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))


# ---- resize -----------------------------------------------------------------------------------

def test_resize_keeps_a_constant_image_constant():
    images = np.full((2, 3, 28, 28), 173, dtype=np.uint8)
    out = resize_for_features(images, 299)
    np.testing.assert_allclose(out, 173.0, atol=1e-4)


def test_resize_returns_float32_in_the_requested_shape():
    images = torch.randint(0, 256, (3, 1, 20, 24), dtype=torch.uint8)
    out = resize_for_features(images, 32)
    assert out.dtype == np.float32 and out.shape == (3, 1, 32, 32)
    assert 0.0 <= out.min() and out.max() <= 255.0
    assert resize_for_features(images, 32, to_rgb=True).shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(resize_for_features(images, 32, to_rgb=True)[:, 1:2], out)


def test_resize_is_smooth_and_unquantised_when_enlarging_a_checkerboard():
    out = resize_for_features(_checkerboard(28)[None, None], 299)[0, 0]
    nearest = np.asarray(Image.fromarray(_checkerboard(28)).resize((299, 299), Image.NEAREST), np.float32)
    assert np.abs(np.diff(nearest, axis=1)).max() == 255  # a hard edge on every source pixel
    assert np.abs(np.diff(out, axis=1)).max() < 60  # interpolated: no jump anywhere near 255
    assert not np.allclose(out, np.round(out))  # values are not rounded back to integers


def test_resize_is_antialiased_when_shrinking_a_fine_checkerboard():
    # A one-pixel checkerboard carries no detail visible at a tenth of the size: the right answer is
    # flat grey. Point sampling without a low-pass filter aliases it to all black.
    fine = _checkerboard(280)
    out = resize_for_features(fine[None, None], 28)[0, 0]
    np.testing.assert_allclose(out, 127.5, atol=1.0)
    nearest = np.asarray(Image.fromarray(fine).resize((28, 28), Image.NEAREST), np.float32)
    assert np.abs(nearest - 127.5).min() > 100


def test_resize_of_a_batch_equals_resizing_each_image_alone():
    images = np.random.default_rng(40).integers(0, 256, (4, 3, 28, 28), dtype=np.uint8)
    batch = resize_for_features(images, 64)
    for i in range(4):
        np.testing.assert_array_equal(batch[i], resize_for_features(images[i:i + 1], 64)[0])


def test_resize_rejects_non_uint8_images():
    with pytest.raises(ValueError, match="uint8"):
        resize_for_features(np.zeros((1, 3, 8, 8), dtype=np.float32), 16)
    with pytest.raises(ValueError, match="to_rgb"):
        resize_for_features(np.zeros((1, 2, 8, 8), dtype=np.uint8), 16, to_rgb=True)
