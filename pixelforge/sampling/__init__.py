"""Samplers (functions of one signature), noise schedules and per-sample random streams."""

from .rng import PerSampleGenerator
from .schedules import SCHEDULES, karras_sigmas, loglinear_sigmas, nested_sigmas, truncate_sigmas
from .solvers import SAMPLERS, get_sampler

__all__ = ["PerSampleGenerator", "SCHEDULES", "SAMPLERS", "get_sampler", "karras_sigmas", "loglinear_sigmas", "nested_sigmas",
           "truncate_sigmas"]
