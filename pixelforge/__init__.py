"""pixelforge: build your own image generator, from a folder of images to a served model."""

__version__ = "0.1.0"


def load(name_or_path=None, **kwargs):
    """Load a run folder, a run name or a bundled model for generation (see pixelforge.api.load)."""
    from .api import load as _load
    from .runs import DEFAULT_MODEL

    return _load(name_or_path or DEFAULT_MODEL, **kwargs)


def train(data, **kwargs):
    """Train a model on a folder of images or a bundled data set in RUNS_DIR/NAME, or resume the run of that
    name: `pixelforge.train("digits", name="tiny", steps=200)`; keyword arguments as pixelforge.api.train.
    (Once the package pixelforge.train is imported, Python binds this name to it; calling it trains the same.)"""
    from .api import train as _train

    return _train(data, **kwargs)


def distill(teacher, steps_out: int = 4, **kwargs):
    """Distil a diffusion run into a few-step sampler (progressive distillation), in RUNS_DIR/NAME or the folder
    `out`, or resume that distillation: `pixelforge.distill("mnist-diffusion", 4, name="mnist-distilled",
    iterations=200)`; keyword arguments as pixelforge.distillation.distill."""
    from .distillation import distill as _distill

    return _distill(teacher, steps_out, **kwargs)
