"""The soak's request mix and load loop, shared by tests/integration/test_soak.py (which
asserts behaviour only) and benchmarks/soak.py (which prints the rates and the served
fraction: figures of the machine as much as of the proxy, so never asserted).

``soak_setup`` writes the servers.json / models.json entries and the mix; ``run_load``
sends it from ``CLIENTS`` concurrent clients for ``seconds`` and tallies the answers.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from faults import canned_http_server, closed_port_url
from harness import ExampleModel, OrthancServer, new_uid, server_entry
from scripted_upstream import cut_server, delayed_server, silent_server

from model_proxy.sample_data import SampleStudy

CLIENTS = 200
PACS_TIMEOUT, MODEL_TIMEOUT = 2, 3
ALL_LEVELS = ["/studies", "/studies/series", "/studies/series/instances"]
BOUNDARY = "soak-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
ADMISSION_CODES = {"too_many_inferences", "memory_budget_exhausted"}
PROXY_ARGS = [
    "--pacs-timeout", str(PACS_TIMEOUT),
    "--model-timeout", str(MODEL_TIMEOUT),
    # Keep the faults coming: an open breaker would answer most of them with a
    # fast 503 instead of going through the failure itself.
    "--breaker-failures", "1000",
    "--cache-size", "0",  # every good request reaches Orthanc and the model
]  # fmt: skip


def multipart(part10: bytes) -> bytes:
    return (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part10
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


@dataclass(frozen=True)
class Kind:
    """One kind of request of the mix, and what the only acceptable answers are."""

    name: str
    weight: int
    path: str
    check: Callable[[httpx.Response], str | None]
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


def at_capacity(response: httpx.Response) -> bool:
    """The documented overload answer (runtime/admission.py): 503, Retry-After, its code."""
    if response.status_code != 503 or "retry-after" not in response.headers:
        return False
    body = error_body(response)
    return isinstance(body, dict) and body["code"] in ADMISSION_CODES


def result_of(model_answer: bytes) -> Callable[[httpx.Response], str | None]:
    """The good request's check: admitted, it must be exactly ``model_answer``."""

    def check(response: httpx.Response) -> str | None:
        if at_capacity(response):
            return None
        if response.status_code != 200:
            return f"{response.status_code} {response.text[:200]}"
        if response.content != model_answer:
            return f"200 with another result: {response.text[:200]}"
        return None

    return check


def error_body(response: httpx.Response) -> dict[str, Any] | str:
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} not JSON: {response.text[:200]}"
    if not isinstance(body, dict) or set(body) != {"message", "code"}:
        return f"{response.status_code} not an error body: {response.text[:200]}"
    if "Traceback" in body["message"]:
        return f"{response.status_code} traceback in the body"
    return body


def refused(status: int, code: str) -> Callable[[httpx.Response], str | None]:
    def check(response: httpx.Response) -> str | None:
        body = error_body(response)
        if isinstance(body, str):
            return body
        if response.status_code != status or body["code"] != code:
            return f"{response.status_code} {body}, expected {status} {code}"
        return None

    return check


def upstream_fault(label: str) -> Callable[[httpx.Response], str | None]:
    """502, 504 or 503 (breaker open), naming the upstream at fault."""

    def check(response: httpx.Response) -> str | None:
        body = error_body(response)
        if isinstance(body, str):
            return body
        if at_capacity(response):
            return None
        if response.status_code not in (502, 503, 504) or label not in body["message"]:
            return f"{response.status_code} {body}, expected 502/503/504 naming {label}"
        return None

    return check


@dataclass
class Tally:
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    rss_kib: list[tuple[float, int]] = field(default_factory=list)
    seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    cpu_seconds: float = 0.0

    def kinds(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for (kind, _), count in self.answers.items():
            counts[kind] += count
        return counts


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert found, status
    return int(found.group(1))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_load(
    url: str, kinds: list[Kind], pid: int, seconds: float, clients: int = CLIENTS
) -> Tally:
    tally = Tally()
    started = time.monotonic()
    deadline = started + seconds
    weights = [kind.weight for kind in kinds]

    async def client(index: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(index)  # reproducible mix per client
        while time.monotonic() < deadline:
            kind = rng.choices(kinds, weights)[0]
            sent = time.monotonic()
            try:
                response = await http.get(kind.path, params=kind.params, headers=kind.headers)
            except httpx.HTTPError as exc:
                tally.problems.append(f"{kind.name}: {type(exc).__name__}: {exc}")
                continue
            tally.answers[kind.name, response.status_code] += 1
            tally.seconds[kind.name].append(time.monotonic() - sent)
            problem = kind.check(response)
            if problem is not None:
                tally.problems.append(f"{kind.name}: {problem}")

    async def sample_memory() -> None:
        while time.monotonic() < deadline:
            tally.rss_kib.append((time.monotonic() - started, rss_kib(pid)))
            await asyncio.sleep(1.0)  # a sampling period, not a wait for the proxy
        tally.cpu_seconds = cpu_seconds(pid) - cpu_at_start

    cpu_at_start = cpu_seconds(pid)

    # A new connection for every request. On a kept-alive connection a request can
    # cross the server's idle close (uvicorn's 5 s keep-alive timeout) in transit and
    # come back as a reset (httpx's ReadError). The client's idle clock starts when it
    # has read the answer, the server's when it sent it, and on a loaded machine this
    # process reads seconds late (it parses 200 clients' results): dropping idle
    # connections after 0.5 s still lost one request in a run at load average 10.
    # Browsers retry such a request; this client must not, and must not need to.
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0)
    timeout = httpx.Timeout(60.0)
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=timeout, trust_env=False
    ) as http:
        await asyncio.gather(sample_memory(), *(client(i, http) for i in range(clients)))
    return tally


