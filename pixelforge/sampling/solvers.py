"""Samplers for the probability-flow ODE / reverse SDE of a denoiser D(x, sigma, cond).

Every sampler shares one signature, `sample_<name>(denoiser, x, sigmas, *, cond, generator, callback)`:
x starts as noise at sigmas[0], sigmas is a decreasing schedule ending in 0, and the returned
tensor is the final denoised sample. `callback(i, total, x, denoised)` is called after each step.
"""

from __future__ import annotations

from typing import Callable

import torch

from .rng import PerSampleGenerator

Denoiser = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]


def _sigma(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return s.to(device=x.device, dtype=x.dtype).expand(x.shape[0])


def _notify(callback, i: int, total: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
    if callback is not None:
        callback(i, total, x, denoised)


@torch.no_grad()
def sample_euler(denoiser: Denoiser, x, sigmas, *, cond=None, generator: PerSampleGenerator | None = None, callback=None):
    """Euler's method on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022)."""
    n = len(sigmas) - 1
    for i in range(n):
        denoised = denoiser(x, _sigma(sigmas[i], x), cond)
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
        _notify(callback, i, n, x, denoised)
    return x


@torch.no_grad()
def sample_heun(denoiser: Denoiser, x, sigmas, *, cond=None, generator: PerSampleGenerator | None = None, callback=None):
    """Heun's 2nd-order method, Karras et al. 2022 Algorithm 1 (deterministic; 2N-1 evaluations)."""
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, _sigma(s, x), cond)
        d = (x - denoised) / s
        x_next = x + d * (s_next - s)
        if s_next > 0:  # the 2nd-order correction is skipped on the last step to sigma = 0
            denoised_next = denoiser(x_next, _sigma(s_next, x), cond)
            d_next = (x_next - denoised_next) / s_next
            x_next = x + (d + d_next) / 2 * (s_next - s)
        x = x_next
        _notify(callback, i, n, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser: Denoiser, x, sigmas, *, cond=None, generator: PerSampleGenerator | None = None, callback=None):
    """DPM-Solver++(2M), Lu et al. 2022 Algorithm 2, in the sigma parameterisation (t = -log sigma)."""
    n = len(sigmas) - 1
    old_denoised = None
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, _sigma(s, x), cond)
        if s_next == 0:
            x = denoised
        else:
            t, t_next = -torch.log(s), -torch.log(s_next)
            h = t_next - t
            if old_denoised is None:
                d_hat = denoised
            else:
                h_last = t - (-torch.log(sigmas[i - 1]))
                r = h_last / h
                d_hat = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (s_next / s) * x - torch.expm1(-h) * d_hat
        old_denoised = denoised
        _notify(callback, i, n, x, denoised)
    return x


@torch.no_grad()
def sample_ddim(denoiser: Denoiser, x, sigmas, *, cond=None, generator: PerSampleGenerator | None = None, callback=None):
    """Deterministic DDIM (Song et al. 2021, eta = 0) written in sigma space: x' = D + sigma' (x - D) / sigma.

    In the variance-exploding sigma parameterisation this is the same update as Euler's method on
    the probability-flow ODE (Karras et al. 2022, sec. 3); it is kept under its familiar name."""
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, _sigma(s, x), cond)
        x = denoised + (s_next / s) * (x - denoised)
        _notify(callback, i, n, x, denoised)
    return x


@torch.no_grad()
def sample_ancestral(denoiser: Denoiser, x, sigmas, *, cond=None, generator: PerSampleGenerator | None = None, callback=None):
    """Euler ancestral (DDPM-like, DDIM with eta = 1): step down to sigma_down, add fresh noise sigma_up."""
    if generator is None:
        raise ValueError("the ancestral sampler needs a generator for its fresh noise")
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, _sigma(s, x), cond)
        sigma_up = torch.sqrt(torch.clamp(s_next**2 * (s**2 - s_next**2) / s**2, min=0.0))
        sigma_down = torch.sqrt(s_next**2 - sigma_up**2)
        x = denoised + (sigma_down / s) * (x - denoised)
        if s_next > 0:
            x = x + generator.randn_like(x) * sigma_up
        _notify(callback, i, n, x, denoised)
    return x


SAMPLERS: dict[str, Callable] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "ddim": sample_ddim,
    "ancestral": sample_ancestral,
}


def get_sampler(name: str) -> Callable:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}") from None
