"""The wire-format encoder as the proxy runs it, A/B against the padded one it replaced.

    .venv/bin/python -m benchmarks.encoder [--slices 300] [--passes 5]

benchmarks/run.py prints these figures for the series it sends through the proxy;
run alone, this synthesizes the same 300-slice 512x512 CT series and prints only
them (a few seconds, no Orthanc needed).

"As the proxy runs it" means what ``models/pipeline.py`` does per slice: take a
recycled buffer (``models/slice_buffers.py``), ``encode_range_into`` it, give it
back. Throughput is in MB of DICOM input per second of the thread's CPU time. The
candidates run in alternation, one pass of the whole series each, and each figure
is the median of its passes: this VM's neighbours make a single pass vary by 2x,
and alternating spreads that over every candidate alike.

The candidates:

- **padded** (the baseline): before this version the proxy wrote every value at a
  fixed width of four characters (``"[  0, 10,255]"``), one ``numpy.take`` of an
  8-byte token per pair of input bytes. Kept here, and only here, to measure against.
- **compact, compiled** (as shipped): ``models/_compact.c``.
- **compact, orjson**: the shipped fallback where no C compiler was found.
- **compact, numpy prefix sums**: pair tokens and their lengths by ``numpy.take``,
  offsets by ``cumsum``, written by a scatter through an unaligned uint64 view.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import orjson

from model_proxy.models import encoder
from model_proxy.models.encoder import (
    SLICE_BYTES,
    encode_instance,
    encode_range_into,
    max_slice_text_size,
    slice_ranges,
)
from model_proxy.models.slice_buffers import SliceBuffers
from model_proxy.sample_data import make_study

MB = 1_000_000
GOAL = ">= the padded encoder, per core"

AddFigure = Callable[[str, str, str], None]
# Writes the text of part10[start:stop] into out; returns its length.
RangeWriter = Callable[[bytes, int, int, bytearray], int]

_scratch = threading.local()


def _scratch_array(name: str, length: int) -> npt.NDArray[np.intp]:
    """This thread's intp array ``name``, at least ``length`` long, kept between slices."""
    array: npt.NDArray[np.intp] | None = getattr(_scratch, name, None)
    if array is None or len(array) < length:
        array = np.empty(max(length, SLICE_BYTES // 2 + 1), dtype=np.intp)
        setattr(_scratch, name, array)
    return array[:length]


def _token_tables(width: int | None) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.intp]]:
    """The 8-byte text of every pair of bytes and its length; padded to ``width`` if given."""
    texts = [(f"{value:>{width}}," if width else f"{value},").encode() for value in range(256)]
    tokens = np.empty(65536, dtype="<u8")
    lengths = np.empty(65536, dtype=np.intp)
    for pair in range(65536):
        text = texts[pair & 0xFF] + texts[pair >> 8]
        tokens[pair] = int.from_bytes(text.ljust(8, b"\0"), "little")
        lengths[pair] = len(text)
    return tokens, lengths


PADDED_TOKENS, _ = _token_tables(3)
COMPACT_TOKENS, COMPACT_LENGTHS = _token_tables(None)


def padded_range_into(part10: bytes, start: int, stop: int, out: bytearray) -> int:
    """The replaced encoder: ``"  0, 10,255,"``, the last comma closing the array."""
    source = np.frombuffer(part10, dtype=np.uint8)[start:stop]
    pairs = len(source) // 2
    target = np.frombuffer(out, dtype=np.uint8)
    index = _scratch_array("index", pairs)
    index[:] = source[: 2 * pairs].view("<u2")
    np.take(PADDED_TOKENS, index, out=target[: 8 * pairs].view("<u8"), mode="clip")
    if len(source) % 2:
        odd = int(PADDED_TOKENS[int(source[-1])]).to_bytes(8, "little")[:4]
        out[8 * pairs : 8 * pairs + 4] = odd
    length = 4 * len(source)
    if stop >= len(part10):
        out[length - 1 : length + 1] = b']"'
        length += 1
    return length


def numpy_prefix_sum_range_into(part10: bytes, start: int, stop: int, out: bytearray) -> int:
    """Compact text from numpy alone: tokens, lengths, offsets, one unaligned scatter."""
    source = np.frombuffer(part10, dtype=np.uint8)[start:stop]
    pairs = len(source) // 2
    index = _scratch_array("index", pairs)
    index[:] = source[: 2 * pairs].view("<u2")
    tokens = np.take(COMPACT_TOKENS, index, mode="clip")
    offsets = _scratch_array("offsets", pairs + 1)
    offsets[0] = 0
    np.cumsum(np.take(COMPACT_LENGTHS, index, mode="clip"), out=offsets[1:])
    # Every 8-byte window of out, so that a token lands at any byte offset; tokens
    # are written in order, each overwriting the unused tail of the one before.
    windows = np.ndarray((len(out) - 7,), dtype="<u8", buffer=out, strides=(1,))
    windows[offsets[:pairs]] = tokens
    length = int(offsets[pairs])
    if len(source) % 2:
        text = b"%d," % source[-1]
        out[length : length + len(text)] = text
        length += len(text)
    if stop >= len(part10):
        out[length - 1 : length + 1] = b']"'
        length += 1
    return length


def orjson_range_into(part10: bytes, start: int, stop: int, out: bytearray) -> int:
    length = encoder._write_values_with_orjson(memoryview(part10)[start:stop], out)
    if stop >= len(part10):
        out[length - 1 : length + 1] = b']"'
        length += 1
    return length