@contextmanager
def faulty_upstreams(study: SampleStudy) -> Iterator[dict[str, str]]:
    """Base URLs of an upstream for each fault, living as long as the context."""
    part10 = next(study.iter_instances())[2]
    whole = multipart(part10)
    with ExitStack() as stack:

        def enter(manager: Any) -> str:
            server = stack.enter_context(manager)
            return server if isinstance(server, str) else str(server.url)

        json, html, cut = "application/json", "text/html", len(whole)
        yield {
            "pacs-refused": closed_port_url(),
            "pacs-500": enter(canned_http_server("500 Server Error", b"boom", "text/plain")),
            "pacs-garbage": enter(canned_http_server("200 OK", b"\x00garbage" * 100, MULTIPART)),
            "pacs-cut": enter(cut_server(whole[:3000], content_type=MULTIPART, announced=cut)),
            "pacs-slow": enter(delayed_server(PACS_TIMEOUT + 1.5, whole, content_type=MULTIPART)),
            "model-refused": closed_port_url(),
            "model-hanging": enter(silent_server()),
            "model-not-json": enter(canned_http_server("200 OK", b"<html>oops</html>", html)),
            "model-4xx": enter(canned_http_server("422 Unprocessable", b'{"detail": "no"}', json)),
            "model-5xx": enter(canned_http_server("500 Server Error", b'{"message": "x"}', json)),
            "model-cut": enter(cut_server(b'{"1.2.3": {', content_type=json, announced=5000)),
        }  # fmt: skip


@dataclass(frozen=True)
class SoakSetup:
    servers: dict[str, str]  # fault name -> server id of a faulty PACS
    models: dict[str, str]  # fault name -> model id of a faulty model
    servers_json: dict[str, Any]
    models_json: dict[str, Any]
    good_model: str
    series_path: str
    instance_path: str

    @property
    def faulty(self) -> list[str]:
        """The labels that the messages about the injected faults name."""
        return [f"PACS {uid[:8]}" for uid in self.servers.values()] + [
            f"model {uid[:8]}" for uid in self.models.values()
        ]

    def kinds(self, instance_result: bytes, series_result: bytes) -> list[Kind]:
        """The mix; the good kinds check against the answers of a request made alone."""
        series_path, instance_path = self.series_path, self.instance_path
        other_model = series_path.replace(self.good_model, new_uid())
        segmentations = series_path.replace("/predictions/", "/segmentations/")
        return [
            Kind("good-instance", 12, instance_path, result_of(instance_result)),
            Kind("good-series", 2, series_path, result_of(series_result)),
            *(
                Kind(name, 1, series_path, upstream_fault(f"PACS {uid[:8]}"),
                     params={"server": uid})
                for name, uid in self.servers.items()
            ),
            *(
                Kind(name, 1, instance_path.replace(self.good_model, uid),
                     upstream_fault(f"model {uid[:8]}"))
                for name, uid in self.models.items()
            ),
            Kind("bad-uid", 1, f"{series_path}/instances/1..2", refused(400, "invalid_uid")),
            Kind("unknown-model", 1, other_model, refused(404, "unknown_model")),
            Kind("unknown-server", 1, series_path, refused(404, "unknown_server"),
                 params={"server": new_uid()}),
            Kind("wrong-task", 1, segmentations, refused(400, "wrong_task")),
            Kind("bad-filters", 1, series_path, refused(400, "data_filters_not_accepted"),
                 params={"data-filters": "[]"}),
            Kind("long-url", 1, series_path, refused(414, "uri_too_long"),
                 params={"_": "x" * 9000}),
            Kind("big-header", 1, series_path, refused(431, "headers_too_large"),
                 headers={"X-Big": "y" * 9000}),
        ]  # fmt: skip


def soak_setup(
    orthanc: OrthancServer, example_model: ExampleModel, study: SampleStudy, faulty: dict[str, str]
) -> SoakSetup:
    servers = {name: new_uid() for name in faulty if name.startswith("pacs-")}
    models = {name: new_uid() for name in faulty if name.startswith("model-")}
    good_model = new_uid()
    servers_json: dict[str, Any] = {new_uid(): server_entry(orthanc)}
    servers_json |= {uid: {"uri": f"{faulty[n]}/dicom-web"} for n, uid in servers.items()}
    models_json: dict[str, Any] = {
        uid: {"uri": f"{faulty[n]}/prediction", "task": "prediction", "supports": ALL_LEVELS}
        for n, uid in models.items()
    }
    models_json[good_model] = {
        "uri": f"{example_model.url}/prediction", "task": "prediction", "supports": ALL_LEVELS
    }  # fmt: skip
    series = study.series[1]
    series_path = f"/predictions/{good_model}/studies/{study.study_uid}/series/{series.series_uid}"
    return SoakSetup(
        servers=servers,
        models=models,
        servers_json=servers_json,
        models_json=models_json,
        good_model=good_model,
        series_path=series_path,
        instance_path=f"{series_path}/instances/{series.sop_uids[0]}",
    )


def unexplained_log_lines(log: str, faulty: list[str]) -> list[str]:
    lines = log.splitlines()
    start = next(i for i, line in enumerate(lines) if "model-proxy" in line and "ready" in line)
    unexplained = []
    for line in lines[start:]:
        # Warnings are expected under this load (a retried wait for a PACS connection,
        # refusals at capacity); errors are not, unless they name a faulty upstream.
        failed = " ERROR " in line or " CRITICAL " in line
        if "Traceback" in line or (failed and not any(label in line for label in faulty)):
            unexplained.append(line)
    return unexplained
