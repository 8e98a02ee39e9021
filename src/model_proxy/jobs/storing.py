"""A job's store step: its result as DICOM SEG/SR, stored in the PACS (docs/jobs.md).

It runs once the model's JSON result is in the result cache, through the GET
route's own conversion and store (inference/dicom_outputs.py), reading that
JSON from the cache rather than calling the model again. A store the caller
asked for (``"store": true``, ``?store=true``) or that models.json requires
fails the job; one that models.json does not require is recorded on the job
and on ``/status`` (``lastStoreFailure``), and the job succeeds with its JSON.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from model_proxy.errors import Gone, ProxyError
from model_proxy.inference import InferenceRequest, InferenceRunner
from model_proxy.inference.dicom_outputs import DicomOutputs, run_with_dicom_outputs
from model_proxy.inference.runner import Outcome
from model_proxy.inference.store_target import dicom_outputs_for
from model_proxy.runtime.reload import LiveState
from model_proxy.runtime.state import ProxyState

logger = logging.getLogger(__name__)

# The header run_with_dicom_outputs names the stored SOP Instance UIDs in.
_STORED_HEADER = "DICOM-Stored"


@dataclass(frozen=True)
class StoreOutcome:
    """What the store step did: ``stored`` SOP Instance UIDs in server ``server``, or
    ``error`` ({message, code}) when a store that was not required failed."""

    server: str
    stored: list[str]
    error: dict[str, str] | None = None


def store_outputs(
    request: InferenceRequest, state: ProxyState, *, store_asked: bool
) -> DicomOutputs | None:
    """Where the job stores its results, as the GET route would; None: it does not."""
    outputs = dicom_outputs_for(
        state, request.model, request.server, media=None, store_asked=store_asked
    )
    return outputs if outputs.store_in is not None else None


class _CachedResult(InferenceRunner):
    """The job's result as the result cache holds it, under the key the job produced:
    the conversion reads it from there (``run``) instead of calling the model."""

    def __init__(
        self, request: InferenceRequest, state: ProxyState, live: LiveState, key: str
    ) -> None:
        super().__init__(request, state, live)
        self._key = key

    async def run(self) -> Outcome:
        outcome = await self.from_cache(self._key, from_redis=True)
        if outcome is None:
            raise Gone(
                "the job's result left the result cache (--cache-size) before it was stored"
                " as DICOM; submit the job again"
            )
        return outcome


async def store_results(
    request: InferenceRequest,
    state: ProxyState,
    live: LiveState,
    result_key: str,
    outputs: DicomOutputs,
) -> StoreOutcome:
    """Convert the cached result ``result_key`` and store it where ``outputs`` says.

    A required store's failure raises its ProxyError (the GET route's 502/504 codes);
    a not-required one's is logged, kept for /status and returned."""
    assert outputs.store_in is not None
    server = outputs.store_in.id
    # The JSON whole and uncompressed, as the GET route reads it for a conversion; the
    # failure of a store that is not required is handled here, to keep its code.
    request = replace(request, encoding=None, if_none_match=None)
    runner = _CachedResult(request, state, live, result_key)
    try:
        outcome = await run_with_dicom_outputs(
            runner, request, state, replace(outputs, store_required=True)
        )
    except ProxyError as exc:
        if outputs.store_required:
            raise
        logger.warning("DICOM results not stored (not required): %s", exc.message)
        state.store_failures[server] = {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "message": exc.message,
        }
        return StoreOutcome(server, [], exc.to_json())
    # The answer itself is not wanted: finalizing it removes its spooled files.
    if outcome.finalize is not None:
        await outcome.finalize(None)
    header = outcome.headers.get(_STORED_HEADER, "")
    return StoreOutcome(server, [uid.strip() for uid in header.split(",") if uid.strip()])
