"""The model wire format: instance encoding, result unwrapping and the streamed body."""

from __future__ import annotations

import io
import json
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pydicom
import pydicom.data
import pytest

from model_proxy.config import Level
from model_proxy.errors import ModelError, NotFound, PacsError
from model_proxy.models.body import BodyWriter, InstanceInput, Retrieval, SeriesInput, plan_body
from model_proxy.models.encoder import encode_instance
from model_proxy.models.result import unwrap_result
from model_proxy.pacs.source import Target
from model_proxy.probe import ProbeResult


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- encode_instance ----------------------------------------------------------------


def wire_decode(encoded: bytes) -> bytes:
    """What a Model API does with one instance of the body (contract 5.1)."""
    instance = json.loads(encoded)
    assert isinstance(instance, str)
    return bytes(json.loads(instance))


def test_encode_small_example_exactly() -> None:
    assert encode_instance(bytes([0, 0, 1])) == b'"[0,0,1]"'


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\xff",
        bytes(range(256)),
        bytes(range(255, -1, -1)) * 4,
        random.Random(1).randbytes(100_000),
    ],
    ids=["empty", "zero", "255", "all-values", "all-values-reversed", "random-100k"],
)
def test_encode_round_trips(data: bytes) -> None:
    encoded = encode_instance(data)
    assert json.loads(json.loads(encoded)) == list(data)
    assert wire_decode(encoded) == data
    # Only digits, commas and brackets inside the quotes: nothing needed escaping.
    assert set(encoded[1:-1]) <= set(b"0123456789,[]")


def test_encoded_instance_embeds_in_a_json_body() -> None:
    data = random.Random(2).randbytes(500)
    body = b'{"series-one":{"data":[' + encode_instance(data) + b"]}}"
    parsed = json.loads(body)
    assert bytes(json.loads(parsed["series-one"]["data"][0])) == data


def test_real_dicom_file_decodes_as_the_reference_model_api_does() -> None:
    found = pydicom.data.get_testdata_file("CT_small.dcm")
    assert isinstance(found, str)
    path = Path(found)
    part10 = path.read_bytes()
    instance = json.loads(encode_instance(part10))
    decoded = pydicom.dcmread(io.BytesIO(bytes(json.loads(instance))))
    original = pydicom.dcmread(path)
    assert decoded.SOPInstanceUID == original.SOPInstanceUID
    assert decoded.pixel_array.shape == original.pixel_array.shape == (128, 128)
    assert np.array_equal(decoded.pixel_array, original.pixel_array)


# --- unwrap_result --------------------------------------------------------------------


def test_plain_json_object_passes_unchanged() -> None:
    body = b'{"1.2.3": {"mask": [1, 2]},  "x":1.50}'
    assert unwrap_result(body, "model x") == body


def test_plain_json_array_passes_unchanged() -> None:
    body = b'[{"a": 1}]\n'
    assert unwrap_result(body, "model x") == body


def test_double_encoded_object_is_unwrapped_once() -> None:
    inner = b'{"1.2.3":{"label":"lung","note":"\\"quoted\\" caf\xc3\xa9"},"n":[1,2.5]}'
    body = orjson.dumps(inner.decode())
    assert body.startswith(b'"')
    result = unwrap_result(body, "model x")
    assert result == inner
    assert orjson.loads(result)["1.2.3"]["note"] == '"quoted" café'


def test_triple_encoded_is_unwrapped_only_once() -> None:
    inner = orjson.dumps({"a": 1})
    twice = orjson.dumps(inner.decode())
    body = orjson.dumps(twice.decode())
    assert unwrap_result(body, "model x") == twice


def test_string_not_holding_json_passes_unchanged() -> None:
    for body in (b'"hello"', b'"{not json"', b'""'):
        assert unwrap_result(body, "model x") == body


@pytest.mark.parametrize("body", [b"<html>500</html>", b"{'a': 1}", b'{"a": 1', b"\xff\xfe"])
def test_body_that_is_not_json_is_a_model_error(body: bytes) -> None:
    with pytest.raises(ModelError, match="lung model") as info:
        unwrap_result(body, "lung model")
    assert "not JSON" in info.value.message
    assert info.value.code == "model_bad_response"
    assert info.value.status_code == 502


@pytest.mark.parametrize("body", [b"", b"  \r\n\t"])
def test_empty_body_is_a_model_error(body: bytes) -> None:
    with pytest.raises(ModelError, match=r"lung model.*empty") as info:
        unwrap_result(body, "lung model")
    assert info.value.code == "model_bad_response"


# --- plan_body and BodyWriter ---------------------------------------------------------

STUDY = "1.2.3"
SERIES_A = "1.2.3.1"
SERIES_B = "1.2.3.2"
A1, A2, A3 = "1.2.3.1.1", "1.2.3.1.2", "1.2.3.1.3"
B1 = "1.2.3.2.1"


