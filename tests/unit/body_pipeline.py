"""The body pipeline as the unit tests run it: on the in-memory fake PACS
(fake_pacs.py), a small admission budget and a shared encoder pool
(test_pipeline.py, test_pipeline_memory.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fake_pacs import FakeSource

from model_proxy.config import InputFormat
from model_proxy.models.body import Token
from model_proxy.models.encoder import encode_instance
from model_proxy.models.formats import body_format
from model_proxy.models.pipeline import BodyPipeline
from model_proxy.models.slice_buffers import SliceBuffers
from model_proxy.runtime.admission import Admission, MemoryBudget, RequestMemory

MiB = 1024 * 1024

POOL = ThreadPoolExecutor(2, thread_name_prefix="test-encoder")


@asynccontextmanager
async def open_body(
    tokens: list[Token],
    source: FakeSource,
    *,
    input_format: InputFormat = InputFormat.JSON,
    memory: RequestMemory | None = None,
    pacs_concurrency: int = 4,
    buffers: SliceBuffers | None = None,
) -> AsyncIterator[BodyPipeline]:
    admission = Admission(MemoryBudget(64 * MiB), max_concurrent=1)
    async with (
        admission.admit() as admitted,
        BodyPipeline(
            tokens,
            source,
            body_format=body_format(input_format, slices_in_flight=8),
            memory=memory or admitted,
            executor=POOL,
            buffers=buffers or SliceBuffers(keep=8),
            pacs_concurrency=pacs_concurrency,
            queue_depth=6,
        ) as pipeline,
    ):
        yield pipeline


async def collect(pipeline: BodyPipeline) -> bytes:
    return b"".join([bytes(chunk) async for chunk in pipeline.chunks()])


async def write(
    tokens: list[Token], source: FakeSource, **options: Any
) -> tuple[Any, BodyPipeline]:
    async with open_body(tokens, source, **options) as pipeline:
        body = await collect(pipeline)
    return json.loads(body), pipeline


def instances(strings: list[str]) -> list[bytes]:
    return [bytes(json.loads(s)) for s in strings]


def as_text(part10: bytes) -> str:
    """An instance string as a Model API reads it from the body; the encoder's
    round trip through the reference decoder is tested in test_wire_body.py."""
    text = orjson.loads(encode_instance(part10))
    assert isinstance(text, str)
    return text
