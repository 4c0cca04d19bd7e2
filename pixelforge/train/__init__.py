"""Training: the generic loop (loop.py) and the run lock (lock.py). Run configs, checkpoints and run
folders live in pixelforge.runs; config, checkpoint and runs here re-export them for older imports.

`pixelforge.train(data, name=..., ...)` is the Python API's train (pixelforge.api.train), and this package
answers to the same call: Python binds a package to its name in the parent package once it is imported,
so after `import pixelforge.train.loop` the name `pixelforge.train` is this package, and calling it must
still train."""

import sys
import types

from ..runs.config import RunConfig, TrainConfig, build_model

__all__ = ["RunConfig", "TrainConfig", "TrainResult", "build_model", "train"]


def __getattr__(name: str):
    # the loop (and tqdm, the data pipeline) is imported on first use, so `pixelforge.train.runs` stays light
    if name in ("train", "TrainResult"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _TrainPackage(types.ModuleType):
    def __call__(self, data, **kwargs):
        """pixelforge.api.train (see the package docstring)."""
        from ..api import train as api_train

        return api_train(data, **kwargs)


sys.modules[__name__].__class__ = _TrainPackage
