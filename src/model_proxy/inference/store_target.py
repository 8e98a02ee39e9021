"""Where and whether an inference's DICOM results are stored: ``?store=true`` (or a
job's ``"store": true``) and the model's ``"store"`` in models.json.

One rule for the GET routes and for jobs (docs/dicom-outputs.md, docs/jobs.md):
asked for by the caller, a failed store is the answer; configured, as configured.
"""

from __future__ import annotations

from model_proxy.config import ModelConfig, ServerConfig
from model_proxy.inference.dicom_outputs import DicomMedia, DicomOutputs
from model_proxy.runtime.state import ProxyState


def dicom_outputs_for(
    state: ProxyState,
    model: ModelConfig,
    server: ServerConfig,
    *,
    media: DicomMedia | None,
    store_asked: bool,
) -> DicomOutputs:
    """The outputs of a request that read from ``server``: ``media`` to return, and
    the server to store in when the caller asked or the model always stores."""
    configured = model.store
    if configured is None and not store_asked:
        return DicomOutputs(media)
    store_in = server
    if configured is not None and configured.server is not None:
        store_in, _ = state.source_for(configured.server)
    required = store_asked or configured is None or configured.required
    return DicomOutputs(media, store_in, required)