def make_bytes(name: str) -> bytes:
    # Distinct content per instance, with every byte value, so mix-ups show.
    return name.encode() + bytes(range(256)) + name.encode()


FILES = {uid: make_bytes(uid) for uid in (A1, A2, A3, B1)}
SERIES = {SERIES_A: [A1, A2, A3], SERIES_B: [B1]}


class FakeSource:
    """A DicomSource over a dict; records every retrieval it is asked for."""

    label = "fake PACS"

    def __init__(
        self,
        *,
        missing: frozenset[Target] = frozenset(),
        fail_after: Mapping[Target, int] | None = None,
        extra_series: Mapping[str, list[str]] | None = None,
    ) -> None:
        self.series = {**SERIES, **(extra_series or {})}
        self.missing = missing
        self.fail_after = dict(fail_after or {})
        self.entered: list[Target] = []
        self.exited: list[Target] = []

    def _uids(self, target: Target) -> list[str]:
        if target.study != STUDY or target in self.missing:
            raise NotFound(f"{target.describe()} was not found", code="not_on_pacs")
        if target.series is None:
            return [uid for uids in self.series.values() for uid in uids]
        if target.series not in self.series:
            raise NotFound(f"{target.describe()} was not found", code="not_on_pacs")
        uids = self.series[target.series]
        if target.instance is None:
            return uids
        if target.instance not in uids:
            raise NotFound(f"{target.describe()} was not found", code="not_on_pacs")
        return [target.instance]

    @asynccontextmanager
    async def retrieve(self, target: Target) -> AsyncIterator[AsyncIterator[bytes]]:
        uids = self._uids(target)
        self.entered.append(target)
        try:
            yield self._iterate(target, uids)
        finally:
            self.exited.append(target)

    async def _iterate(self, target: Target, uids: list[str]) -> AsyncIterator[bytes]:
        for count, uid in enumerate(uids):
            if self.fail_after.get(target) == count:
                raise PacsError(f"{self.label}: connection reset")
            yield FILES.get(uid, uid.encode())

    async def probe(self) -> ProbeResult:
        return ProbeResult(True, 0.0, "fake")

    async def fingerprint(self, target: Target) -> str | None:
        return None

    async def aclose(self) -> None:
        return None


async def write(tokens: list[bytes | Retrieval], source: FakeSource) -> tuple[Any, BodyWriter]:
    async with BodyWriter(tokens, source) as writer:
        body = b"".join([chunk async for chunk in writer.chunks()])
    return json.loads(body), writer


def instances(strings: list[str]) -> list[bytes]:
    return [bytes(json.loads(s)) for s in strings]


@pytest.mark.anyio
async def test_instance_level_body_is_one_string() -> None:
    source = FakeSource()
    tokens = plan_body(Level.INSTANCE, Target(STUDY, SERIES_A, A2))
    body, writer = await write(tokens, source)
    assert isinstance(body, str)
    assert bytes(json.loads(body)) == FILES[A2]
    assert (writer.instances_sent, writer.bytes_in) == (1, len(FILES[A2]))
    assert source.entered == source.exited == [Target(STUDY, SERIES_A, A2)]


@pytest.mark.anyio
async def test_series_level_body_is_an_array() -> None:
    source = FakeSource()
    body, writer = await write(plan_body(Level.SERIES, Target(STUDY, SERIES_A)), source)
    assert isinstance(body, list)
    assert instances(body) == [FILES[A1], FILES[A2], FILES[A3]]
    assert writer.instances_sent == 3
    assert writer.bytes_in == sum(len(FILES[uid]) for uid in (A1, A2, A3))


@pytest.mark.anyio
async def test_study_level_body_is_a_flat_array_of_all_series() -> None:
    source = FakeSource()
    body, writer = await write(plan_body(Level.STUDY, Target(STUDY)), source)
    assert instances(body) == [FILES[A1], FILES[A2], FILES[A3], FILES[B1]]
    assert writer.instances_sent == 4
    assert source.entered == [Target(STUDY)]


@pytest.mark.anyio
async def test_empty_series_is_an_empty_array() -> None:
    source = FakeSource(extra_series={"1.2.3.9": []})
    body, writer = await write(plan_body(Level.SERIES, Target(STUDY, "1.2.3.9")), source)
    assert body == []
    assert (writer.instances_sent, writer.bytes_in) == (0, 0)


@pytest.mark.anyio
async def test_study_with_series_inputs() -> None:
    source = FakeSource()
    inputs = [SeriesInput("series-two", SERIES_B), SeriesInput("series-one", SERIES_A)]
    body, writer = await write(plan_body(Level.STUDY, Target(STUDY), inputs), source)
    assert list(body) == ["series-two", "series-one"]
    assert list(body["series-two"]) == ["data"]
    assert instances(body["series-two"]["data"]) == [FILES[B1]]
    assert instances(body["series-one"]["data"]) == [FILES[A1], FILES[A2], FILES[A3]]
    assert writer.instances_sent == 4
    assert source.entered == [Target(STUDY, SERIES_B), Target(STUDY, SERIES_A)]
    # The first retrieval is held open by the writer until it exits, hence any order.
    assert sorted(source.exited, key=str) == sorted(source.entered, key=str)


