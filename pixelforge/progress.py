"""Progress bars shared by the commands: one bar per stage, each with its ETA, on stderr."""

from __future__ import annotations

from typing import Callable

from tqdm.auto import tqdm


def stage_bar(total: int, desc: str, *, unit: str = "img", enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar for one stage of work (its ETA comes from tqdm's rate); disabled when not enabled."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, **kwargs)


def whole_images(bar: tqdm) -> Callable[[float, int], None]:
    """A sampling callback(done, n) moving `bar` by whole images only.

    Samplers report fractional progress (64 images over 18 steps advance 3.56 a step); the bar
    counts the images finished so far, never goes back, and never passes its total.
    """

    def callback(done: float, n: int) -> None:
        # 1e-6: a chunk's last report, 64 * 18 / 18, may come out a hair under 64 in floating point
        whole = min(int(done + 1e-6), int(bar.total))
        if whole > bar.n:
            bar.update(whole - bar.n)

    return callback


def image_bar(total: int, desc: str, *, enabled: bool = True, **kwargs) -> tuple[tqdm, Callable[[float, int], None]]:
    """(bar, callback) for sampling `total` images: the callback takes the sampler's (done, n)."""
    bar = stage_bar(total, desc, unit="img", enabled=enabled, **kwargs)
    return bar, whole_images(bar)


def eta_seconds(steps_left: int, seconds_per_step: float | None, budget_left: float | None) -> tuple[float | None, str]:
    """(seconds until training stops, what stops it): the steps left at the current rate, or the
    wall-clock budget left (--max-minutes), whichever ends first. None while the rate is unknown
    and no budget is set."""
    by_steps = steps_left * seconds_per_step if seconds_per_step is not None else None
    if budget_left is not None:
        budget_left = max(budget_left, 0.0)
        if by_steps is None or budget_left < by_steps:
            return budget_left, "time budget"
    return by_steps, "steps"


def train_postfix(loss: float, images: int, seconds: float, eta: tuple[float | None, str]) -> dict[str, str]:
    """The training bar's postfix: mean loss and images/s since the last log row, and the ETA by
    the binding limit ("left=1:05 (time budget)"); shown from the first step on."""
    out = {"loss": f"{loss:.4f}", "img_s": f"{images / max(seconds, 1e-9):.0f}"}
    left, what = eta
    if left is not None:
        out["left"] = tqdm.format_interval(left) + (" (time budget)" if what == "time budget" else "")
    return out
