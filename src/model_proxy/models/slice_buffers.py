"""Recycled output buffers for encoded slices.

Each slice of an instance becomes up to ``SLICE_TEXT_BYTES`` (4 MiB) of text.
Written into a fresh allocation, that text costs the kernel a page fault per
4 KiB page on first touch, and glibc hands large blocks back to the kernel
when they are freed, so every slice pays again. On the two-core VM the
benchmark runs on, those faults took longer than the encoding itself, and two
encoder threads faulting at once slowed each other down (the figures are in
docs/performance.md). A buffer whose pages are already mapped avoids both.

A buffer is taken when a slice is handed to an encoder thread and given back
once the POST has written that slice to the socket. Sizes are rounded up to
a multiple of ``GRANULE`` (64 KiB), so the slices of a series, whose
instances differ by a few bytes, share buffers while wasting at most one
granule each. The memory a request's buffers take is counted in its grant
(``buffer_bytes``); the idle ones are a fixed overhead of at most ``keep``
buffers, the least recently used being freed first.

Every call comes from the event loop's thread.
"""

from __future__ import annotations

from collections import deque

from model_proxy.models.encoder import max_slice_text_size, slice_ranges

__all__ = ["GRANULE", "SliceBuffers", "buffer_bytes"]

GRANULE = 64 * 1024


def _rounded(length: int) -> int:
    return -(-length // GRANULE) * GRANULE


def buffer_bytes(size: int) -> int:
    """The buffer memory all slices of an instance of ``size`` bytes take.

    >>> buffer_bytes(3) == GRANULE
    True
    >>> from model_proxy.models.encoder import SLICE_BYTES
    >>> buffer_bytes(SLICE_BYTES + 1) == 4 * SLICE_BYTES + GRANULE
    True
    """
    return sum(
        _rounded(max_slice_text_size(size, start, stop)) for start, stop in slice_ranges(size)
    )


class SliceBuffers:
    """Keeps up to ``keep`` idle slice buffers for reuse.

    >>> buffers = SliceBuffers(keep=1)
    >>> first = buffers.take(1000)
    >>> len(first) == GRANULE
    True
    >>> buffers.give(first)
    >>> buffers.take(2000) is first
    True
    """

    def __init__(self, keep: int) -> None:
        # Most recently given at the right.
        self._idle: deque[bytearray] = deque()
        self._keep = keep

    def take(self, length: int) -> bytearray:
        """A buffer of ``length`` bytes rounded up to a granule: an idle one if any."""
        size = _rounded(length)
        for index in range(len(self._idle) - 1, -1, -1):
            if len(self._idle[index]) == size:
                buffer = self._idle[index]
                del self._idle[index]
                return buffer
        return bytearray(size)

    def give(self, buffer: bytearray) -> None:
        """Take back a buffer nothing reads any more."""
        self._idle.append(buffer)
        if len(self._idle) > self._keep:
            self._idle.popleft()

    @property
    def idle(self) -> int:
        return len(self._idle)
