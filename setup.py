"""The compiled part of model-proxy: the compact wire-format writer (models/_compact.c).

Everything else is in pyproject.toml. The extension is optional: where no C compiler
is found, ``pip install`` still succeeds and the encoder falls back to a slower
pure-Python path (models/encoder.py says which one runs).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "model_proxy.models._compact",
            ["src/model_proxy/models/_compact.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