@pytest.mark.anyio
async def test_study_with_nested_instance_inputs() -> None:
    source = FakeSource()
    inputs = [
        SeriesInput("ct", SERIES_A, (InstanceInput("first", A1), InstanceInput("last", A3))),
        SeriesInput("other", SERIES_B),
    ]
    body, writer = await write(plan_body(Level.STUDY, Target(STUDY), inputs), source)
    assert set(body) == {"ct", "other"}
    nested = body["ct"]["data"]
    assert set(nested) == {"first", "last"}
    assert bytes(json.loads(nested["first"]["data"])) == FILES[A1]
    assert bytes(json.loads(nested["last"]["data"])) == FILES[A3]
    assert instances(body["other"]["data"]) == [FILES[B1]]
    assert writer.instances_sent == 3
    assert source.entered == [
        Target(STUDY, SERIES_A, A1),
        Target(STUDY, SERIES_A, A3),
        Target(STUDY, SERIES_B),
    ]


@pytest.mark.anyio
async def test_series_with_instance_inputs() -> None:
    source = FakeSource()
    inputs = [InstanceInput("moving", A3), InstanceInput("fixed", A1)]
    body, writer = await write(plan_body(Level.SERIES, Target(STUDY, SERIES_A), inputs), source)
    assert body == {
        "moving": {"data": json.loads(encode_instance(FILES[A3]))},
        "fixed": {"data": json.loads(encode_instance(FILES[A1]))},
    }
    assert writer.instances_sent == 2
    assert writer.bytes_in == len(FILES[A1]) + len(FILES[A3])


def test_plan_has_one_retrieval_per_input() -> None:
    inputs = [InstanceInput("a", A1)]
    tokens = plan_body(Level.SERIES, Target(STUDY, SERIES_A), inputs)
    retrievals = [t for t in tokens if isinstance(t, Retrieval)]
    assert retrievals == [Retrieval(Target(STUDY, SERIES_A, A1), as_array=False)]
    text = b"".join(t if isinstance(t, bytes) else b'"X"' for t in tokens)
    assert json.loads(text) == {"a": {"data": "X"}}


@pytest.mark.anyio
async def test_not_found_is_raised_on_entering_before_any_byte() -> None:
    source = FakeSource()
    tokens = plan_body(Level.SERIES, Target(STUDY, "1.2.3.404"))
    writer = BodyWriter(tokens, source)
    with pytest.raises(NotFound) as info:
        await writer.__aenter__()
    assert info.value.code == "not_on_pacs"
    assert source.entered == []


@pytest.mark.anyio
async def test_entering_opens_only_the_first_retrieval() -> None:
    source = FakeSource()
    inputs = [SeriesInput("one", SERIES_A), SeriesInput("two", SERIES_B)]
    async with BodyWriter(plan_body(Level.STUDY, Target(STUDY), inputs), source):
        assert source.entered == [Target(STUDY, SERIES_A)]
    assert source.exited == [Target(STUDY, SERIES_A)]


@pytest.mark.anyio
async def test_not_found_on_a_later_retrieval_propagates_from_chunks() -> None:
    source = FakeSource(missing=frozenset({Target(STUDY, SERIES_B)}))
    inputs = [SeriesInput("one", SERIES_A), SeriesInput("two", SERIES_B)]
    received: list[bytes] = []
    with pytest.raises(NotFound):
        async with BodyWriter(plan_body(Level.STUDY, Target(STUDY), inputs), source) as writer:
            async for chunk in writer.chunks():
                received.append(chunk)
    assert b"".join(received).startswith(b'{"one":{"data":[')
    assert source.exited == [Target(STUDY, SERIES_A)]


@pytest.mark.anyio
async def test_pacs_error_mid_stream_propagates_and_closes_the_retrieval() -> None:
    target = Target(STUDY, SERIES_A)
    source = FakeSource(fail_after={target: 2})
    received: list[bytes] = []
    with pytest.raises(PacsError, match="connection reset"):
        async with BodyWriter(plan_body(Level.SERIES, target), source) as writer:
            async for chunk in writer.chunks():
                received.append(chunk)
    assert received == [b"[" + encode_instance(FILES[A1]), b"," + encode_instance(FILES[A2])]
    assert writer.bytes_in == len(FILES[A1]) + len(FILES[A2])
    assert source.exited == [target]


@pytest.mark.anyio
async def test_several_instances_for_a_single_instance_retrieval_is_a_pacs_error() -> None:
    source = FakeSource()
    # A misbehaving PACS: asked for one instance, it answers with the whole series.
    tokens: list[bytes | Retrieval] = [Retrieval(Target(STUDY, SERIES_A), as_array=False)]
    with pytest.raises(PacsError, match="several instances"):
        await write(tokens, source)
