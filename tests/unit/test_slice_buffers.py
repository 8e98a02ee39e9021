"""The pool of encoder output buffers: size classes and eviction."""

from __future__ import annotations

import pytest

from model_proxy.models.encoder import SLICE_BYTES, encode_range, encode_range_into
from model_proxy.models.slice_buffers import GRANULE, SliceBuffers, buffer_bytes


def test_a_buffer_is_reused_only_for_the_same_size_class() -> None:
    buffers = SliceBuffers(keep=4)
    small = buffers.take(GRANULE)
    buffers.give(small)
    large = buffers.take(GRANULE + 1)
    assert large is not small
    assert len(large) == 2 * GRANULE
    assert buffers.take(GRANULE - 100) is small


def test_the_least_recently_given_buffer_is_freed_beyond_keep() -> None:
    buffers = SliceBuffers(keep=2)
    first, second, third = (buffers.take(1) for _ in range(3))
    for buffer in (first, second, third):
        buffers.give(buffer)
    assert buffers.idle == 2
    assert buffers.take(1) is third
    assert buffers.take(1) is second
    assert buffers.take(1) is not first


def test_encoding_into_a_reused_buffer_overwrites_only_its_own_range() -> None:
    buffers = SliceBuffers(keep=1)
    buffer = buffers.take(4 * 1000 + 1)
    buffer[:] = b"\xff" * len(buffer)  # what an earlier, longer slice left
    data = bytes(range(250)) * 4
    length = encode_range_into(data, 0, len(data), buffer)
    assert buffer[:length] == encode_range(data, 0, len(data))


def test_too_small_a_buffer_is_refused() -> None:
    with pytest.raises(ValueError, match="needs 13"):
        encode_range_into(b"abc", 0, 3, bytearray(12))


def test_buffer_bytes_counts_every_slice_of_an_instance() -> None:
    assert buffer_bytes(0) == GRANULE
    assert buffer_bytes(SLICE_BYTES) == 4 * SLICE_BYTES + GRANULE
    assert buffer_bytes(2 * SLICE_BYTES + 5) == 2 * 4 * SLICE_BYTES + GRANULE
