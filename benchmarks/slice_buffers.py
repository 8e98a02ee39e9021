"""Recycled slice buffers (models/slice_buffers.py): the proxy with and without them.

    .venv/bin/python -m benchmarks.slice_buffers [--runs 8]

Starts a real Orthanc, the sink model and two ``model-proxy serve`` processes on
loopback. One runs as shipped; the other is started with a ``sitecustomize`` that
makes ``SliceBuffers.give`` drop every buffer, so each slice is encoded into a
fresh allocation, as before the pool existed. Both send the same 300-slice series
to the sink, in alternation, and the report gives the medians per request: wall
time, the proxy's CPU time and its minor page faults (``/proc/<pid>/stat``).
A standalone loop (benchmarks/encoder.py) cannot show the difference: there glibc
happens to reuse the freed memory; in the proxy, where other allocations
interleave, it does not.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from harness import new_uid, server_entry, start_orthanc, start_proxy

from benchmarks.run import LEVELS, cpu_seconds, get_ok, log, machine, start_sink, upload
from model_proxy.sample_data import make_study

# Loaded by the second proxy's interpreter at start-up (PYTHONPATH).
NO_RECYCLING = """\
from model_proxy.models.slice_buffers import SliceBuffers
SliceBuffers.give = lambda self, buffer: None
"""


def minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[7])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="model-proxy-bench-buffers-"))
    processes: list[Any] = []
    try:
        orthanc = start_orthanc(workdir / "orthanc")
        sink, sink_url = start_sink(workdir)
        processes += [orthanc, sink]
        log("storing the 300-slice series in Orthanc")
        study = make_study(series_slices=(300,), rows=512, columns=512, seed=2026)
        upload(orthanc, (data for _, _, data in study.iter_instances()))
        model_id = new_uid()
        servers = {new_uid(): server_entry(orthanc)}
        models = {model_id: {"uri": f"{sink_url}/infer", "task": "prediction", "supports": LEVELS}}
        (workdir / "no-recycling").mkdir()
        (workdir / "no-recycling" / "sitecustomize.py").write_text(NO_RECYCLING)
        no_cache = ["--cache-size", "0"]
        proxies = {
            "recycled buffers (as shipped)": start_proxy(
                workdir / "recycled", servers, models, cert=None, extra_args=no_cache
            ),
            "a fresh buffer per slice": start_proxy(
                workdir / "fresh",
                servers,
                models,
                cert=None,
                env={"PYTHONPATH": str(workdir / "no-recycling")},
                extra_args=no_cache,
            ),
        }
        processes += proxies.values()
        series = study.main_series.series_uid
        path = f"/predictions/{model_id}/studies/{study.study_uid}/series/{series}"
        figures: dict[str, dict[str, list[float]]] = {
            name: {"wall": [], "cpu": [], "faults": []} for name in proxies
        }
        timeout = httpx.Timeout(600.0)
        clients = {name: proxy.client(timeout=timeout) for name, proxy in proxies.items()}
        for client in clients.values():
            get_ok(client, path)  # warm-up
        log(f"{args.runs} requests to each, alternating")
        for _ in range(args.runs):
            for name, proxy in proxies.items():
                pid = proxy.process.pid
                assert pid is not None
                cpu, faults, wall = cpu_seconds(pid), minor_faults(pid), time.perf_counter()
                get_ok(clients[name], path)
                figures[name]["wall"].append(time.perf_counter() - wall)
                figures[name]["cpu"].append(cpu_seconds(pid) - cpu)
                figures[name]["faults"].append(minor_faults(pid) - faults)
        for client in clients.values():
            client.close()
        print(f"\nmachine: {machine()}; medians of {args.runs} requests per proxy\n")
        print("| proxy | wall time | proxy CPU time | minor page faults |")
        print("| --- | ---: | ---: | ---: |")
        for name, values in figures.items():
            medians = [statistics.median(values[key]) for key in ("wall", "cpu", "faults")]
            print(f"| {name} | {medians[0]:.2f} s | {medians[1]:.2f} s | {medians[2]:,.0f} |")
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
