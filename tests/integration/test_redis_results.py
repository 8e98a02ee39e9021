"""Results shared by three replicas (docs/replicas.md, "Results"): a real redis-server,
three ``model-proxy serve`` processes behind a real nginx round-robin (the shipped
config), a real Orthanc and the example model behind a call counter.

Identical requests spread over the replicas at once make one model call; a replica
answers another's result from Redis, and its ETag with 304; a result over
``--redis-max-entry`` stays on its replica; with Redis stopped the replicas serve on
their own, and share again once it is back."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from harness import (
    ProxyProcess,
    TlsCert,
    new_uid,
    server_entry,
    start_orthanc,
    wait_until,
)
from model_double import ModelDouble, serve_model_double
from nginx_server import NginxServer
from redis_server import RedisServer, start_redis
from replica_set import replicas_behind_nginx

from model_proxy.sample_data import SampleStudy, make_study

pytestmark = pytest.mark.integration

SERIES = ["/studies/series"]
IDENTITY = {"Accept-Encoding": "identity"}
# A one-slice series' masks are about 70 kB, a twelve-slice one's about 800 kB.
MAX_ENTRY = "300kB"
SMALL, LARGE = 0, 1  # series index
CASES = ["thirty", "later", "etag", "large", "long", "takeover", "down", "recovered"]
# Short enough for the take-over test to wait it out, long enough that a replica on a
# loaded machine renews it in time (every third of it).
LEASE = "10"
RESULTS = "model-proxy:default:results:"  # --redis-namespace default
DEADLINE = 60.0


@dataclass
class ReplicaBed:
    replicas: list[ProxyProcess]
    nginx: NginxServer
    redis: RedisServer
    double: ModelDouble
    study: SampleStudy
    cert: TlsCert
    models: dict[str, str]

    def path(self, case: str, series: int = SMALL) -> str:
        return (
            f"/segmentations/{self.models[case]}/studies/{self.study.study_uid}"
            f"/series/{self.study.series[series].series_uid}"
        )

    def via_nginx(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.nginx.url,
            verify=self.cert.ssl_context(),
            timeout=httpx.Timeout(120.0),
            trust_env=False,
            limits=httpx.Limits(max_connections=100),
        )

    def get(
        self, replica: int, case: str, *, series: int = SMALL, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        with self.replicas[replica].client() as client:
            return client.get(self.path(case, series), headers=headers or IDENTITY)

    def calls(self, case: str) -> int:
        return self.double.case_calls(case)

    def redis_up(self, replica: int) -> float | None:
        with self.replicas[replica].client() as client:
            text = client.get("/metrics").text
        found = re.search(r"^model_proxy_redis_up (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else None

    def all_redis_up(self) -> list[float | None]:
        return [self.redis_up(index) for index in range(len(self.replicas))]

    def shared_keys(self, kind: str) -> list[bytes]:
        with self.redis.client() as client:
            return list(client.scan_iter(f"{RESULTS}{kind}:*"))


def cache_lines(replica: ProxyProcess, case_model: str) -> list[str]:
    """The request log lines of ``case_model``'s GETs: "cache=..." says how each was served
    (once each: the log file and the process output both have them)."""
    lines = replica.log_text().splitlines()
    return list(dict.fromkeys(line for line in lines if case_model in line and "cache=" in line))


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory, tls_cert: TlsCert) -> Iterator[ReplicaBed]:
    orthanc = start_orthanc(tmp_path_factory.mktemp("orthanc-replicas"))
    study = make_study(series_slices=(1, 12), seed=14)
    orthanc.upload_many(part10 for _, _, part10 in study.iter_instances())
    redis_dir = tmp_path_factory.mktemp("redis")
    try:
        with start_redis(redis_dir) as redis, serve_model_double() as double:
            # /status probes statusUri: not the counted endpoint.
            models, models_json = double.case_models(
                CASES, SERIES, statusUri=f"{double.url}/status"
            )
            servers_json = {new_uid(): server_entry(orthanc)}
            replica_args = [
                "--redis", redis.url,
                "--redis-max-entry", MAX_ENTRY,
                "--redis-check-interval", "0.2",
                "--redis-lock-lease", LEASE,
            ]  # fmt: skip
            with replicas_behind_nginx(
                tmp_path_factory,
                "results",
                servers_json,
                models_json,
                extra_args=replica_args,
                cert=tls_cert,
                env={"ZHIVA_SHOW_STATUS_PAGE": "true"},
            ) as (replicas, nginx):
                yield ReplicaBed(replicas, nginx, redis, double, study, tls_cert, models)
    finally:
        orthanc.stop()


def test_thirty_identical_requests_over_three_replicas_make_one_model_call(
    bed: ReplicaBed,
) -> None:
    # The model thinks for a while: the requests arrive while the first one runs.
    bed.double.delay = 2.0

    async def fire() -> list[httpx.Response]:
        async with bed.via_nginx() as client:
            return await asyncio.gather(
                *(
                    client.get(
                        bed.path("thirty"),
                        headers=IDENTITY if index % 2 else {"Accept-Encoding": "gzip"},
                    )
                    for index in range(30)
                )
            )

    try:
        responses = asyncio.run(fire())
    finally:
        bed.double.delay = 0.0
    assert [r.status_code for r in responses] == [200] * 30, responses[0].text
    assert len({r.content for r in responses}) == 1  # httpx decoded the gzip ones
    assert len({r.headers["etag"] for r in responses}) == 1
    assert bed.calls("thirty") == 1
    # nginx spread them: every replica answered some, and the two that did not call
    # the model answered from Redis (waiting for the one that did, or after it).
    wait_until(
        "30 request log lines",  # written once each response is over
        lambda: sum(len(cache_lines(r, bed.models["thirty"])) for r in bed.replicas) == 30,
        timeout=DEADLINE,
    )
    lines = [cache_lines(replica, bed.models["thirty"]) for replica in bed.replicas]
    assert all(lines), lines
    assert sum("model_called=True" in line for found in lines for line in found) == 1
    assert sum(any("cache=shared" in line for line in found) for found in lines) == 2


def test_a_later_request_on_another_replica_is_a_redis_hit(bed: ReplicaBed) -> None:
    first = bed.get(0, "later")
    assert first.status_code == 200, first.text
    assert bed.calls("later") == 1
    second = bed.get(1, "later")
    compressed = bed.get(2, "later", headers={"Accept-Encoding": "zstd"})
    assert second.status_code == compressed.status_code == 200
    assert second.content == compressed.content == first.content
    assert second.headers["etag"] == compressed.headers["etag"] == first.headers["etag"]
    assert compressed.headers["content-encoding"] == "zstd"
    assert bed.calls("later") == 1
    # The replica keeps what it read: the next one is a hit on its own disk.
    assert bed.get(1, "later").content == first.content
    later = bed.models["later"]
    wait_until(
        "2 log lines", lambda: len(cache_lines(bed.replicas[1], later)) == 2, timeout=DEADLINE
    )
    served = cache_lines(bed.replicas[1], later)
    assert ["cache=shared" in served[0], "cache=hit" in served[1]] == [True, True], served


def test_a_conditional_get_with_another_replicas_etag_is_304(bed: ReplicaBed) -> None:
    first = bed.get(0, "etag")
    etag = first.headers["etag"]
    for replica in (1, 2):
        again = bed.get(replica, "etag", headers=IDENTITY | {"If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["etag"] == etag
    assert bed.calls("etag") == 1


def test_a_result_over_the_entry_limit_stays_on_its_replica(bed: ReplicaBed) -> None:
    entries = set(bed.shared_keys("entry"))
    first = bed.get(0, "large", series=LARGE)
    assert first.status_code == 200, first.text
    assert len(first.content) > 300_000
    assert bed.get(0, "large", series=LARGE).content == first.content
    assert bed.calls("large") == 1  # its own disk cache has it
    # Redis has only the note that it is too large; another replica calls the model.
    assert set(bed.shared_keys("entry")) == entries
    assert len(bed.shared_keys("large")) == 1
    other = bed.get(1, "large", series=LARGE)
    assert other.content == first.content
    assert other.headers["etag"] == first.headers["etag"]
    assert bed.calls("large") == 2
    assert "over --redis-max-entry" in bed.replicas[0].log_text()


def test_a_model_call_longer_than_the_lease_keeps_its_lock(bed: ReplicaBed) -> None:
    bed.double.delay = 1.5 * float(LEASE)  # renewed every third of the lease meanwhile
    answers: list[httpx.Response] = []
    holder = threading.Thread(target=lambda: answers.append(bed.get(1, "long")))
    try:
        holder.start()
        wait_until("model call", lambda: bed.calls("long") == 1, timeout=DEADLINE)
        waiter = bed.get(2, "long")
        holder.join(timeout=DEADLINE)
    finally:
        bed.double.delay = 0.0
    assert [waiter.status_code, answers[0].status_code] == [200, 200]
    assert waiter.content == answers[0].content
    assert bed.calls("long") == 1
    wait_until(
        "log line", lambda: cache_lines(bed.replicas[2], bed.models["long"]), timeout=DEADLINE
    )
    assert "cache=shared" in cache_lines(bed.replicas[2], bed.models["long"])[0]


def test_a_replica_that_dies_while_computing_is_taken_over_when_its_lease_expires(
    bed: ReplicaBed,
) -> None:
    dead, heir = bed.replicas[0], bed.replicas[1]
    bed.double.delay = 60.0  # the model call outlives its replica
    answers: list[httpx.Response | BaseException] = []

    def ask(replica: int) -> None:
        try:
            answers.append(bed.get(replica, "takeover"))
        except httpx.HTTPError as exc:
            answers.append(exc)

    first = threading.Thread(target=ask, args=(0,))
    try:
        first.start()
        wait_until(
            "model call under a lock in Redis",
            lambda: bed.calls("takeover") == 1 and bool(bed.shared_keys("lock")),
            timeout=DEADLINE,
        )
        pid = dead.process.pid
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)  # no clean-up: its lease has to expire
        first.join(timeout=DEADLINE)
        assert isinstance(answers.pop(), httpx.HTTPError)
        bed.double.delay = 0.0
        second = bed.get(1, "takeover")
    finally:
        bed.double.delay = 0.0
        dead.restart()
    assert second.status_code == 200, second.text
    # The heir waited for the lease of the dead replica, then called the model itself.
    assert bed.calls("takeover") == 2
    wait_until("log line", lambda: cache_lines(heir, bed.models["takeover"]), timeout=DEADLINE)
    assert any("model_called=True" in line for line in cache_lines(heir, bed.models["takeover"]))
    assert bed.get(2, "takeover").content == second.content
    assert bed.calls("takeover") == 2


def test_with_redis_stopped_replicas_serve_alone_and_share_again_when_it_returns(
    bed: ReplicaBed,
) -> None:
    assert bed.all_redis_up() == [1.0] * 3
    bed.redis.stop()
    try:
        down = [bed.get(replica, "down") for replica in range(3)]
        assert [r.status_code for r in down] == [200] * 3, down[0].text
        assert len({r.content for r in down}) == 1
        # Each replica on its own: the model is called again as needed.
        assert bed.calls("down") == 3
        wait_until(
            "model_proxy_redis_up 0", lambda: bed.all_redis_up() == [0.0] * 3, timeout=DEADLINE
        )
        with bed.replicas[0].client() as client:
            status = client.get("/status", headers={"Accept": "application/json"}).json()
        assert status["redis"]["reachable"] is False
        assert bed.get(0, "down").status_code == 200  # its own cache
        assert bed.calls("down") == 3
    finally:
        bed.redis.start()
    wait_until("model_proxy_redis_up 1", lambda: bed.all_redis_up() == [1.0] * 3, timeout=DEADLINE)
    first = bed.get(0, "recovered")
    assert first.status_code == 200
    assert bed.get(2, "recovered").content == first.content
    assert bed.calls("recovered") == 1
    for replica in bed.replicas:
        lines = set(replica.log_text().splitlines())  # the file and the output have each
        # One warning for the outage, not one per request.
        assert sum("does not answer" in line for line in lines) == 1, lines
        assert any("answers again" in line for line in lines)
