"""The result cache through the real proxy, a real Orthanc of its own (the tests change
its data) and the example model behind a call counter: hits, ETag/304, stored
compressed variants, invalidation by QIDO count and by strict UID lists, local-folder
modification times, coalescing, eviction under the size cap, damaged entries, restarts."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
import zstandard
from harness import (
    OrthancServer,
    ProxyFactory,
    ProxyProcess,
    TlsCert,
    new_uid,
    server_entry,
    start_orthanc,
    start_proxy,
)
from model_double import ModelDouble, serve_model_double
from pydicom.uid import generate_uid

from model_proxy.sample_data import SampleStudy, make_study, write_study

SERIES = ["/studies/series"]
IDENTITY = {"Accept-Encoding": "identity"}


@dataclass
class CacheSetup:
    proxy: ProxyProcess
    double: ModelDouble
    orthanc: OrthancServer
    study: SampleStudy
    folder: Path
    servers: dict[str, str]
    models: dict[str, str]  # test case -> the key of its own models.json entry

    def model(self, case: str) -> str:
        return self.models[case]

    def path(self, case: str, series_index: int = 0) -> str:
        series = self.study.series[series_index]
        return (
            f"/segmentations/{self.model(case)}/studies/{self.study.study_uid}"
            f"/series/{series.series_uid}"
        )

    def get(self, case: str, *, server: str = "count", series_index: int = 0,
            headers: dict[str, str] | None = None) -> httpx.Response:  # fmt: skip
        with self.proxy.client() as client:
            return client.get(
                self.path(case, series_index),
                params={"server": self.servers[server]},
                headers=headers or IDENTITY,
            )

    def calls(self, case: str) -> int:
        return self.double.case_calls(case)


CASES = [
    "hit", "etag", "variants", "gains", "count-swap", "strict-swap", "folder", "coalesce",
    "damaged", "no-disk", "restart",
]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tls_cert: TlsCert) -> Iterator[CacheSetup]:
    orthanc = start_orthanc(tmp_path_factory.mktemp("orthanc-cache"))
    study = make_study(series_slices=(6, 4), seed=7)
    orthanc.upload_many(part10 for _, _, part10 in study.iter_instances())
    folder = tmp_path_factory.mktemp("cache-folder")
    write_study(study, folder)
    try:
        with serve_model_double() as double:
            servers = {"count": new_uid(), "strict": new_uid(), "folder": new_uid()}
            servers_json = {
                servers["count"]: server_entry(orthanc),
                servers["strict"]: server_entry(orthanc, isDefault=False, cacheValidation="strict"),
                servers["folder"]: {"uri": folder.as_uri()},
            }
            models, models_json = double.case_models(CASES, SERIES)  # one per test
            proxy = start_proxy(
                tmp_path_factory.mktemp("proxy-cache"),
                servers_json,
                models_json,
                cert=tls_cert,
            )
            try:
                yield CacheSetup(proxy, double, orthanc, study, folder, servers, models)
            finally:
                proxy.stop()
    finally:
        orthanc.stop()


def cache_files(proxy: ProxyProcess, suffix: str = "") -> list[Path]:
    root = proxy.data_dir / "result-cache"
    return sorted(path for path in root.iterdir() if path.is_file() and path.name.endswith(suffix))


def new_instance_of(study: SampleStudy, series_index: int, number: int) -> tuple[str, bytes]:
    """A copy of the series' first instance under a new SOP Instance UID."""
    series = study.series[series_index]
    part10 = next(data for s, _, data in study.iter_instances() if s is series)
    dataset = pydicom.dcmread(io.BytesIO(part10))
    uid = generate_uid()
    dataset.SOPInstanceUID = uid
    dataset.file_meta.MediaStorageSOPInstanceUID = uid
    dataset.InstanceNumber = 100 + number
    out = io.BytesIO()
    dataset.save_as(out)
    return str(uid), out.getvalue()


def instances_in(response: httpx.Response, study: SampleStudy, series_index: int) -> set[str]:
    series = study.series[series_index]
    found = response.json()[study.study_uid][series.series_uid]
    return {key for key in found if key != "metadata"}


# --- hits, ETag, variants --------------------------------------------------------------


def test_a_repeated_request_is_answered_from_the_cache(setup: CacheSetup) -> None:
    first = setup.get("hit")
    second = setup.get("hit")
    assert first.status_code == second.status_code == 200, first.text
    assert second.content == first.content
    assert setup.calls("hit") == 1
    assert second.headers["content-length"] == str(len(first.content))
    assert "cache=miss" in setup.proxy.log_text()