CANDIDATES: dict[str, RangeWriter] = {
    "padded (before this version)": padded_range_into,
    f"compact, {encoder.IMPLEMENTATION} (as shipped)": encode_range_into,
    "compact, orjson (the fallback)": orjson_range_into,
    "compact, numpy prefix sums": numpy_prefix_sum_range_into,
}


def encode_as_the_proxy(
    instances: Sequence[bytes], buffers: SliceBuffers, write: RangeWriter = encode_range_into
) -> int:
    """Encode every slice into recycled buffers; the text's total size."""
    written = 0
    for data in instances:
        for start, stop in slice_ranges(len(data)):
            buffer = buffers.take(max_slice_text_size(len(data), start, stop))
            written += write(data, start, stop, buffer)
            buffers.give(buffer)
    return written + len(encoder.OPENING) * len(instances)


def alternating_rates(
    instances: Sequence[bytes], writers: dict[str, RangeWriter], passes: int
) -> dict[str, list[float]]:
    """MB/s of DICOM per second of CPU, one list per writer, passes interleaved."""
    total = sum(map(len, instances))
    buffers = SliceBuffers(keep=8)
    rates: dict[str, list[float]] = {name: [] for name in writers}
    for write in writers.values():
        encode_as_the_proxy(instances[:4], buffers, write)  # warm: tables and buffers
    for _ in range(passes):
        for name, write in writers.items():
            started = time.thread_time()
            encode_as_the_proxy(instances, buffers, write)
            rates[name].append(total / (time.thread_time() - started) / MB)
    return rates


def two_thread_rate(instances: Sequence[bytes], passes: int) -> float:
    """Median MB/s of wall time with two threads, each with its own buffers."""
    halves = [instances[0::2], instances[1::2]]
    pools = [SliceBuffers(keep=8), SliceBuffers(keep=8)]
    rates = []
    with ThreadPoolExecutor(2) as executor:
        for _ in range(passes):
            started = time.perf_counter()
            list(executor.map(encode_as_the_proxy, halves, pools))
            rates.append(sum(map(len, instances)) / (time.perf_counter() - started) / MB)
    return statistics.median(rates)


def encoder_figures(instances: Sequence[bytes], add: AddFigure, passes: int = 5) -> None:
    total = sum(map(len, instances))
    # The slow candidates get a third of the series: their rate is all we need of them.
    fast = {name: CANDIDATES[name] for name in list(CANDIDATES)[:2]}
    rates = alternating_rates(instances, fast, passes)
    slow_sample = instances[: max(1, len(instances) // 3)]
    slow = {name: CANDIDATES[name] for name in list(CANDIDATES)[2:]}
    rates |= alternating_rates(slow_sample, slow, max(1, passes // 2))
    baseline_name = next(iter(CANDIDATES))
    baseline = statistics.median(rates[baseline_name])
    buffers = SliceBuffers(keep=8)
    for name, figures in rates.items():
        median = statistics.median(figures)
        size = encode_as_the_proxy(slow_sample, buffers, CANDIDATES[name]) / sum(
            map(len, slow_sample)
        )
        add(
            f"encoder, one thread: {name}",
            f"{median:,.0f} MB/s of DICOM per core ({min(figures):,.0f}-{max(figures):,.0f},"
            f" {len(figures)} passes), {median / baseline:.2f}x padded; text {size:.2f} x DICOM",
            GOAL if name.endswith("(as shipped)") else "",
        )
    add(
        "encoder, two threads, as the proxy runs it",
        f"{two_thread_rate(instances, passes):,.0f} MB/s wall ({total / MB:,.0f} MB series)",
        "",
    )
    sample = instances[:3]
    started = time.thread_time()
    for data in sample:
        json.dumps(list(data))
    add(
        "json.dumps(list(b)), one thread",
        f"{sum(map(len, sample)) / (time.thread_time() - started) / MB:,.0f} MB/s (CPU)",
        "",
    )
    decode_figures(instances[:10], add)


def padded_instance(data: bytes) -> bytes:
    out = bytearray(max_slice_text_size(len(data), 0, len(data)) + 8)
    return encoder.OPENING + bytes(out[: padded_range_into(data, 0, len(data), out)])


def reference_decode(text: bytes) -> bytes:
    """What the reference Model APIs do with one instance of the body."""
    return bytes(json.loads(json.loads(text)))


def orjson_decode(text: bytes) -> bytes:
    return bytes(orjson.loads(orjson.loads(text)))


def decode_figures(sample: Sequence[bytes], add: AddFigure) -> None:
    """What the model pays: the reference decoder and orjson over each body's text."""
    sample_bytes = sum(map(len, sample))
    for name, encode in (("compact (as shipped)", encode_instance), ("padded", padded_instance)):
        texts = [encode(data) for data in sample]
        size = sum(map(len, texts)) / sample_bytes
        figures = []
        for decode in (reference_decode, orjson_decode):
            cpu = time.thread_time()
            for text in texts:
                assert decode(text) is not None
            figures.append(sample_bytes / (time.thread_time() - cpu) / MB)
        add(
            f"model's decode, {name} body",
            f"reference {figures[0]:,.1f} MB/s of DICOM, orjson {figures[1]:,.1f} MB/s;"
            f" text {size:.2f} x DICOM",
            "",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    study = make_study(series_slices=(args.slices,), rows=512, columns=512, seed=2026)
    instances = [data for _, _, data in study.iter_instances()]
    print(f"{args.slices} slices 512x512, {sum(map(len, instances)) / MB:,.0f} MB of DICOM")

    def add(what: str, value: str, goal: str) -> None:
        print(f"  {what}: {value}" + (f"  [{goal}]" if goal else ""), flush=True)

    encoder_figures(instances, add, args.passes)


if __name__ == "__main__":
    main()
