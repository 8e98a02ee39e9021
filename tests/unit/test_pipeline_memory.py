"""The streamed body's memory: large inputs produced on the fly, recycled slice
buffers, the memory window and read-ahead (test_pipeline.py: order, framing and
failures)."""

from __future__ import annotations

import asyncio
import hashlib
import random

import orjson
import pytest
from body_pipeline import POOL, MiB, as_text, collect, open_body
from fake_pacs import FILES, SERIES_A, SERIES_B, STUDY, FakeSource

from model_proxy.config import InputFormat, Level
from model_proxy.models.body import SeriesInput, plan_body
from model_proxy.models.formats import body_format
from model_proxy.models.pipeline import BodyPipeline
from model_proxy.models.slice_buffers import SliceBuffers
from model_proxy.pacs.source import Target
from model_proxy.runtime.admission import Admission, MemoryBudget, RequestMemory


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- large inputs, produced on the fly ----------------------------------------------


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
            executor=POOL,
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
