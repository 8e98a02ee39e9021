"""The link-limited benchmark (issue 15): the model behind a 1 Gbit/s and a 10 Gbit/s link.

    .venv/bin/python -m benchmarks.link [--slices 300] [--runs 3]   # as root

On loopback bytes are free; in a hospital the model runs on a GPU server across a
1 or 10 GbE link, and every byte of the wire format costs time there. This makes such
a link on this machine without touching anything outside the benchmark:

- a network namespace of its own (``ip netns add model-proxy-bench-<pid>``) with its
  loopback up; the benchmark re-runs itself inside it, so Orthanc, the sink model
  (benchmarks/sink_model.py), the proxy and every client live on that loopback;
- ``tc``: an htb qdisc on that loopback whose one class, at the link's rate, gets only
  the packets to the sink's port (a u32 filter on the destination port); everything
  else (the PACS, the viewer, the model's answers) is unshaped;
- the namespace is deleted at the end, also on error or Ctrl-C. Without root (or
  without ``ip``/``tc``) it says so and skips.

For each rate, in alternation, ``--runs`` times: the **link floor** (the compact JSON
body the proxy sends, written by a raw socket to the sink over the same shaped link),
the series' WADO-RS download by curl (the PACS side, unshaped), the proxy end to end
(``GET`` of the series through the proxy, JSON input) with the proxy's CPU time, and
the same for ``"input": "dicom-multipart"``. Medians are printed with their ratio, the
bytes the sink received and the model's decode time for the JSON body (reference
decoder ``bytes(json.loads(s))`` per instance, and orjson; measured on a sample of
instances, scaled to the series). The padded body of the previous encoder is sent
once over each link for comparison.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from harness import LOOPBACK, new_uid, server_entry, start_orthanc, start_proxy

from benchmarks import ROOT
from benchmarks.encoder import orjson_decode, padded_instance, reference_decode
from benchmarks.run import (
    ACCEPT,
    LEVELS,
    cpu_seconds,
    curl,
    get_ok,
    load,
    log,
    peak_rss,
    start_sink,
    upload,
)
from model_proxy.config import InputFormat
from model_proxy.models.body import Retrieval
from model_proxy.models.encoder import encode_instance
from model_proxy.models.formats import body_format
from model_proxy.pacs.source import Target
from model_proxy.sample_data import make_study

MB = 1_000_000
LINKS: dict[str, int | None] = {
    "loopback (unshaped)": None,
    "1 Gbit/s": 1_000_000_000,
    "10 Gbit/s": 10_000_000_000,
}
GOALS = {"1 Gbit/s": 1.10, "10 Gbit/s": 1.5}
DECODE_SAMPLE = 12  # instances decoded to measure the model's decode rate


# --- the namespace (outside) ----------------------------------------------------------


def run_in_namespace(argv: Sequence[str]) -> int:
    """Make the namespace, run this module inside it, delete the namespace."""
    name = f"model-proxy-bench-{os.getpid()}"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        why = f"{', '.join(missing)} not found" if missing else "it needs root"
        print(f"link-limited benchmark skipped: cannot make a network namespace ({why})")
        return 0
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        print(
            "link-limited benchmark skipped: cannot make a network namespace"
            f" (ip netns add: {made.stderr.strip()})"
        )
        return 0

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        ns = ["ip", "netns", "exec", name]
        subprocess.run([*ns, "ip", "link", "set", "lo", "up"], check=True)
        inner = [*ns, sys.executable, "-m", "benchmarks.link", "--inside", *argv]
        return subprocess.run(inner, cwd=ROOT, check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
        signal.signal(signal.SIGTERM, previous)
        log(f"network namespace {name} deleted")


# --- the link (inside) ----------------------------------------------------------------


def tc(*args: str) -> None:
    subprocess.run(["tc", *args], check=True, capture_output=True, text=True)


def shape(port: int, rate: int | None) -> None:
    """Limit what goes to ``port`` on this namespace's loopback to ``rate`` bit/s (None: off)."""
    subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True, check=False)
    if rate is None:
        return
    # htb's default class 0: unclassified packets pass unshaped. A burst of 1 ms at the
    # rate (at least 64 KiB, one loopback segment) keeps the timer from limiting it.
    burst = str(max(rate // 8 // 1000, 1 << 16))
    tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "0")
    tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb",
       "rate", str(rate), "ceil", str(rate), "burst", burst, "cburst", burst)  # fmt: skip
    tc("filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
       "match", "ip", "dport", str(port), "0xffff", "flowid", "1:10")  # fmt: skip


