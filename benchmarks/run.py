"""The streaming benchmark (issue 4): the proxy against the naive pipeline and the floor.

    ./scripts/bench.sh                      # sets up .venv with the bench extra, runs this
    .venv/bin/python -m benchmarks.run      # the same, in a ready .venv

It starts everything it measures on loopback, as the integration tests do: a real
Orthanc with DICOMweb, a sink Model API that reads and discards the body
(benchmarks/sink_model.py) and ``model-proxy serve``; it stores a synthetic 300-slice
512x512 CT series (model_proxy.sample_data) and a study of about 1 GiB, then prints
one report (markdown) with every figure and its goal. Options: ``--runs N`` (timed
repetitions, default 5), ``--large-slices N`` (slices of the large study, default
2000), ``--skip-naive``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
from harness import (  # the integration tests' harness (see benchmarks/__init__.py)
    LOOPBACK,
    START_TIMEOUT,
    ManagedProcess,
    OrthancServer,
    ProxyProcess,
    http_client,
    new_uid,
    server_entry,
    start_on_free_port,
    start_orthanc,
    start_proxy,
)
from pydicom.uid import generate_uid

from benchmarks import ROOT
from benchmarks.encoder import encoder_figures
from model_proxy.models.encoder import encode_instance
from model_proxy.sample_data import make_study

MB = 1_000_000
MiB = 1 << 20
ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
LEVELS = ["/studies", "/studies/series", "/studies/series/instances"]


@dataclass
class Report:
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, what: str, value: str, goal: str = "") -> None:
        self.rows.append((what, value, goal))
        print(f"  {what}: {value}" + (f"  [{goal}]" if goal else ""), flush=True)

    def markdown(self) -> str:
        lines = ["| measurement | result | goal |", "| --- | --- | --- |"]
        lines += [f"| {what} | {value} | {goal} |" for what, value, goal in self.rows]
        return "\n".join(lines + [""] + [f"- {note}" for note in self.notes])


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- setup ----------------------------------------------------------------------------


def start_sink(workdir: Path) -> tuple[ManagedProcess, str]:
    def make(port: int) -> ManagedProcess:
        argv = [sys.executable, "-m", "benchmarks.sink_model", "--port", str(port)]
        return ManagedProcess("sink model", argv, log_path=workdir / "sink.log", cwd=ROOT)

    def probe(port: int) -> bool:
        with http_client(timeout=2.0) as client:
            status: int = client.get(f"http://{LOOPBACK}:{port}/").status_code
            return status == 200

    process, port = start_on_free_port(make, probe, START_TIMEOUT)
    return process, f"http://{LOOPBACK}:{port}"


def upload(orthanc: OrthancServer, files: Iterator[bytes], threads: int = 4) -> int:
    """Store files in Orthanc with a few connections at once; returns the bytes stored."""
    total = 0
    lock = threading.Lock()

    def worker(chunk: list[bytes]) -> None:
        nonlocal total
        with orthanc.client() as client:
            for data in chunk:
                response = client.post(
                    "/instances", content=data, headers={"Content-Type": "application/dicom"}
                )
                response.raise_for_status()
                with lock:
                    total += len(data)

    batch: list[bytes] = []
    with ThreadPoolExecutor(threads) as pool:
        futures = []
        for data in files:
            batch.append(data)
            if len(batch) == 25:
                futures.append(pool.submit(worker, batch))
                batch = []
        if batch:
            futures.append(pool.submit(worker, batch))
        for future in futures:
            future.result()
    return total


def large_study_files(slices: int, series_count: int = 4) -> tuple[str, list[str], Iterator[bytes]]:
    """A study of ``slices`` 512x512 instances in ``series_count`` series: 24 distinct
    phantom slices, each stored many times under new UIDs (fast to make)."""
    template = make_study(series_slices=(24,), rows=512, columns=512, seed=77)
    datasets = [pydicom.dcmread(io.BytesIO(data)) for _, _, data in template.iter_instances()]
    study_uid = str(generate_uid())
    series_uids = [str(generate_uid()) for _ in range(series_count)]

    def files() -> Iterator[bytes]:
        for number in range(slices):
            dataset = datasets[number % len(datasets)]
            sop = generate_uid()
            dataset.StudyInstanceUID = study_uid
            dataset.SeriesInstanceUID = series_uids[number % series_count]
            dataset.SOPInstanceUID = sop
            dataset.file_meta.MediaStorageSOPInstanceUID = sop
            dataset.InstanceNumber = number // series_count + 1
            out = io.BytesIO()
            dataset.save_as(out, enforce_file_format=True)
            yield out.getvalue()

    return study_uid, series_uids, files()


# --- measuring ------------------------------------------------------------------------


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss(pid: int) -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def curl(*args: str) -> None:
    subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", *args], check=True)


def get_ok(client: httpx.Client, path: str) -> httpx.Response:
    response = client.get(path)
    if response.status_code != 200:
        raise RuntimeError(f"GET {path} answered {response.status_code}: {response.text[:300]}")
    return response


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, {platform.system()}"
        f" {platform.release()}, Python {platform.python_version()}"
    )


def load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


# --- the benchmark --------------------------------------------------------------------


def run(args: argparse.Namespace) -> Report:
    report = Report()
    report.notes.append(f"machine: {machine()}")
    report.notes.append(f"load average at start: {load()}")
    workdir = Path(tempfile.mkdtemp(prefix="model-proxy-bench-"))
    log(f"work folder {workdir}")
    processes: list[Any] = []
    try:
        orthanc = start_orthanc(workdir / "orthanc")
        processes.append(orthanc)
        sink_process, sink_url = start_sink(workdir)
        processes.append(sink_process)

        log("storing the 300-slice series in Orthanc")
        series_study = make_study(series_slices=(300,), rows=512, columns=512, seed=2026)
        instances = [data for _, _, data in series_study.iter_instances()]
        series_bytes = upload(orthanc, iter(instances))
        study_uid, series_uid = series_study.study_uid, series_study.main_series.series_uid
        report.notes.append(
            f"series: 300 slices 512x512, {series_bytes / MB:,.0f} MB of DICOM"
            f" ({series_bytes / MiB:,.0f} MiB)"
        )
        log(f"storing a study of {args.large_slices} slices")
        large_uid, large_series, large_files = large_study_files(args.large_slices)
        large_bytes = upload(orthanc, large_files)
        report.notes.append(
            f"large study: {args.large_slices} slices in {len(large_series)} series,"
            f" {large_bytes / MB:,.0f} MB of DICOM"
        )

        model_id = new_uid()
        servers = {new_uid(): server_entry(orthanc)}
        models = {model_id: {"uri": f"{sink_url}/infer", "task": "prediction", "supports": LEVELS}}
        proxy = start_proxy(
            workdir / "proxy", servers, models, cert=None, extra_args=["--cache-size", "0"]
        )
        processes.append(proxy)
        cached = start_proxy(workdir / "proxy-cached", servers, models, cert=None)
        processes.append(cached)
        proxy_pid = proxy.process.pid
        assert proxy_pid is not None

        series_url = f"{orthanc.dicomweb_url}/studies/{study_uid}/series/{series_uid}"
        series_path = f"/predictions/{model_id}/studies/{study_uid}/series/{series_uid}"
        body_file = workdir / "series-body.json"
        with body_file.open("wb") as body:
            body.write(b"[")
            for index, data in enumerate(instances):
                body.write((b"," if index else b"") + encode_instance(data))
            body.write(b"]")
        body_size = body_file.stat().st_size

        def floor() -> None:
            curl("-H", f"Accept: {ACCEPT}", series_url)
            curl("-X", "POST", "-H", "Content-Type: application/json", "-T", str(body_file),
                 f"{sink_url}/infer")  # fmt: skip

        with proxy.client(timeout=httpx.Timeout(600.0)) as client:
            get_ok(client, series_path)  # warm-up: connections, Orthanc's caches
            floor()
            log("floor (curl download, then curl POST) and proxy, one series, in alternation")
            # Alternating puts both under the same machine conditions: on a shared VM,
            # wall times drift by tens of percent within minutes.
            floor_runs, proxy_runs, proxy_cpu_runs = [], [], []
            reset_peak_rss(proxy_pid)
            for _ in range(args.runs):
                floor_runs.append(timed(floor))
                cpu_before = cpu_seconds(proxy_pid)
                proxy_runs.append(timed(lambda: get_ok(client, series_path)))
                proxy_cpu_runs.append(cpu_seconds(proxy_pid) - cpu_before)
            floor_time, proxy_time = statistics.median(floor_runs), statistics.median(proxy_runs)
            proxy_cpu = statistics.median(proxy_cpu_runs)
            series_rss = peak_rss(proxy_pid)
        report.add(
            "floor (curl WADO-RS download + curl POST of the encoded body, sequential)",
            f"{floor_time:.2f} s (runs {', '.join(f'{t:.2f}' for t in floor_runs)});"
            f" body {body_size / MB:,.0f} MB",
        )
        report.add(
            "proxy end to end, 300-slice series",
            f"{proxy_time:.2f} s (runs {', '.join(f'{t:.2f}' for t in proxy_runs)});"
            f" {series_bytes / proxy_time / MB:,.0f} MB/s of DICOM",
        )
        report.add("proxy vs floor", f"{proxy_time / floor_time:.2f}x the floor", "within 1.5x")
        report.add(
            "proxy CPU time per series (all threads; steadier than wall time on a busy machine)",
            f"{proxy_cpu:.2f} s, {series_bytes / proxy_cpu / MB:,.0f} MB of DICOM per CPU second",
        )
        report.add("proxy peak RSS, 300-slice series", f"{series_rss / MiB:,.0f} MiB", "< 200 MB")

        if not args.skip_naive:
            log("naive pipeline (dicomweb-client, json.dumps, requests)")
            naive = subprocess.run(
                [sys.executable, "-m", "benchmarks.naive", orthanc.dicomweb_url, study_uid,
                 series_uid, f"{sink_url}/infer"],
                cwd=ROOT, capture_output=True, text=True, check=True,
            )  # fmt: skip
            figures = json.loads(naive.stdout.strip().splitlines()[-1])
            report.add(
                "naive pipeline",
                f"{figures['seconds']:.1f} s (retrieve {figures['retrieve']:.1f}, encode"
                f" {figures['encode']:.1f}, post {figures['post']:.1f});"
                f" peak RSS {figures['peak_rss'] / MiB:,.0f} MiB",
            )
            report.add("proxy vs naive", f"{figures['seconds'] / proxy_time:.0f}x faster", ">= 20x")

        log("proxy, large study (study level)")
        large_path = f"/predictions/{model_id}/studies/{large_uid}"
        with proxy.client(timeout=httpx.Timeout(900.0)) as client:
            reset_peak_rss(proxy_pid)
            large_time = timed(lambda: get_ok(client, large_path))
            large_rss = peak_rss(proxy_pid)
        report.add(
            "proxy end to end, large study",
            f"{large_time:.1f} s, {large_bytes / large_time / MB:,.0f} MB/s of DICOM",
        )
        report.add("proxy peak RSS, large study", f"{large_rss / MiB:,.0f} MiB", "< 200 MB")

        log("study retrieval: one WADO-RS request vs QIDO + series in parallel")
        study_url = f"{orthanc.dicomweb_url}/studies/{large_uid}"
        one_call = timed(lambda: curl("-H", f"Accept: {ACCEPT}", study_url))

        def split() -> None:
            curl(f"{study_url}/series")
            with ThreadPoolExecutor(len(large_series)) as pool:
                urls = [f"{study_url}/series/{uid}" for uid in large_series]
                list(pool.map(lambda url: curl("-H", f"Accept: {ACCEPT}", url), urls))

        parallel = timed(split)
        report.add(
            "study download (curl): one WADO-RS request / QIDO + 4 series at once",
            f"{one_call:.2f} s / {parallel:.2f} s",
        )

        log("20 concurrent series requests")
        reset_peak_rss(proxy_pid)
        statuses, concurrent_time = asyncio.run(concurrent_requests(proxy, series_path, 20))
        concurrent_rss = peak_rss(proxy_pid)
        ok = sum(status == 200 for status in statuses)
        report.add(
            "20 concurrent series requests",
            f"{ok}/20 answered 200 in {concurrent_time:.1f} s"
            f" ({20 * series_bytes / concurrent_time / MB:,.0f} MB/s of DICOM);"
            f" peak RSS {concurrent_rss / MiB:,.0f} MiB",
            "all succeed",
        )

        log("cache: a repeated request")
        with cached.client(timeout=httpx.Timeout(600.0)) as client:
            get_ok(client, series_path)  # computes and stores the result
            latencies = sorted(timed(lambda: get_ok(client, series_path)) for _ in range(30))
        report.add(
            "repeated request served from the cache",
            f"p50 {statistics.median(latencies) * 1000:.1f} ms, p90"
            f" {latencies[int(len(latencies) * 0.9)] * 1000:.1f} ms (30 requests)",
            "p50 < 20 ms",
        )

        log("encoder")
        encoder_figures(instances, report.add)
        report.notes.append(f"load average at the end: {load()}")
    finally:
        for process in reversed(processes):
            process.stop()
        # Orthanc's storage of the two studies is over 1 GB.
        shutil.rmtree(workdir, ignore_errors=True)
    return report


async def concurrent_requests(
    proxy: ProxyProcess, path: str, count: int
) -> tuple[list[int], float]:
    async with proxy.async_client(timeout=httpx.Timeout(900.0)) as client:
        started = time.perf_counter()
        responses = await asyncio.gather(*(client.get(path) for _ in range(count)))
        return [response.status_code for response in responses], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="timed repetitions (median)")
    parser.add_argument("--large-slices", type=int, default=2000, help="slices of the study")
    parser.add_argument("--skip-naive", action="store_true", help="skip the naive pipeline")
    args = parser.parse_args()
    started = time.perf_counter()
    report = run(args)
    report.notes.append(f"benchmark wall time: {time.perf_counter() - started:.0f} s")
    print("\n" + report.markdown())


if __name__ == "__main__":
    main()