def test_etag_and_if_none_match(setup: CacheSetup) -> None:
    first = setup.get("etag")
    etag = first.headers["etag"]
    assert etag.startswith('W/"') and first.headers["cache-control"] == "no-store"
    not_modified = setup.get("etag", headers=IDENTITY | {"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    for other in ['"something-else"', 'W/"0123"']:
        assert setup.get("etag", headers=IDENTITY | {"If-None-Match": other}).status_code == 200
    both = setup.get("etag", headers=IDENTITY | {"If-None-Match": f'"x", {etag}'})
    assert both.status_code == 304
    # The same result in another coding keeps its (weak) ETag.
    assert setup.get("etag", headers={"Accept-Encoding": "gzip"}).headers["etag"] == etag
    assert setup.calls("etag") == 1


def test_compressed_variants_are_made_once_and_stored(setup: CacheSetup) -> None:
    identity = setup.get("variants")
    before = set(cache_files(setup.proxy, ".zstd"))
    for _ in range(2):
        with setup.proxy.client() as client:
            request = client.build_request(
                "GET",
                setup.path("variants"),
                params={"server": setup.servers["count"]},
                headers={"Accept-Encoding": "zstd"},
            )
            response = client.send(request, stream=True)
            raw = b"".join(response.iter_raw())
            response.close()
        assert response.headers["content-encoding"] == "zstd"
        assert zstandard.ZstdDecompressor().decompressobj().decompress(raw) == identity.content
    new = set(cache_files(setup.proxy, ".zstd")) - before
    assert len(new) == 1  # the first zstd answer stored its variant, the second read it
    assert setup.calls("variants") == 1


# --- staying fresh ---------------------------------------------------------------------


def test_a_series_that_gains_an_instance_is_computed_again(setup: CacheSetup) -> None:
    first = setup.get("gains", series_index=1)
    assert setup.get("gains", series_index=1).content == first.content
    assert setup.calls("gains") == 1
    uid, part10 = new_instance_of(setup.study, 1, 1)
    setup.orthanc.upload(part10)
    second = setup.get("gains", series_index=1)
    assert second.status_code == 200
    assert setup.calls("gains") == 2
    assert uid in instances_in(second, setup.study, 1)
    assert uid not in instances_in(first, setup.study, 1)
    assert second.headers["etag"] != first.headers["etag"]


def swap_an_instance(setup: CacheSetup, number: int) -> str:
    """Replace one instance of series 1 by a new one: the count stays the same."""
    with setup.orthanc.client() as client:
        found = client.post(
            "/tools/find",
            json={"Level": "Instance", "Query": {"SeriesInstanceUID":
                  setup.study.series[1].series_uid}},
        ).json()  # fmt: skip
        client.delete(f"/instances/{found[0]}").raise_for_status()
    uid, part10 = new_instance_of(setup.study, 1, number)
    setup.orthanc.upload(part10)
    return uid


def test_count_validation_misses_a_swap_that_strict_validation_catches(
    setup: CacheSetup,
) -> None:
    setup.get("count-swap", series_index=1)
    setup.get("strict-swap", server="strict", series_index=1)
    uid = swap_an_instance(setup, 2)
    counted = setup.get("count-swap", series_index=1)
    strict = setup.get("strict-swap", server="strict", series_index=1)
    # The documented trade-off: the count is unchanged, so the cached result stands...
    assert setup.calls("count-swap") == 1
    assert uid not in instances_in(counted, setup.study, 1)
    # ...while the list of SOP Instance UIDs changed.
    assert setup.calls("strict-swap") == 2
    assert uid in instances_in(strict, setup.study, 1)


def test_local_folder_results_follow_file_modification_times(setup: CacheSetup) -> None:
    first = setup.get("folder", server="folder")
    assert setup.get("folder", server="folder").content == first.content
    assert setup.calls("folder") == 1
    some_file = next(path for path in setup.folder.rglob("*") if path.is_file())
    stat = some_file.stat()
    os.utime(some_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    again = setup.get("folder", server="folder")
    assert again.content == first.content
    assert setup.calls("folder") == 2


# --- coalescing ------------------------------------------------------------------------


def test_identical_requests_in_flight_share_one_model_call(setup: CacheSetup) -> None:
    setup.double.delay = 1.5

    async def fire(count: int) -> list[httpx.Response]:
        async with setup.proxy.async_client() as client:
            return await asyncio.gather(
                *(
                    client.get(
                        setup.path("coalesce"),
                        params={"server": setup.servers["count"]},
                        headers=IDENTITY if index % 2 else {"Accept-Encoding": "gzip"},
                    )
                    for index in range(count)
                )
            )

    try:
        responses = asyncio.run(fire(6))
    finally:
        setup.double.delay = 0.0
    assert [r.status_code for r in responses] == [200] * 6
    assert len({r.content for r in responses}) == 1  # httpx decoded the gzip ones
    assert setup.calls("coalesce") == 1


# --- damage and restarts ---------------------------------------------------------------


def test_a_damaged_cache_entry_is_ignored_and_replaced(setup: CacheSetup) -> None:
    before = set(cache_files(setup.proxy, ".identity"))
    first = setup.get("damaged")
    (entry,) = set(cache_files(setup.proxy, ".identity")) - before
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in the middle
    entry.write_bytes(bytes(data))
    second = setup.get("damaged")
    assert second.status_code == 200
    assert second.content == first.content
    assert setup.calls("damaged") == 2
    assert "dropping damaged entry" in setup.proxy.log_text()
    entry.write_bytes(b"garbage")
    assert setup.get("damaged").content == first.content
    assert setup.calls("damaged") == 3


def test_an_unwritable_cache_does_not_stop_inferences(setup: CacheSetup) -> None:
    spool_dir = setup.proxy.data_dir / "result-cache" / "tmp"
    spool_dir.rmdir()  # empty between requests; any spool or variant write now fails
    try:
        first = setup.get("no-disk", headers={"Accept-Encoding": "gzip"})
        second = setup.get("no-disk", headers={"Accept-Encoding": "gzip"})
    finally:
        spool_dir.mkdir()
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert setup.calls("no-disk") == 2
    assert "streaming it directly" in setup.proxy.log_text()


def test_the_cache_survives_a_restart_and_leftovers_are_cleared(setup: CacheSetup) -> None:
    first = setup.get("restart")
    leftover = setup.proxy.data_dir / "result-cache" / "tmp" / "half-written.identity.1234"
    leftover.write_bytes(b'{"partial": ')
    setup.proxy.restart()
    assert not leftover.exists()
    assert setup.get("restart").content == first.content
    assert setup.calls("restart") == 1


# --- the size cap ----------------------------------------------------------------------


def test_least_recently_used_results_are_evicted_under_the_cap(
    start_proxy: ProxyFactory, orthanc: OrthancServer, sample_study: SampleStudy
) -> None:
    with serve_model_double() as double:
        ids, models_json = double.case_models("abc", SERIES)
        # A 24-slice segmentation is about 1.6 MB: the cap holds two of them.
        proxy = start_proxy(
            {new_uid(): server_entry(orthanc)}, models_json, extra_args=["--cache-size", "3.5MB"]
        )
        series = sample_study.series[0]

        def get(case: str) -> httpx.Response:
            path = (
                f"/segmentations/{ids[case]}/studies/{sample_study.study_uid}"
                f"/series/{series.series_uid}"
            )
            with proxy.client() as client:
                response = client.get(path, headers=IDENTITY)
            assert response.status_code == 200, response.text
            return response

        get("a")
        get("b")
        get("a")  # a is now the most recently used
        get("c")  # evicts b
        assert [double.case_calls(case) for case in "abc"] == [1, 1, 1]
        get("a")
        get("c")
        assert [double.case_calls(case) for case in "abc"] == [1, 1, 1]
        get("b")
        assert double.case_calls("b") == 2
        total = sum(path.stat().st_size for path in cache_files(proxy))
        assert 0 < total <= 3_500_000


def test_cache_size_zero_turns_the_cache_off(
    start_proxy: ProxyFactory, orthanc: OrthancServer, sample_study: SampleStudy
) -> None:
    with serve_model_double() as double:
        model = new_uid()
        proxy = start_proxy(
            {new_uid(): server_entry(orthanc)},
            {model: double.entry("/example/segmentation", "segmentation", SERIES)},
            extra_args=["--cache-size", "0"],
        )
        series = sample_study.series[1]
        path = f"/segmentations/{model}/studies/{sample_study.study_uid}/series/{series.series_uid}"
        with proxy.client() as client:
            responses = [client.get(path, headers=IDENTITY) for _ in range(2)]
        assert [r.status_code for r in responses] == [200, 200]
        assert "etag" not in responses[0].headers
        assert double.calls["/example/segmentation"] == 2
