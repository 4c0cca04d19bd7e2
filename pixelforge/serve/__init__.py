"""Serving: the HTTP API and web page (`pixelforge serve`); needs the `serve` extra (fastapi, uvicorn)."""

__all__ = ["create_app"]


def __getattr__(name: str):
    # imported on first use, so the CLI can read serve.limits (plain Python) without the serve extra
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
