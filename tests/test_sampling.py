"""Specifications of the samplers, schedules and per-sample random streams, checked against an analytic denoiser.

With data x0 ~ N(mu, s^2) per pixel, the exact denoiser is D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2),
and the probability-flow ODE carries x = mu + sqrt(s^2 + sigma^2) z to mu + s z for every z: each
deterministic sampler's error against that known end point is its discretisation error alone.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from pixelforge.sampling import SAMPLERS, PerSampleGenerator, get_sampler, karras_sigmas, loglinear_sigmas, nested_sigmas

MU, S = 0.3, 0.5
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
DETERMINISTIC = ("euler", "heun", "dpmpp_2m", "ddim")


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
    """E[x0 | x] for x0 ~ N(MU, S^2), x = x0 + sigma * n: x (B, C, H, W), sigma (B,)."""
    sig2 = sigma.to(x.dtype).reshape(-1, 1, 1, 1) ** 2
    return (S**2 * x + sig2 * MU) / (S**2 + sig2)


def _z(n: int = 64, shape=(1, 4, 4)) -> torch.Tensor:
    return PerSampleGenerator(list(range(n)), "cpu").randn(shape, dtype=torch.float64)  # (n, *shape)


def ode_error(name: str, steps: int, z: torch.Tensor) -> float:
    """RMS distance (in units of S) between the sampler's output and the exact ODE end point mu + s z."""
    sigmas = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
    x = MU + math.sqrt(S**2 + SIGMA_MAX**2) * z  # exactly on the ODE trajectory at sigma_max
    out = get_sampler(name)(gaussian_denoiser, x, sigmas, cond=None, generator=None, callback=None)
    return float((out - (MU + S * z)).square().mean().sqrt()) / S


# --- deterministic samplers -----------------------------------------------------------------------


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_sampler_maps_noise_to_the_exact_ode_end_point(name):
    z = _z()
    errors = [ode_error(name, steps, z) for steps in (16, 32, 64)]
    assert errors[-1] < (0.06 if name in ("euler", "ddim") else 0.01), errors
    assert errors[0] > errors[1] > errors[2], f"error should shrink with more steps: {errors}"


@pytest.mark.parametrize("name", ["heun", "dpmpp_2m"])
def test_second_order_samplers_beat_euler_at_the_same_step_count(name):
    z = _z()
    assert ode_error(name, 32, z) < 0.3 * ode_error("euler", 32, z)


@pytest.mark.parametrize("name, low, high", [("euler", 1.7, 2.4), ("heun", 3.5, 6.0), ("dpmpp_2m", 3.5, 6.0)])
def test_doubling_the_steps_cuts_the_error_by_the_order_of_the_method(name, low, high):
    z = _z()
    ratio = ode_error(name, 32, z) / ode_error(name, 64, z)
    assert low < ratio < high, f"{name}: error ratio {ratio:.2f} when doubling the steps"


def test_ddim_equals_euler_in_sigma_space():
    z = _z()
    sigmas = karras_sigmas(10)
    x = MU + math.sqrt(S**2 + SIGMA_MAX**2) * z
    a = SAMPLERS["ddim"](gaussian_denoiser, x, sigmas)
    b = SAMPLERS["euler"](gaussian_denoiser, x, sigmas)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_ignore_the_generator_and_work_in_float32(name):
    z = _z().float()
    sigmas = karras_sigmas(12)
    x = MU + math.sqrt(S**2 + SIGMA_MAX**2) * z
    a = SAMPLERS[name](gaussian_denoiser, x, sigmas)
    b = SAMPLERS[name](gaussian_denoiser, x, sigmas, generator=PerSampleGenerator(list(range(len(x))), "cpu"))
    assert a.dtype == torch.float32
    assert torch.equal(a, b)


# --- ancestral sampler ----------------------------------------------------------------------------


def _ancestral(steps: int, n: int = 4000) -> torch.Tensor:
    gen = PerSampleGenerator(list(range(n)), "cpu")
    x = gen.randn((1, 1, 1), dtype=torch.float64) * math.sqrt(S**2 + SIGMA_MAX**2) + MU  # (n, 1, 1, 1)
    return SAMPLERS["ancestral"](gaussian_denoiser, x, karras_sigmas(steps), generator=gen)


def test_ancestral_sampler_reproduces_the_data_distribution():
    out = _ancestral(100)
    # Standard errors with 4000 samples: 0.008 on the mean, 0.006 on the std. Ancestral Euler is
    # first order and converges slowly: 100 Karras steps leave the std about 6 % short of s (0.47 of 0.5).
    assert abs(float(out.mean()) - MU) < 0.03
    assert abs(float(out.std()) - S) < 0.1 * S


