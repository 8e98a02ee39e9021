"""model-proxy: runs AI models on DICOMweb imaging data.

A drop-in, streaming re-implementation of the zhiva model proxy. The public
surface is the ``model-proxy`` command and :func:`model_proxy.app.create_app`.
"""

__version__ = "0.1.0"
