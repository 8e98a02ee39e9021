"""The streamed body: order, framing, overlap, memory accounting and failures.

The source is an in-memory fake (``fake_pacs.py``); the same pipeline runs
against a real Orthanc and a real model in the integration tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from fake_pacs import A1, A2, A3, B1, FILES, SERIES_A, SERIES_B, STUDY, FakeSource

from model_proxy.config import InputFormat, Level
from model_proxy.errors import NotFound, PacsError
from model_proxy.models.body import InstanceInput, Retrieval, SeriesInput, Token, plan_body
from model_proxy.models.encoder import (
    encode_instance,
)
from model_proxy.models.formats import body_format
from model_proxy.models.pipeline import BodyPipeline
from model_proxy.models.slice_buffers import SliceBuffers
from model_proxy.pacs.multipart import MultipartDecoder, boundary_from_content_type
from model_proxy.pacs.source import Target
from model_proxy.runtime.admission import Admission, MemoryBudget, RequestMemory

MiB = 1024 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


_POOL = ThreadPoolExecutor(2, thread_name_prefix="test-encoder")


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
            executor=_POOL,
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


@pytest.mark.anyio
async def test_instance_level_body_is_one_string() -> None:
    source = FakeSource()
    tokens = plan_body(Level.INSTANCE, Target(STUDY, SERIES_A, A2))
    body, writer = await write(tokens, source)
    assert isinstance(body, str)
    assert bytes(json.loads(body)) == FILES[A2]
    assert (writer.instances_sent, writer.bytes_in) == (1, len(FILES[A2]))
    assert source.entered == source.exited == [Target(STUDY, SERIES_A, A2)]


@pytest.mark.anyio
async def test_series_level_body_is_an_array() -> None:
    source = FakeSource()
    body, writer = await write(plan_body(Level.SERIES, Target(STUDY, SERIES_A)), source)
    assert isinstance(body, list)
    assert instances(body) == [FILES[A1], FILES[A2], FILES[A3]]
    assert writer.instances_sent == 3
    assert writer.bytes_in == sum(len(FILES[uid]) for uid in (A1, A2, A3))


@pytest.mark.anyio
async def test_study_level_body_is_a_flat_array_of_all_series() -> None:
    source = FakeSource()
    body, writer = await write(plan_body(Level.STUDY, Target(STUDY)), source)
    assert instances(body) == [FILES[A1], FILES[A2], FILES[A3], FILES[B1]]
    assert writer.instances_sent == 4
    assert source.entered == [Target(STUDY)]


@pytest.mark.anyio
async def test_empty_series_is_an_empty_array() -> None:
    source = FakeSource(extra_series={"1.2.3.9": []})
    body, writer = await write(plan_body(Level.SERIES, Target(STUDY, "1.2.3.9")), source)
    assert body == []
    assert (writer.instances_sent, writer.bytes_in) == (0, 0)


@pytest.mark.anyio
async def test_study_with_series_inputs() -> None:
    source = FakeSource()
    inputs = [SeriesInput("series-two", SERIES_B), SeriesInput("series-one", SERIES_A)]
    body, writer = await write(plan_body(Level.STUDY, Target(STUDY), inputs), source)
    assert list(body) == ["series-two", "series-one"]
    assert list(body["series-two"]) == ["data"]
    assert instances(body["series-two"]["data"]) == [FILES[B1]]
    assert instances(body["series-one"]["data"]) == [FILES[A1], FILES[A2], FILES[A3]]
    assert writer.instances_sent == 4
    # Retrievals start in plan order, and run concurrently.
    assert source.entered == [Target(STUDY, SERIES_B), Target(STUDY, SERIES_A)]
    assert sorted(source.exited, key=str) == sorted(source.entered, key=str)


@pytest.mark.anyio
async def test_study_with_nested_instance_inputs() -> None:
    source = FakeSource()
    inputs = [
        SeriesInput("ct", SERIES_A, (InstanceInput("first", A1), InstanceInput("last", A3))),
        SeriesInput("other", SERIES_B),
    ]
    body, writer = await write(plan_body(Level.STUDY, Target(STUDY), inputs), source)
    assert set(body) == {"ct", "other"}
    nested = body["ct"]["data"]
    assert set(nested) == {"first", "last"}
    assert bytes(json.loads(nested["first"]["data"])) == FILES[A1]
    assert bytes(json.loads(nested["last"]["data"])) == FILES[A3]
    assert instances(body["other"]["data"]) == [FILES[B1]]
    assert writer.instances_sent == 3
    assert source.entered == [
        Target(STUDY, SERIES_A, A1),
        Target(STUDY, SERIES_A, A3),
        Target(STUDY, SERIES_B),
    ]


@pytest.mark.anyio
async def test_series_with_instance_inputs() -> None:
    source = FakeSource()
    inputs = [InstanceInput("moving", A3), InstanceInput("fixed", A1)]
    body, writer = await write(plan_body(Level.SERIES, Target(STUDY, SERIES_A), inputs), source)
    assert body == {
        "moving": {"data": json.loads(encode_instance(FILES[A3]))},
        "fixed": {"data": json.loads(encode_instance(FILES[A1]))},
    }
    assert writer.instances_sent == 2
    assert writer.bytes_in == len(FILES[A1]) + len(FILES[A3])


@pytest.mark.anyio
async def test_not_found_is_raised_on_entering_before_any_byte() -> None:
    source = FakeSource()
    tokens = plan_body(Level.SERIES, Target(STUDY, "1.2.3.404"))
    with pytest.raises(NotFound) as info:
        async with open_body(tokens, source):
            pytest.fail("entering must raise")
    assert info.value.code == "not_on_pacs"
    assert source.entered == []


@pytest.mark.anyio
async def test_entering_opens_the_first_retrievals_up_to_the_pacs_concurrency() -> None:
    source = FakeSource(extra_series={"1.2.3.3": ["x"], "1.2.3.4": ["y"]})
    keys = ("one", "two", "three", "four")
    uids = (SERIES_A, SERIES_B, "1.2.3.3", "1.2.3.4")
    inputs = [SeriesInput(key, uid) for key, uid in zip(keys, uids, strict=True)]
    tokens = plan_body(Level.STUDY, Target(STUDY), inputs)
    async with open_body(tokens, source, pacs_concurrency=2):
        assert source.entered[:2] == [Target(STUDY, SERIES_A), Target(STUDY, SERIES_B)]
        assert source.most_open <= 2
    # Leaving before the body was sent closes every retrieval it opened.
    assert sorted(source.exited, key=str) == sorted(source.entered, key=str)
    assert source.open_now == 0


@pytest.mark.anyio
async def test_not_found_on_a_concurrent_retrieval_is_raised_before_the_model_is_called() -> None:
    source = FakeSource(missing=frozenset({Target(STUDY, SERIES_B)}))
    inputs = [SeriesInput("one", SERIES_A), SeriesInput("two", SERIES_B)]
    with pytest.raises(NotFound):
        async with open_body(plan_body(Level.STUDY, Target(STUDY), inputs), source):
            pytest.fail("entering must raise")
    assert source.open_now == 0


@pytest.mark.anyio
async def test_not_found_on_a_later_retrieval_propagates_from_chunks() -> None:
    source = FakeSource(missing=frozenset({Target(STUDY, SERIES_B)}))
    inputs = [SeriesInput("one", SERIES_A), SeriesInput("two", SERIES_B)]
    received: list[bytes] = []
    with pytest.raises(NotFound):
        tokens = plan_body(Level.STUDY, Target(STUDY), inputs)
        async with open_body(tokens, source, pacs_concurrency=1) as writer:
            async for chunk in writer.chunks():
                received.append(bytes(chunk))
    assert b"".join(received).startswith(b'{"one":{"data":[')
    assert source.exited == [Target(STUDY, SERIES_A)]


@pytest.mark.anyio
async def test_pacs_error_mid_stream_propagates_and_closes_the_retrieval() -> None:
    target = Target(STUDY, SERIES_A)
    gate = asyncio.Event()  # holds the retrieval after its first instance
    source = FakeSource(fail_after={target: 2}, gates={target: gate})
    received: list[bytes] = []
    with pytest.raises(PacsError, match="connection reset"):
        async with open_body(plan_body(Level.SERIES, target), source) as writer:
            gate.set()
            async for chunk in writer.chunks():
                received.append(bytes(chunk))
    sent = b"".join(received)
    assert sent == b"[" + encode_instance(FILES[A1]) + b"," + encode_instance(FILES[A2])
    assert writer.bytes_in == len(FILES[A1]) + len(FILES[A2])
    assert source.exited == [target]


@pytest.mark.anyio
async def test_several_instances_for_a_single_instance_retrieval_is_a_pacs_error() -> None:
    source = FakeSource()
    # A misbehaving PACS: asked for one instance, it answers with the whole series.
    tokens: list[Token] = [Retrieval(Target(STUDY, SERIES_A), as_array=False)]
    with pytest.raises(PacsError, match="several instances"):
        await write(tokens, source)


@pytest.mark.anyio
async def test_no_instance_for_a_single_instance_retrieval_is_not_found() -> None:
    source = FakeSource(extra_series={"1.2.3.9": []})
    tokens: list[Token] = [Retrieval(Target(STUDY, "1.2.3.9"), as_array=False)]
    with pytest.raises(NotFound, match="not found"):
        await write(tokens, source)


# --- large inputs, produced on the fly ----------------------------------------------


def as_text(part10: bytes) -> str:
    """An instance string as a Model API reads it from the body; the encoder's
    round trip through the reference decoder is tested in test_wire_body.py."""
    text = orjson.loads(encode_instance(part10))
    assert isinstance(text, str)
    return text


def generated(uid: str) -> bytes:
    """Deterministic pseudo-random content for any UID, sizes across slice bounds."""
    seed = int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16)
    rng = random.Random(seed)
    size = rng.choice([0, 1, 2, 3, 1_000, 1_048_575, 1_048_576, 1_048_577, 2_500_001])
    return rng.randbytes(size)


@pytest.mark.anyio
async def test_large_generated_study_reaches_the_body_byte_exact() -> None:
    series = {f"1.2.3.{s}": [f"1.2.3.{s}.{i}" for i in range(8)] for s in (10, 11, 12)}
    source = FakeSource(extra_series=series, content=generated)
    inputs = [SeriesInput(f"s{n}", uid) for n, uid in enumerate(series)]
    # A small window: the body is many times larger than what may be held at once.
    memory = RequestMemory(MemoryBudget(64 * MiB), window=12 * MiB)
    async with open_body(plan_body(Level.STUDY, Target(STUDY), inputs), source, memory=memory) as w:
        body = orjson.loads(await collect(w))
    assert list(body) == ["s0", "s1", "s2"]
    for n, (_, uids) in enumerate(series.items()):
        assert body[f"s{n}"]["data"] == [as_text(generated(uid)) for uid in uids]
    assert w.instances_sent == 24
    assert w.bytes_in == sum(len(generated(uid)) for uids in series.values() for uid in uids)
    assert (
        0
        < memory.peak
        <= memory.window + max(len(generated(u)) * 5 for uids in series.values() for u in uids)
    )
    assert memory.in_flight == 0


class CountingBuffers(SliceBuffers):
    """Counts the buffers handed out and how many of them were recycled."""

    def __init__(self, keep: int) -> None:
        super().__init__(keep)
        self.taken = 0
        self.reused = 0

    def take(self, length: int) -> bytearray:
        idle_before = self.idle
        buffer = super().take(length)
        self.taken += 1
        self.reused += self.idle < idle_before
        return buffer


@pytest.mark.anyio
async def test_slice_buffers_are_recycled_without_mixing_instances() -> None:
    # Same-size instances, as in a CT series: after the first few slices every
    # buffer is one given back, and each instance still arrives byte-exact.
    uids = [f"1.2.3.20.{i}" for i in range(40)]
    content = {uid: random.Random(uid).randbytes(300_000 + i) for i, uid in enumerate(uids)}
    source = FakeSource(extra_series={"1.2.3.20": uids}, content=content.__getitem__)
    buffers = CountingBuffers(keep=8)
    tokens = plan_body(Level.SERIES, Target(STUDY, "1.2.3.20"), [])
    async with open_body(tokens, source, buffers=buffers) as pipeline:
        body = orjson.loads(await collect(pipeline))
    assert body == [as_text(content[uid]) for uid in uids]
    assert buffers.taken == 40
    assert buffers.reused >= 40 - 10  # at most the queue depth plus two are new
    assert buffers.idle <= 8


@pytest.mark.anyio
async def test_leaving_mid_series_gives_back_the_memory_of_the_request() -> None:
    uids = [f"1.2.3.21.{i}" for i in range(30)]
    source = FakeSource(
        extra_series={"1.2.3.21": uids}, content=lambda uid: bytes(range(256)) * 4096
    )
    budget = MemoryBudget(64 * MiB)
    admission = Admission(budget, max_concurrent=1, window=8 * MiB)
    tokens = plan_body(Level.SERIES, Target(STUDY, "1.2.3.21"), [])
    async with admission.admit() as memory:
        async with BodyPipeline(
            tokens,
            source,
            body_format=body_format(InputFormat.JSON, slices_in_flight=8),
            memory=memory,
            executor=_POOL,
            buffers=SliceBuffers(keep=8),
            pacs_concurrency=2,
            queue_depth=6,
        ) as pipeline:
            chunks = pipeline.chunks()
            for _ in range(5):
                await anext(chunks)
            assert memory.in_flight > 0
        # Left after five chunks: the retrievals are closed and no instance
        # holds memory past the window.
        assert source.open_now == 0
    assert budget.used == 0


# --- memory window and read-ahead ---------------------------------------------------


@pytest.mark.anyio
async def test_read_ahead_of_a_later_series_stops_at_half_the_window() -> None:
    big = {f"1.2.3.2.{i}": bytes([i]) * MiB for i in range(20)}
    source = FakeSource(
        extra_series={SERIES_B: list(big)}, content=lambda uid: big.get(uid, FILES.get(uid, b""))
    )
    gate = asyncio.Event()
    source.gates[Target(STUDY, SERIES_A)] = gate  # the head series stalls after 1 instance
    memory = RequestMemory(MemoryBudget(64 * MiB), window=10 * MiB)
    inputs = [SeriesInput("one", SERIES_A), SeriesInput("two", SERIES_B)]
    async with open_body(plan_body(Level.STUDY, Target(STUDY), inputs), source, memory=memory) as w:
        chunks = w.chunks()
        for _ in range(200):
            await asyncio.sleep(0)
        # Series B is read ahead, but only while it holds at most half the window.
        ahead = memory.in_flight
        assert 0 < ahead <= 5 * MiB + 10_000
        assert source.delivered < 1 + 20
        gate.set()
        body = orjson.loads(b"".join([bytes(c) async for c in chunks]))
    assert body["two"]["data"] == [as_text(data) for data in big.values()]
    assert memory.in_flight == 0


@pytest.mark.anyio
async def test_an_instance_larger_than_the_window_still_goes_through() -> None:
    huge = bytes(range(256)) * (16 * 1024)  # 4 MiB, accounted as 20 MiB
    source = FakeSource(content=lambda uid: huge)
    budget = MemoryBudget(64 * MiB)
    memory = RequestMemory(budget, window=1 * MiB)
    async with open_body(
        plan_body(Level.SERIES, Target(STUDY, SERIES_A)), source, memory=memory
    ) as w:
        body = orjson.loads(await collect(w))
    assert body == [as_text(huge)] * 3
    # Charged past the window while in flight, given back once sent.
    assert memory.peak > memory.window
    assert budget.used == 0


# --- dicom-multipart ------------------------------------------------------------------


def parse_parts(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    boundary = boundary_from_content_type(content_type)
    assert boundary is not None
    decoder = MultipartDecoder(boundary)
    parts = decoder.feed(body)
    decoder.close()
    return list(zip(decoder.part_headers, parts, strict=True))


@pytest.mark.anyio
async def test_multipart_series_is_one_part_per_instance_without_data_keys() -> None:
    source = FakeSource()
    tokens = plan_body(Level.SERIES, Target(STUDY, SERIES_A))
    async with open_body(tokens, source, input_format=InputFormat.DICOM_MULTIPART) as w:
        body = await collect(w)
    parts = parse_parts(body, w.content_type)
    assert [data for _, data in parts] == [FILES[A1], FILES[A2], FILES[A3]]
    for headers, data in parts:
        assert headers == {"content-type": "application/dicom", "content-length": str(len(data))}
    assert body.endswith(b"--\r\n")


@pytest.mark.anyio
async def test_multipart_parts_carry_their_data_keys() -> None:
    source = FakeSource()
    inputs = [
        SeriesInput("ct", SERIES_A, (InstanceInput("first", A1), InstanceInput("last", A3))),
        SeriesInput("other", SERIES_B),
    ]
    tokens = plan_body(Level.STUDY, Target(STUDY), inputs)
    async with open_body(tokens, source, input_format=InputFormat.DICOM_MULTIPART) as w:
        parts = parse_parts(await collect(w), w.content_type)
    keys = [(h.get("series-data-key"), h.get("instance-data-key"), data) for h, data in parts]
    assert keys == [
        ("ct", "first", FILES[A1]),
        ("ct", "last", FILES[A3]),
        ("other", None, FILES[B1]),
    ]


@pytest.mark.anyio
async def test_multipart_instance_level_and_empty_series() -> None:
    source = FakeSource(extra_series={"1.2.3.9": []})
    tokens = plan_body(Level.INSTANCE, Target(STUDY, SERIES_A, A2))
    async with open_body(tokens, source, input_format=InputFormat.DICOM_MULTIPART) as w:
        parts = parse_parts(await collect(w), w.content_type)
    assert [data for _, data in parts] == [FILES[A2]]
    tokens = plan_body(Level.SERIES, Target(STUDY, "1.2.3.9"))
    async with open_body(tokens, source, input_format=InputFormat.DICOM_MULTIPART) as w:
        body = await collect(w)
    assert body.startswith(b"--model-proxy-") and body.endswith(b"--\r\n")
