"""Serving: the HTTP API and web page (`pixelforge serve`); needs the `serve` extra (fastapi, uvicorn)."""

from .app import create_app

__all__ = ["create_app"]
