"""What every inference shares, whatever config is in force: admission control (the
memory budget and the concurrency limit) and the threads that encode the wire format.

Made once per process by the app's lifespan and handed to each ProxyState, so a
config reload (runtime/reload.py) keeps the budget and the running inferences' windows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from model_proxy.config import InputFormat
from model_proxy.metrics.registry import ProxyMetrics
from model_proxy.models import encoder
from model_proxy.models.body import Token
from model_proxy.models.formats import body_format
from model_proxy.models.pipeline import BodyPipeline
from model_proxy.models.slice_buffers import SliceBuffers
from model_proxy.pacs.source import DicomSource
from model_proxy.runtime.admission import Admission, MemoryBudget, RequestMemory
from model_proxy.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class Capacity:
    admission: Admission
    encoder_pool: ThreadPoolExecutor
    encoder_threads: int
    pacs_concurrency: int
    slice_buffers: SliceBuffers
    # The process's metrics: the states built on this capacity report to them.
    metrics: ProxyMetrics | None = None

    @classmethod
    def create(cls, settings: Settings, metrics: ProxyMetrics | None = None) -> Capacity:
        threads = settings.encoder_threads or os.cpu_count() or 1
        if encoder.IMPLEMENTATION != "compiled":
            logger.warning(
                "the compiled wire-format encoder was not built (no C compiler when"
                " model-proxy was installed): JSON bodies are encoded several times slower"
            )
        return cls(
            Admission(
                MemoryBudget(settings.memory_budget),
                max_concurrent=settings.max_concurrent_inferences,
            ),
            ThreadPoolExecutor(threads, thread_name_prefix="encoder"),
            threads,
            settings.pacs_concurrency,
            # As many idle buffers as one request keeps in flight: a slice sent
            # is followed by one encoded, so busy requests recycle nearly all.
            SliceBuffers(keep=_slices_in_flight(threads)),
            metrics,
        )

    def body_pipeline(
        self,
        tokens: Sequence[Token],
        source: DicomSource,
        input_format: InputFormat,
        memory: RequestMemory,
    ) -> BodyPipeline:
        """The streamed body of one admitted inference (``async with`` it)."""
        return BodyPipeline(
            tokens,
            source,
            body_format=body_format(
                input_format, slices_in_flight=_slices_in_flight(self.encoder_threads)
            ),
            memory=memory,
            executor=self.encoder_pool,
            buffers=self.slice_buffers,
            pacs_concurrency=self.pacs_concurrency,
            queue_depth=_queue_depth(self.encoder_threads),
        )

    def close(self) -> None:
        self.encoder_pool.shutdown(wait=False, cancel_futures=True)


def _queue_depth(encoder_threads: int) -> int:
    """Enough queued slices to keep every encoder thread busy while one is sent."""
    return 2 * encoder_threads + 2


def _slices_in_flight(encoder_threads: int) -> int:
    """Queued, plus the one being sent and the one waiting for room in the queue."""
    return _queue_depth(encoder_threads) + 2
