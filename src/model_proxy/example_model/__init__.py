"""The bundled example Model API (``model-proxy example-model``).

A Starlette app that speaks the proxy's wire format and answers segmentation,
annotation and prediction requests with numpy thresholds; the template for
writing your own Model API (``docs/model-api.md``).
"""

from .app import create_app, run

__all__ = ["create_app", "run"]
