"""Few-step distillation of a diffusion model: the record a distilled run keeps (DistillConfig) and progressive
distillation's loss (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models",
Algorithm 2), written in EDM's sigma parameterisation around a frozen teacher's own sampler."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..condition import Cond
from ..fields import from_fields

METHODS = ("progressive",)
# The teacher's solver over its own grid: deterministic ODE steps only (the student learns a deterministic map).
TEACHER_SAMPLERS = ("heun", "euler", "ddim", "dpmpp_2m")
STEPS_OUT = (1, 16)  # the distilled sampler's steps (= network evaluations)
SPAN = (2, 8)  # teacher steps per student step (2: progressive distillation's halving)
# The distilled sampler: DDIM (Euler in sigma space) on the nested grid, guidance folded into the network.
STUDENT_SAMPLER, STUDENT_SCHEDULE = "ddim", "nested"


@dataclass(frozen=True)
class DistillConfig:
    """A distilled run's record of its teacher and of what it learned (model config field `distill`).

    method: one of METHODS. "progressive": the student's DDIM step over one interval of the nested grid
        (sampling.nested_sigmas) is trained to land where the teacher's `span` steps of `teacher_sampler` over
        the same interval land (Salimans & Ho Algorithm 2; span 2 is their halving; the student starts as a
        copy of the teacher).
    teacher, teacher_path, teacher_sha256: the teacher run as named, its folder, and the SHA-256 of its weights
        file, checked whenever the distillation (re)starts and reads the teacher.
    steps_out: the distilled sampler's steps, its network evaluations per image (STEPS_OUT).
    span: teacher steps per student step (SPAN): the teacher runs steps_out * span steps.
    teacher_sampler: the teacher's solver (TEACHER_SAMPLERS): a trained model's own default (Heun), or DDIM
        for a distilled teacher (a second round).
    guidance: the classifier-free guidance scale of the teacher, folded into the student: the student, sampled
        with guidance 1, gives the guided teacher's images (1: no guidance).
    """

    method: str = "progressive"
    teacher: str = ""
    teacher_path: str = ""
    teacher_sha256: str = ""
    steps_out: int = 4
    span: int = 2
    teacher_sampler: str = "heun"
    guidance: float = 1.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"distill.method {self.method!r} is not known; choose one of: {', '.join(METHODS)}")
        for name, (low, high) in (("steps_out", STEPS_OUT), ("span", SPAN)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"distill.{name} must be a whole number in {low}..{high}, got {value!r}")
        if self.teacher_sampler not in TEACHER_SAMPLERS:
            raise ValueError(f"distill.teacher_sampler {self.teacher_sampler!r} is not one of: {', '.join(TEACHER_SAMPLERS)}")
        g = self.guidance
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not 0.0 <= g <= 20.0:
            raise ValueError(f"distill.guidance must be a number in [0, 20], got {g!r}")
        for name in ("teacher", "teacher_path", "teacher_sha256"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"distill.{name} must name the teacher run (a non-empty string), got "
                                 f"{getattr(self, name)!r}")

    @property
    def teacher_steps(self) -> int:
        return self.steps_out * self.span


def distill_config(value) -> DistillConfig | None:
    """None, or a DistillConfig from itself or a dict of its fields (config.json's "distill")."""
    if value is None or isinstance(value, DistillConfig):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"distill must be an object of distillation fields or null, got {value!r}")
    return from_fields(DistillConfig, value, "distill")


Denoiser = Callable[[torch.Tensor, torch.Tensor, Cond | None], torch.Tensor]


def progressive_distillation_loss(student: Denoiser, teacher: Denoiser, solver: Callable, x: torch.Tensor, cond: Cond,
                                  grid: torch.Tensor, span: int, sigma_data: float,
                                  generator: torch.Generator) -> torch.Tensor:
    """Per-sample loss (B,) of one step of progressive distillation (Salimans & Ho 2022, Algorithm 2).

    x (B, C, H, W): data; grid: the teacher's nested schedule (steps_out * span + 1 sigmas ending in 0), whose
    every span-th point is the student's. Each sample draws a student interval i, is noised to its start
    sigma_t = grid[span i], and the teacher's `solver` runs its span steps to sigma_s = grid[span (i + 1)],
    ending at z_s. The student's DDIM step z_s = D + (sigma_s / sigma_t) (z_t - D) lands there exactly when
    its denoised estimate is x~ = (z_s - (sigma_s / sigma_t) z_t) / (1 - sigma_s / sigma_t) (their eq. 8 in
    sigma space); the loss is EDM's weighted error to x~, lambda = 1 / c_out^2 (their "SNR + 1" weighting).
    """
    b = x.shape[0]
    intervals = (len(grid) - 1) // span
    i = torch.randint(intervals, (b,), device=x.device, generator=generator)  # (B,) the student's interval
    sigma_t, sigma_s = grid[span * i].float(), grid[span * (i + 1)].float()  # (B,), (B,)
    z_t = x + sigma_t.reshape(-1, 1, 1, 1) * torch.randn(x.shape, device=x.device, generator=generator)
    with torch.no_grad():
        z_s = torch.empty_like(z_t)  # (B, C, H, W): where the teacher's steps end
        for j in i.unique().tolist():  # the samples of one interval share its sub-grid: one solver call each
            rows = (i == j).nonzero().flatten()
            sub = cond.index(rows) if cond.given_fields() else cond
            z_s[rows] = solver(teacher, z_t[rows], grid[span * j: span * (j + 1) + 1], cond=sub)
        ratio = (sigma_s / sigma_t).reshape(-1, 1, 1, 1)  # (B, 1, 1, 1), 0 on the last interval
        target = (z_s - ratio * z_t) / (1 - ratio)
    weight = (sigma_t**2 + sigma_data**2) / (sigma_t * sigma_data) ** 2  # (B,)
    denoised = student(z_t, sigma_t, cond)
    return weight * (denoised - target).square().mean(dim=(1, 2, 3))
