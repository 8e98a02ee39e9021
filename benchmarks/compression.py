"""Compression of segmentation results: ratio and speed of each content coding.

    .venv/bin/python benchmarks/compression.py [--slices 40]

Builds a result like a segmentation model's (512x512 body and lung 0/1 masks per
slice, docs/compatibility.md §6), then streams it through the proxy's own
compressors in 1 MiB chunks, as a response does.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncGenerator

import numpy as np
import orjson

from model_proxy.web.compression import ENCODINGS, compress_stream


def segmentation_result(slices: int) -> bytes:
    yy, xx = np.mgrid[:512, :512]
    instances = {}
    for index in range(slices):
        body = ((yy - 256) ** 2 / (200 + index) ** 2 + (xx - 256) ** 2 / 180**2) < 1
        lungs = ((yy - 240) ** 2 / 80**2 + (np.abs(xx - 256) - 90) ** 2 / (50 + index % 7) ** 2) < 1
        instances[f"1.2.3.4.{index}"] = {
            "segments": [
                {"points": body.astype(np.uint8), "color": "tan", "className": "Body"},
                {"points": lungs.astype(np.uint8), "color": "lightskyblue", "className": "Lungs"},
            ]
        }
    return orjson.dumps({"1.2.3": {"1.2.3.4": instances}}, option=orjson.OPT_SERIALIZE_NUMPY)


async def chunks(data: bytes) -> AsyncGenerator[bytes, None]:
    for start in range(0, len(data), 1 << 20):
        yield data[start : start + (1 << 20)]


async def measure(document: bytes) -> None:
    print(f"result: {len(document) / 1e6:.1f} MB of JSON")
    for encoding in ENCODINGS:
        started = time.perf_counter()
        size = 0
        async for piece in compress_stream(chunks(document), encoding):
            size += len(piece)
        seconds = time.perf_counter() - started
        print(
            f"  {encoding:5s} {size / 1e3:9.1f} kB  ratio {len(document) / size:6.0f}x"
            f"  {len(document) / seconds / 1e6:6.0f} MB/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=40)
    args = parser.parse_args()
    asyncio.run(measure(segmentation_result(args.slices)))


if __name__ == "__main__":
    main()