def test_ancestral_sampler_std_approaches_the_data_std_with_more_steps():
    coarse, fine = float(_ancestral(20, 2000).std()), float(_ancestral(100, 2000).std())
    assert abs(fine - S) < abs(coarse - S)


def test_ancestral_sampler_needs_a_generator():
    with pytest.raises(ValueError, match="generator"):
        SAMPLERS["ancestral"](gaussian_denoiser, torch.zeros(2, 1, 1, 1), karras_sigmas(3))


def test_ancestral_sample_depends_only_on_its_own_seed():
    sigmas = karras_sigmas(8)

    def run(seeds):
        gen = PerSampleGenerator(seeds, "cpu")
        x = gen.randn((1, 2, 2)) * SIGMA_MAX
        return SAMPLERS["ancestral"](gaussian_denoiser, x, sigmas, generator=gen)

    batch = run([7, 8, 9])
    alone = run([8])
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-6)


# --- the shared signature -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_shares_one_signature_and_calls_back_once_per_step(name):
    params = inspect.signature(SAMPLERS[name]).parameters
    assert list(params)[:3] == ["denoiser", "x", "sigmas"]
    for keyword in ("cond", "generator", "callback"):
        assert params[keyword].kind is inspect.Parameter.KEYWORD_ONLY
    calls = []
    sigmas = karras_sigmas(5)
    gen = PerSampleGenerator([0, 1], "cpu")
    x = gen.randn((1, 2, 2)) * SIGMA_MAX
    out = SAMPLERS[name](gaussian_denoiser, x, sigmas, cond=None, generator=gen,
                         callback=lambda i, total, x, den: calls.append((i, total)))
    assert out.shape == x.shape
    assert calls == [(i, 5) for i in range(5)]


def test_unknown_sampler_name_lists_the_valid_names():
    with pytest.raises(ValueError) as err:
        get_sampler("rk45")
    assert "rk45" in str(err.value)
    for name in SAMPLERS:
        assert name in str(err.value)


# --- schedules ------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", [karras_sigmas, loglinear_sigmas])
@pytest.mark.parametrize("steps", [1, 2, 18])
def test_schedule_decreases_from_sigma_max_to_exactly_zero(schedule, steps):
    sigmas = schedule(steps, 0.002, 80.0)
    assert sigmas.shape == (steps + 1,)
    assert sigmas[0].item() == pytest.approx(80.0)
    assert sigmas[-1].item() == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    if steps > 1:
        assert sigmas[-2].item() == pytest.approx(0.002)


def test_karras_schedule_follows_eq_5_with_rho():
    sigmas = karras_sigmas(4, 0.002, 80.0, rho=7.0)
    inv_max, inv_min = 80.0 ** (1 / 7), 0.002 ** (1 / 7)
    expected = [(inv_max + i / 3 * (inv_min - inv_max)) ** 7 for i in range(4)] + [0.0]
    torch.testing.assert_close(sigmas, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("schedule", [karras_sigmas, loglinear_sigmas, nested_sigmas])
@pytest.mark.parametrize("steps", [0, -3])
def test_schedule_rejects_a_step_count_below_one(schedule, steps):
    with pytest.raises(ValueError, match="steps"):
        schedule(steps)


# --- per-sample random streams --------------------------------------------------------------------


def test_per_sample_generator_row_depends_only_on_its_seed():
    shape = (2, 3, 3)
    alone = PerSampleGenerator([42], "cpu").randn(shape)
    for seeds in ([42, 1, 2], [5, 42], [42, 42, 9, 10]):
        rows = PerSampleGenerator(seeds, "cpu").randn(shape)
        assert rows.shape == (len(seeds), *shape)
        assert torch.equal(rows[seeds.index(42)], alone[0])


def test_per_sample_generator_streams_continue_independently():
    a = PerSampleGenerator([3, 4], "cpu")
    b = PerSampleGenerator([4], "cpu")
    first, second = a.randn((5,)), a.randn((5,))
    assert torch.equal(first[1], b.randn((5,))[0])
    assert torch.equal(second[1], b.randn((5,))[0])
    assert not torch.equal(first, second)


def test_per_sample_generator_randn_like_checks_the_batch_size():
    gen = PerSampleGenerator([0, 1], "cpu")
    assert gen.randn_like(torch.zeros(2, 1, 4, 4, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(ValueError, match="3"):
        gen.randn_like(torch.zeros(3, 1, 4, 4))
