"""Noise-level schedules: pure functions from a step count to a decreasing sigma sequence ending in 0."""

from __future__ import annotations

import torch


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, then 0."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    inv_min, inv_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def loglinear_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0) -> torch.Tensor:
    """Noise levels evenly spaced in log sigma, then 0."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    sigmas = torch.logspace(torch.log10(torch.tensor(sigma_max)), torch.log10(torch.tensor(sigma_min)), steps, dtype=torch.float64)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def nested_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """Karras' curve (eq. 5) at u = i/N for i = 0..N-1, then 0: the last step runs from the curve at (N-1)/N
    straight to 0, and sigma_min is where the curve would end, never visited. The grids nest: the N-step grid
    is every other point of the 2N-step one (and every k-th of the kN-step one), which progressive
    distillation needs (Salimans & Ho 2022: one student step spans two teacher steps). karras_sigmas ends
    with a step from sigma_min to 0, a network evaluation that changes almost nothing: wasted at 4 steps."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    u = torch.arange(steps, dtype=torch.float64) / steps  # (N,) in [0, 1)
    inv_min, inv_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (inv_max + u * (inv_min - inv_max)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def truncate_sigmas(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """The tail of a schedule that starts an edit (SDEdit, Meng et al. 2022): of an N-step schedule
    (N + 1 sigmas ending in 0), the last round(strength * N) steps. Strength 1 keeps the whole schedule
    (sigma_start = sigma_max); strength 0 keeps only the final 0, so no step runs and the input comes
    back unchanged; in between, sigma_start is the sigma found at fraction `strength` of the steps from
    the end, so the edit runs that many of the steps. The result is again decreasing and ends in 0, so
    any sampler takes it unchanged."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    steps = len(sigmas) - 1
    return sigmas[steps - round(strength * steps):]


SCHEDULES = {"karras": karras_sigmas, "loglinear": loglinear_sigmas, "nested": nested_sigmas}
RHO_SCHEDULES = ("karras", "nested")  # the schedules a rho shapes
