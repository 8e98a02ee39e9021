"""A/B of two source trees of the proxy on the 300-slice series, in one run.

    .venv/bin/python -m benchmarks.network_ab --a ../baseline/src --b src --runs 5

Made to check that a change below the request path (the network layer, the
encoder) costs nothing: one Orthanc, one sink model and the stored series are
shared; two proxies run, one from each tree (``PYTHONPATH``), and are asked for
the series in alternation, so that both see the same machine conditions. Prints
the median wall time and proxy CPU time per series of each, each proxy's peak RSS
and the ratio B/A.
A tree is a ``src`` folder, e.g. of a ``git worktree`` of the commit to compare.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx
from harness import ProxyProcess, new_uid, server_entry, start_orthanc, start_proxy

from benchmarks.run import (
    LEVELS,
    cpu_seconds,
    get_ok,
    log,
    peak_rss,
    start_sink,
    timed,
    upload,
)
from model_proxy.sample_data import make_study


def page_faults(pid: int) -> int:
    """Minor page faults of the whole process so far (/proc/PID/stat, field 10)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])


def pid_of(proxy: ProxyProcess) -> int:
    assert proxy.process.pid is not None
    return proxy.process.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, required=True, help="the baseline's src folder")
    parser.add_argument("--b", type=Path, required=True, help="the candidate's src folder")
    parser.add_argument("--runs", type=int, default=5, help="series per proxy")
    parser.add_argument(
        "--input",
        choices=("json", "dicom-multipart"),
        default="json",
        help="the model's input format (docs/model-api.md)",
    )
    parser.add_argument(
        "--b-env", action="append", default=[], metavar="NAME=VALUE", help="for B only"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="model-proxy-ab-"))
    processes: list[Any] = []
    try:
        orthanc = start_orthanc(workdir / "orthanc")
        processes.append(orthanc)
        sink, sink_url = start_sink(workdir)
        processes.append(sink)
        study = make_study(series_slices=(300,), rows=512, columns=512, seed=2026)
        upload(orthanc, (data for _, _, data in study.iter_instances()))
        model_id = new_uid()
        servers = {new_uid(): server_entry(orthanc)}
        model = {"uri": f"{sink_url}/infer", "task": "prediction", "supports": LEVELS}
        models = {model_id: {**model, "input": args.input}}
        path = (
            f"/predictions/{model_id}/studies/{study.study_uid}"
            f"/series/{study.main_series.series_uid}"
        )
        b_env = dict(item.split("=", 1) for item in args.b_env)
        proxies = {}
        for name, tree in (("A", args.a), ("B", args.b)):
            proxy = start_proxy(
                workdir / f"proxy-{name}",
                servers,
                models,
                cert=None,
                env={"PYTHONPATH": str(tree.resolve()), **(b_env if name == "B" else {})},
                extra_args=["--cache-size", "0"],
            )
            processes.append(proxy)
            proxies[name] = proxy
        wall: dict[str, list[float]] = {"A": [], "B": []}
        cpu: dict[str, list[float]] = {"A": [], "B": []}
        faults: dict[str, list[int]] = {"A": [], "B": []}
        clients = {name: p.client(timeout=httpx.Timeout(600.0)) for name, p in proxies.items()}
        try:
            for client in clients.values():
                get_ok(client, path)  # warm-up
            for run in range(args.runs):
                for name in ("A", "B") if run % 2 == 0 else ("B", "A"):
                    pid = proxies[name].process.pid
                    assert pid is not None
                    client = clients[name]
                    before, faults_before = cpu_seconds(pid), page_faults(pid)
                    wall[name].append(timed(lambda: get_ok(client, path)))  # noqa: B023
                    cpu[name].append(cpu_seconds(pid) - before)
                    faults[name].append(page_faults(pid) - faults_before)
                log(f"run {run + 1}: A {wall['A'][-1]:.2f} s, B {wall['B'][-1]:.2f} s")
        finally:
            for client in clients.values():
                client.close()
        print(
            "| proxy | wall s (median) | CPU s (median) | page faults (median) | peak RSS"
            " | runs (wall) |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for name, tree in (("A", args.a), ("B", args.b)):
            runs = ", ".join(f"{t:.2f}" for t in wall[name])
            print(
                f"| {name} `{tree}` | {statistics.median(wall[name]):.2f}"
                f" | {statistics.median(cpu[name]):.2f}"
                f" | {statistics.median(faults[name]):,.0f}"
                f" | {peak_rss(pid_of(proxies[name])) / (1 << 20):,.0f} MiB | {runs} |"
            )
        wall_ratio = statistics.median(wall["B"]) / statistics.median(wall["A"])
        cpu_ratio = statistics.median(cpu["B"]) / statistics.median(cpu["A"])
        print(f"\nB/A: wall {wall_ratio:.2f}x, CPU {cpu_ratio:.2f}x")
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
