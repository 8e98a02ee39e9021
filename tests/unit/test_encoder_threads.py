"""The encoder threads of the body pipeline (``models/pipeline._encoded``): a slice
encoded in a thread equals the one-piece encoding, errors reach the awaiting task,
and cancelled slices neither leak nor hang."""

from __future__ import annotations

import asyncio
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from model_proxy.models.encoder import (
    OPENING,
    SLICE_BYTES,
    encode_instance,
    max_slice_text_size,
    slice_ranges,
)
from model_proxy.models.pipeline import _encoded

_POOL = ThreadPoolExecutor(2, thread_name_prefix="test-encoder-threads")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
@pytest.mark.parametrize("size", [0, 1, 7, SLICE_BYTES - 1, SLICE_BYTES, 2 * SLICE_BYTES + 3])
async def test_slices_encoded_in_threads_equal_the_encoding_in_one_piece(size: int) -> None:
    part10 = random.Random(size).randbytes(size)
    loop = asyncio.get_running_loop()
    futures = [
        _encoded(
            loop, _POOL, part10, start, stop, bytearray(max_slice_text_size(size, start, stop))
        )
        for start, stop in slice_ranges(size)
    ]
    texts = [bytes(view) for view in await asyncio.gather(*futures)]
    assert OPENING + b"".join(texts) == encode_instance(part10)


@pytest.mark.anyio
async def test_an_encoding_error_in_a_thread_is_raised_to_the_awaiting_task() -> None:
    loop = asyncio.get_running_loop()
    too_small = bytearray(3)
    with pytest.raises(ValueError, match="the output buffer holds 3 bytes"):
        await _encoded(loop, _POOL, b"abcdef", 0, 6, too_small)


@pytest.mark.anyio
async def test_a_slice_whose_future_was_cancelled_is_dropped_quietly() -> None:
    loop = asyncio.get_running_loop()
    gate = threading.Event()
    pool = ThreadPoolExecutor(1)
    try:
        pool.submit(gate.wait)  # the slice waits behind this
        future = _encoded(loop, pool, b"\x01\x02", 0, 2, bytearray(16))
        future.cancel()
        gate.set()
        await loop.run_in_executor(pool, lambda: None)  # the slice has been encoded
        await asyncio.sleep(0)  # and its outcome delivered to the loop
        assert future.cancelled()
    finally:
        pool.shutdown()


@pytest.mark.anyio
async def test_a_slice_cancelled_by_the_pool_shutting_down_cancels_its_future() -> None:
    loop = asyncio.get_running_loop()
    gate = threading.Event()
    pool = ThreadPoolExecutor(1)
    pool.submit(gate.wait)  # the slice waits behind this
    future = _encoded(loop, pool, b"\x01\x02", 0, 2, bytearray(16))
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(future, timeout=30)
