"""A Model API that answers a synthesized segmentation result, streamed instance by
instance: the model end of benchmarks/dicom_outputs.py.

    python -m benchmarks.seg_result_model --port 8013 --slices 2000 --size 512 --seed 5

It reads the request body to its end and discards it, then answers for the series
``make_study(series_slices=(slices,), rows=size, columns=size, seed=seed)`` (the same
UIDs the benchmark's folder holds) two masks per instance, "Body" (a disc) and "Lungs"
(two ellipses), in the compact JSON the example model writes. Generated per instance,
so the model holds one instance's masks at a time whatever the size of the result.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from model_proxy.sample_data import make_study


def masks(size: int, index: int, count: int) -> tuple[np.ndarray[Any, Any], ...]:
    rows, columns = np.ogrid[:size, :size]
    centre = size / 2
    t = index / max(count - 1, 1)
    body = (rows - centre) ** 2 + (columns - centre) ** 2 < (size * (0.30 + 0.1 * t)) ** 2
    lungs = np.zeros((size, size), dtype=np.bool_)
    for side in (-1, 1):
        cx = centre + side * size * 0.13
        lungs |= ((rows - centre) / (size * 0.2)) ** 2 + ((columns - cx) / (size * 0.08)) ** 2 < t
    return body.view(np.uint8), lungs.view(np.uint8)


def result_chunks(slices: int, size: int, seed: int) -> Iterator[bytes]:
    study = make_study(series_slices=(slices,), rows=size, columns=size, seed=seed)
    series = study.series[0]
    yield b"{" + orjson.dumps(study.study_uid) + b":{" + orjson.dumps(series.series_uid) + b":{"
    for index, sop_uid in enumerate(series.sop_uids):
        body, lungs = masks(size, index, slices)
        node = {
            "segments": [
                {"points": body, "color": "#e6a070", "className": "Body"},
                {"points": lungs, "color": "#40a0ff", "className": "Lungs"},
            ]
        }
        separator = b"," if index else b""
        yield (
            separator
            + orjson.dumps(sop_uid)
            + b":"
            + orjson.dumps(node, option=orjson.OPT_SERIALIZE_NUMPY)
        )
    yield b"}}}"


def create_app(slices: int, size: int, seed: int) -> Starlette:
    async def segmentation(request: Request) -> Response:
        async for _ in request.stream():
            pass
        return StreamingResponse(result_chunks(slices, size, seed), media_type="application/json")

    async def health(request: Request) -> Response:
        return Response("ok")

    return Starlette(
        routes=[
            Route("/segmentation", segmentation, methods=["POST"]),
            Route("/", health),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slices", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()
    app = create_app(args.slices, args.size, args.seed)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
