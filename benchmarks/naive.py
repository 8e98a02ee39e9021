"""The naive pipeline of issue 4, run in its own process so that its peak memory is
its own: dicomweb-client ``retrieve_series``, ``json.dumps(list(bytes))`` per
instance, one ``requests.post`` of the whole body.

    python -m benchmarks.naive DICOMWEB_URL STUDY SERIES MODEL_URL

Prints one JSON line: seconds (total and per stage), instances, peak RSS bytes.
"""

from __future__ import annotations

import io
import json
import sys
import time

import requests
from dicomweb_client.api import DICOMwebClient


def peak_rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main(url: str, study: str, series: str, model_url: str) -> None:
    started = time.perf_counter()
    datasets = DICOMwebClient(url=url).retrieve_series(study, series)
    retrieved = time.perf_counter()
    instances = []
    for dataset in datasets:
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        instances.append(json.dumps(list(buffer.getvalue())))
    encoded = time.perf_counter()
    response = requests.post(
        model_url, data=json.dumps(instances), headers={"Content-Type": "application/json"}
    )
    response.raise_for_status()
    done = time.perf_counter()
    print(
        json.dumps(
            {
                "seconds": done - started,
                "retrieve": retrieved - started,
                "encode": encoded - retrieved,
                "post": done - encoded,
                "instances": len(instances),
                "peak_rss": peak_rss(),
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:5])
