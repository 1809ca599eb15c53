"""The HTTP API and upload page (L4): ``create_app(checkpoint, settings)`` -> a FastAPI app.

FastAPI and uvicorn come with the ``serve`` extra (``pip install 'ctcovid[serve]'``); they load
only when :func:`create_app` or :class:`ServeSettings` is first used, so ``import ctcovid.serve``
is light and a missing extra is reported by name. See :mod:`ctcovid.serve.app`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ctcovid.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'ctcovid.serve' has no attribute {name!r}")
