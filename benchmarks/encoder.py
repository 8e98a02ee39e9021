"""The wire-format encoder, measured as the proxy runs it, against the alternatives.

    .venv/bin/python -m benchmarks.encoder [--slices 300] [--passes 5]

benchmarks/run.py prints these figures for the series it sends through the proxy;
run alone, this synthesizes the same 300-slice 512x512 CT series and prints only
them (a few seconds, no Orthanc needed).

"As the proxy runs it" means what ``models/pipeline.py`` does per slice: take a
recycled buffer (``models/slice_buffers.py``), ``encode_range_into`` it, give it
back. Throughput is in MB of DICOM input per second of the thread's CPU time, the
median over ``passes`` passes of the whole series: this VM's neighbours make a
single pass vary by 2x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson

from model_proxy.models.encoder import (
    encode_instance,
    encode_range,
    encode_range_into,
    slice_ranges,
    slice_text_size,
)
from model_proxy.models.slice_buffers import SliceBuffers
from model_proxy.sample_data import make_study

MB = 1_000_000
GOAL = ">= 700 MB/s"

AddFigure = Callable[[str, str, str], None]


def encode_as_the_proxy(instances: Sequence[bytes], buffers: SliceBuffers) -> None:
    for data in instances:
        for start, stop in slice_ranges(len(data)):
            buffer = buffers.take(slice_text_size(len(data), start, stop))
            encode_range_into(data, start, stop, buffer)
            buffers.give(buffer)


def encode_into_fresh_buffers(instances: Sequence[bytes]) -> None:
    for data in instances:
        for start, stop in slice_ranges(len(data)):
            encode_range(data, start, stop)


def compact(data: bytes) -> bytes:
    """A compact encoder: orjson over a numpy array (no spaces)."""
    array = np.frombuffer(data, dtype=np.uint8)
    return b'"' + orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY) + b'"'


def cpu_rate(total: int, action: Callable[[], object], passes: int) -> tuple[float, float, float]:
    """Median, lowest and highest MB/s of ``total`` bytes per second of this thread's CPU."""
    rates = []
    for _ in range(passes):
        started = time.thread_time()
        action()
        rates.append(total / (time.thread_time() - started) / MB)
    return statistics.median(rates), min(rates), max(rates)


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
    total = sum(len(data) for data in instances)
    buffers = SliceBuffers(keep=8)
    encode_as_the_proxy(instances[:20], buffers)  # warm: the buffers' pages are mapped
    median, low, high = cpu_rate(total, lambda: encode_as_the_proxy(instances, buffers), passes)
    add(
        "encoder, one thread, as the proxy runs it (recycled buffers)",
        f"{median:,.0f} MB/s of DICOM per core (CPU time; median of {passes} passes,"
        f" {low:,.0f}-{high:,.0f})",
        GOAL,
    )
    add(
        "encoder, two threads, as the proxy runs it",
        f"{two_thread_rate(instances, passes):,.0f} MB/s wall",
        "",
    )
    median, low, high = cpu_rate(total, lambda: encode_into_fresh_buffers(instances), passes)
    add(
        "encoder, one thread, a fresh buffer per slice (before recycling)",
        f"{median:,.0f} MB/s (CPU; {low:,.0f}-{high:,.0f})",
        "",
    )
    median, _, _ = cpu_rate(total, lambda: [compact(data) for data in instances], 1)
    add("compact orjson encoder, one thread", f"{median:,.0f} MB/s (CPU)", "")
    sample = instances[:3]
    median, _, _ = cpu_rate(
        sum(map(len, sample)), lambda: [json.dumps(list(data)) for data in sample], 1
    )
    add("json.dumps(list(b)), one thread", f"{median:,.0f} MB/s (CPU)", "")
    decode_figures(instances[:10], add)


def decode_figures(sample: Sequence[bytes], add: AddFigure) -> None:
    """What the model pays: the reference decoder over each encoder's text."""
    sample_bytes = sum(map(len, sample))
    for name, encode in (("fixed width (ours)", encode_instance), ("compact", compact)):
        texts = [encode(data) for data in sample]
        size = sum(map(len, texts)) / sample_bytes
        cpu = time.thread_time()
        for text in texts:
            bytes(json.loads(json.loads(text)))
        cpu = time.thread_time() - cpu
        add(
            f"model's reference decode, {name}",
            f"{sample_bytes / cpu / MB:,.1f} MB/s of DICOM; text {size:.2f} x DICOM",
            "",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