def post_raw(port: int, body: bytes, content_type: str) -> int:
    """POST ``body`` to the sink with one plain socket; the bytes the sink says it got."""
    head = (
        f"POST /infer HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((LOOPBACK, port), timeout=600) as sock:
        sock.sendall(head)
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status, _, rest = answer.partition(b"\r\n")
    if b" 200 " not in status + b" ":
        raise RuntimeError(f"the sink answered {status!r}")
    received: int = httpx.Response(200, content=rest.partition(b"\r\n\r\n")[2]).json()["received"]
    return received


def multipart_body(instances: Sequence[bytes]) -> tuple[bytes, str]:
    """The dicom-multipart body the proxy sends for the series, framed by its own code."""
    framing = body_format(InputFormat.DICOM_MULTIPART, slices_in_flight=1)
    retrieval = Retrieval(Target("1.2", "1.2.3"), as_array=True)
    pieces = []
    for index, data in enumerate(instances):
        pieces += [framing.before_instance(retrieval, index, len(data)), data]
    pieces.append(framing.end())
    return b"".join(pieces), framing.content_type


def json_body(instances: Sequence[bytes], encode: Callable[[bytes], bytes]) -> bytes:
    return b"[" + b",".join(encode(data) for data in instances) + b"]"


def median_of(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({', '.join(f'{v:.2f}' for v in values)})"


def measure(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="model-proxy-link-"))
    processes: list[Any] = []
    print(f"load average at start: {load()}")
    try:
        orthanc = start_orthanc(workdir / "orthanc")
        processes.append(orthanc)
        sink_process, sink_url = start_sink(workdir)
        processes.append(sink_process)
        sink_port = int(sink_url.rsplit(":", 1)[1])
        log(f"storing the {args.slices}-slice series in Orthanc")
        study = make_study(series_slices=(args.slices,), rows=512, columns=512, seed=2026)
        instances = [data for _, _, data in study.iter_instances()]
        dicom_bytes = upload(orthanc, iter(instances))
        entry = {"uri": f"{sink_url}/infer", "task": "prediction", "supports": LEVELS}
        models = {"json": new_uid(), "dicom-multipart": new_uid()}
        proxy = start_proxy(
            workdir / "proxy",
            {new_uid(): server_entry(orthanc)},
            {
                models["json"]: entry,
                models["dicom-multipart"]: {**entry, "input": "dicom-multipart"},
            },
            cert=None,
            extra_args=["--cache-size", "0", *args.proxy_arg],
        )
        processes.append(proxy)
        assert proxy.process.pid is not None
        series = f"/studies/{study.study_uid}/series/{study.main_series.series_uid}"
        bodies = {
            "json": (json_body(instances, encode_instance), "application/json"),
            "dicom-multipart": multipart_body(instances),
        }
        padded = json_body(instances, padded_instance)
        sizes = {name: f"{len(body) / MB:,.0f} MB" for name, (body, _) in bodies.items()}
        print(
            f"series: {args.slices} slices 512x512, {dicom_bytes / MB:,.0f} MB of DICOM;"
            f" compact body {sizes['json']}, padded (before) {len(padded) / MB:,.0f} MB,"
            f" dicom-multipart {sizes['dicom-multipart']}"
        )
        decode_figures(instances, dicom_bytes)
        rows: list[str] = []
        with proxy.client(timeout=600) as client:
            get_ok(client, f"/predictions/{models['json']}{series}")  # warm
            for label, rate in LINKS.items():
                if label.split()[0] not in args.links.split(","):
                    continue
                shape(sink_port, rate)
                log(f"link: {label}")
                for mode, (body, content_type) in bodies.items():
                    floors: list[float] = []
                    ends: list[float] = []
                    downloads: list[float] = []
                    cpu: list[float] = []
                    received = 0
                    for _ in range(args.runs):
                        started = time.perf_counter()
                        sent = post_raw(sink_port, body, content_type)
                        floors.append(time.perf_counter() - started)
                        assert sent == len(body), (sent, len(body))
                        started = time.perf_counter()
                        curl("-H", f"Accept: {ACCEPT}", f"{orthanc.dicomweb_url}{series}")
                        downloads.append(time.perf_counter() - started)
                        cpu_before = cpu_seconds(proxy.process.pid)
                        started = time.perf_counter()
                        answer = get_ok(client, f"/predictions/{models[mode]}{series}")
                        ends.append(time.perf_counter() - started)
                        cpu.append(cpu_seconds(proxy.process.pid) - cpu_before)
                        received = int(answer.json()["received"])
                    ratio = statistics.median(ends) / statistics.median(floors)
                    # The goals are for the JSON body; multipart is reported beside it.
                    goal = GOALS.get(label) if mode == "json" else None
                    rows.append(
                        f"| {label} | {mode} | {median_of(ends)} | {median_of(floors)}"
                        f" | {ratio:.2f}x{f' (goal {goal:.2f}x)' if goal else ''}"
                        f" | {received / MB:,.1f} MB{'' if received == len(body) else ' (!)'}"
                        f" | {statistics.median(downloads):.2f} s"
                        f" | {statistics.median(cpu):.2f} s |"
                    )
                    print(rows[-1], flush=True)
                if rate is not None:
                    started = time.perf_counter()
                    post_raw(sink_port, padded, "application/json")
                    padded_floor = time.perf_counter() - started
                    rows.append(
                        f"| {label} | json, padded body (before) | | {padded_floor:.2f} s"
                        f" | | {len(padded) / MB:,.1f} MB | | |"
                    )
                    print(rows[-1], flush=True)
            shape(sink_port, None)
        print(
            "\n| link | input | proxy end to end, median (runs) | link floor | ratio | sent"
            " | PACS download (curl) | proxy CPU |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        print("\n".join(rows))
        print(f"\nproxy peak RSS: {peak_rss(proxy.process.pid) / (1 << 20):,.0f} MiB")
        print(f"load average at the end: {load()}")
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def decode_figures(instances: Sequence[bytes], dicom_bytes: int) -> None:
    """The model's decode time for the series, from a sample of its instances."""
    sample = instances[:DECODE_SAMPLE]
    sample_bytes = sum(map(len, sample))
    for name, encode in (("compact", encode_instance), ("padded (before)", padded_instance)):
        texts = [encode(data) for data in sample]
        figures = []
        for decode in (reference_decode, orjson_decode):
            started = time.thread_time()
            for text, data in zip(texts, sample, strict=True):
                assert decode(text) == data
            figures.append((time.thread_time() - started) * dicom_bytes / sample_bytes)
        print(
            f"model's decode time for the series, {name} body ({DECODE_SAMPLE} instances"
            f" measured, CPU time): reference bytes(json.loads(s)) {figures[0]:.1f} s,"
            f" orjson {figures[1]:.1f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--links", default="loopback,1,10", help="which links: loopback, 1, 10 (Gbit/s)"
    )
    parser.add_argument(
        "--proxy-arg",
        action="append",
        default=[],
        help="an extra option for model-proxy serve (repeat it: --proxy-arg=--memory-budget"
        " --proxy-arg=1GiB)",
    )
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if not args.inside:
        sys.exit(run_in_namespace(sys.argv[1:]))
    measure(args)


if __name__ == "__main__":
    main()
