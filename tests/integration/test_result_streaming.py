"""Results streamed back through the real proxy: byte-exact for plain and double-encoded
answers, compressed when the viewer accepts it, and a connection aborted (never a
truncated 200) when the model's answer breaks after the first bytes went out."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass

import brotli
import httpx
import orjson
import pytest
import zstandard
from deployment import expect_error
from harness import OrthancServer, ProxyProcess, TlsCert, new_uid, server_entry, start_proxy
from model_double import ModelDouble, serve_model_double

from model_proxy.models.result_stream import FIRST_WINDOW_BYTES
from model_proxy.sample_data import SampleStudy

SERIES = ["/studies/series"]


@dataclass
class Setup:
    proxy: ProxyProcess
    double: ModelDouble
    study: SampleStudy
    models: dict[str, str]

    def path(self, model: str, family: str = "segmentations") -> str:
        series = self.study.series[0]
        return (
            f"/{family}/{self.models[model]}/studies/{self.study.study_uid}"
            f"/series/{series.series_uid}"
        )

    def raw_get(self, model: str, accept_encoding: str) -> httpx.Response:
        """The answer with its body exactly as sent, not decoded by httpx."""
        with self.proxy.client() as client:
            request = client.build_request(
                "GET", self.path(model), headers={"Accept-Encoding": accept_encoding}
            )
            response = client.send(request, stream=True)
            try:
                response._content = b"".join(response.iter_raw())
            finally:
                response.close()
            return response


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
    orthanc: OrthancServer,
    sample_study: SampleStudy,
    tls_cert: TlsCert,
) -> Iterator[Setup]:
    with serve_model_double() as double:
        models = {name: new_uid() for name in ("seg", "legacy", "cut", "legacy-cut")}
        models |= {name: new_uid() for name in ("unterminated", "not-json")}
        models_json = {
            models["seg"]: double.entry("/example/segmentation", "segmentation", SERIES),
            models["legacy"]: double.entry("/example/legacy/segmentation", "segmentation", SERIES),
        }
        for name in ("cut", "legacy-cut", "unterminated", "not-json"):
            models_json[models[name]] = double.entry(f"/{name}", "segmentation", SERIES)
        proxy = start_proxy(
            tmp_path_factory.mktemp("proxy"),
            {new_uid(): server_entry(orthanc)},
            models_json,
            cert=tls_cert,
        )
        try:
            yield Setup(proxy, double, sample_study, models)
        finally:
            proxy.stop()


def wire_body(study: SampleStudy) -> bytes:
    """The series as the proxy sends it (contract 5.1), built independently."""
    main = study.series[0]
    return orjson.dumps(
        [
            orjson.dumps(list(part10)).decode()
            for series, _, part10 in study.iter_instances()
            if series is main
        ]
    )


def test_results_are_byte_exact_for_plain_and_double_encoded_answers(setup: Setup) -> None:
    with httpx.Client(trust_env=False, timeout=120) as client:
        direct = client.post(
            f"{setup.double.url}/example/segmentation",
            content=wire_body(setup.study),
            headers={"Content-Type": "application/json"},
        )
    assert direct.status_code == 200, direct.text
    # Past the first window, so the answer really streams.
    assert len(direct.content) > FIRST_WINDOW_BYTES
    plain = setup.raw_get("seg", "identity")
    legacy = setup.raw_get("legacy", "identity")
    assert plain.status_code == legacy.status_code == 200
    assert "content-encoding" not in plain.headers
    assert plain.headers["content-type"] == "application/json"
    assert plain.content == direct.content
    assert legacy.content == direct.content


def decode(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "br":
        out: bytes = brotli.decompress(body)
        return out
    return zstandard.ZstdDecompressor().decompressobj().decompress(body)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("zstd;q=0.2, br;q=0.5, gzip;q=0.1", "br"),
        ("gzip;q=0, *;q=0.3", "zstd"),
        ("deflate", None),
        ("*;q=0", None),
    ],
)
def test_compression_is_negotiated_and_decodes_to_the_same_bytes(
    setup: Setup, accept: str, expected: str | None
) -> None:
    identity = setup.raw_get("legacy", "identity")
    response = setup.raw_get("legacy", accept)
    assert response.status_code == 200
    assert "Accept-Encoding" in response.headers["vary"].split(", ")
    assert response.headers.get("content-encoding") == expected
    if expected is None:
        assert response.content == identity.content
        return
    assert decode(response.content, expected) == identity.content
    # 0/1 masks: the compressed answer is a small fraction of the JSON.
    assert len(response.content) * 20 < len(identity.content)


@pytest.mark.parametrize("model", ["cut", "legacy-cut", "unterminated"])
@pytest.mark.parametrize("accept", ["identity", "gzip"])
def test_a_result_broken_after_the_start_aborts_the_connection(
    setup: Setup, model: str, accept: str
) -> None:
    with (
        setup.proxy.client() as client,
        client.stream("GET", setup.path(model), headers={"Accept-Encoding": accept}) as response,
    ):
        assert response.status_code == 200  # the first window was fine
        with pytest.raises(httpx.RemoteProtocolError):
            for _ in response.iter_raw():
                pass
    log = setup.proxy.log_text()
    assert "connection aborted after" in log
    assert "Traceback" not in log


def test_an_answer_that_is_not_json_is_a_502_before_any_byte(setup: Setup) -> None:
    with setup.proxy.client() as client:
        response = client.get(setup.path("not-json"))
    message = expect_error(response, 502, "model_bad_response")
    assert "not JSON" in message and "model " in message
