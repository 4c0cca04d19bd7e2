"""pixelforge: build your own image generator, from a folder of images to a served model."""

__version__ = "0.1.0"


def load(name_or_path=None, **kwargs):
    """Load a run folder, a run name or a bundled model for generation (see pixelforge.api.load)."""
    from .api import load as _load
    from .runs import DEFAULT_MODEL

    return _load(name_or_path or DEFAULT_MODEL, **kwargs)
