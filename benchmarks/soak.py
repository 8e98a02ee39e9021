"""The soak's figures: how much of the load the proxy served, and how fast.

    .venv/bin/python -m benchmarks.soak [--seconds 60] [--clients 200]

The same mix and load as tests/integration/test_soak.py (tests/integration/soak_load.py):
a real Orthanc with a synthetic study, the example Model API, every upstream fault and
bad input, against one ``model-proxy serve`` on loopback. The test asserts only that
every answer was the documented one; the figures printed here (requests per second, the
fraction of good requests served rather than refused at capacity, latencies, the
proxy's CPU and memory) measure the machine as much as the proxy, so no test asserts
them. Loopback only; bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from harness import (  # the integration tests' helpers (see benchmarks/__init__.py)
    start_example_model,
    start_orthanc,
    start_proxy,
)
from soak_load import CLIENTS, PROXY_ARGS, Kind, Tally, faulty_upstreams, run_load, soak_setup

from model_proxy.sample_data import make_study


def figures(tally: Tally, kinds: list[Kind], seconds: float, clients: int) -> None:
    total = sum(tally.answers.values())
    print(f"soak: {clients} clients, {seconds:.0f} s, {total} requests ({total / seconds:.0f}/s)")
    good = sum(n for (kind, _), n in tally.answers.items() if kind.startswith("good-"))
    served = sum(n for (kind, status), n in tally.answers.items() if kind.startswith("good-")
                 and status == 200)  # fmt: skip
    if good:
        print(f"  good requests served: {served} of {good} ({100 * served / good:.1f} %),"
              f" the rest refused at capacity (503)")  # fmt: skip
    for kind in kinds:
        answers = {
            status: n for (name, status), n in sorted(tally.answers.items()) if name == kind.name
        }
        seconds_each = sorted(tally.seconds[kind.name]) or [0.0]
        median, worst = seconds_each[len(seconds_each) // 2], seconds_each[-1]
        print(f"  {kind.name:15} {answers} median {median:.2f} s, max {worst:.2f} s")
    print(f"  proxy CPU: {100 * tally.cpu_seconds / seconds:.0f} % of one core")
    print(f"  RSS MiB each second: {[kib // 1024 for _, kib in tally.rss_kib]}")
    if tally.problems:
        print(f"  {len(tally.problems)} wrong answers, first: {tally.problems[:5]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to send")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="at once")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="model-proxy-soak-"))
    processes: list[Any] = []
    try:
        orthanc = start_orthanc(workdir / "orthanc")
        processes.append(orthanc)
        model = start_example_model(workdir / "model")
        processes.append(model)
        study = make_study(series_slices=(24, 12))
        orthanc.upload_many(part10 for _, _, part10 in study.iter_instances())
        with faulty_upstreams(study) as faulty:
            setup = soak_setup(orthanc, model, study, faulty)
            proxy = start_proxy(
                workdir / "proxy",
                setup.servers_json,
                setup.models_json,
                cert=None,
                extra_args=PROXY_ARGS,
            )
            processes.append(proxy)
            with proxy.client() as client:
                alone = [client.get(p).content for p in (setup.instance_path, setup.series_path)]
            kinds = setup.kinds(*alone)
            assert proxy.process.pid is not None
            tally = asyncio.run(
                run_load(proxy.url, kinds, proxy.process.pid, args.seconds, args.clients)
            )
            figures(tally, kinds, args.seconds, args.clients)
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
