"""The streamed body: order, framing, overlap and failures (its memory:
test_pipeline_memory.py).

The source is an in-memory fake (``fake_pacs.py``); the same pipeline runs
against a real Orthanc and a real model in the integration tests.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from body_pipeline import collect, instances, open_body, write
from fake_pacs import A1, A2, A3, B1, FILES, SERIES_A, SERIES_B, STUDY, FakeSource

from model_proxy.config import InputFormat, Level
from model_proxy.errors import NotFound, PacsError
from model_proxy.models.body import InstanceInput, Retrieval, SeriesInput, Token, plan_body
from model_proxy.models.encoder import encode_instance
from model_proxy.pacs.multipart import MultipartDecoder, boundary_from_content_type
from model_proxy.pacs.source import Target


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
    # Retrievals start in plan order, and run concurrently.
    assert source.entered == [Target(STUDY, SERIES_B), Target(STUDY, SERIES_A)]
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


@pytest.mark.anyio
async def test_not_found_is_raised_on_entering_before_any_byte() -> None:
    source = FakeSource()
    tokens = plan_body(Level.SERIES, Target(STUDY, "1.2.3.404"))
    with pytest.raises(NotFound) as info:
        async with open_body(tokens, source):
            pytest.fail("entering must raise")
    assert info.value.code == "not_on_pacs"
    assert source.entered == []


@pytest.mark.anyio
async def test_entering_opens_the_first_retrievals_up_to_the_pacs_concurrency() -> None:
    source = FakeSource(extra_series={"1.2.3.3": ["x"], "1.2.3.4": ["y"]})
    keys = ("one", "two", "three", "four")
    uids = (SERIES_A, SERIES_B, "1.2.3.3", "1.2.3.4")
    inputs = [SeriesInput(key, uid) for key, uid in zip(keys, uids, strict=True)]
    tokens = plan_body(Level.STUDY, Target(STUDY), inputs)
    async with open_body(tokens, source, pacs_concurrency=2):
        assert source.entered[:2] == [Target(STUDY, SERIES_A), Target(STUDY, SERIES_B)]
        assert source.most_open <= 2
    # Leaving before the body was sent closes every retrieval it opened.
    assert sorted(source.exited, key=str) == sorted(source.entered, key=str)
    assert source.open_now == 0


@pytest.mark.anyio
async def test_not_found_on_a_concurrent_retrieval_is_raised_before_the_model_is_called() -> None:
    source = FakeSource(missing=frozenset({Target(STUDY, SERIES_B)}))
    inputs = [SeriesInput("one", SERIES_A), SeriesInput("two", SERIES_B)]
    with pytest.raises(NotFound):
        async with open_body(plan_body(Level.STUDY, Target(STUDY), inputs), source):
            pytest.fail("entering must raise")
    assert source.open_now == 0


@pytest.mark.anyio
async def test_not_found_on_a_later_retrieval_propagates_from_chunks() -> None:
    source = FakeSource(missing=frozenset({Target(STUDY, SERIES_B)}))
    inputs = [SeriesInput("one", SERIES_A), SeriesInput("two", SERIES_B)]
    received: list[bytes] = []
    with pytest.raises(NotFound):
        tokens = plan_body(Level.STUDY, Target(STUDY), inputs)
        async with open_body(tokens, source, pacs_concurrency=1) as writer:
            async for chunk in writer.chunks():
                received.append(bytes(chunk))
    assert b"".join(received).startswith(b'{"one":{"data":[')
    assert source.exited == [Target(STUDY, SERIES_A)]


@pytest.mark.anyio
async def test_pacs_error_mid_stream_propagates_and_closes_the_retrieval() -> None:
    target = Target(STUDY, SERIES_A)
    gate = asyncio.Event()  # holds the retrieval after its first instance
    source = FakeSource(fail_after={target: 2}, gates={target: gate})
    received: list[bytes] = []
    with pytest.raises(PacsError, match="connection reset"):
        async with open_body(plan_body(Level.SERIES, target), source) as writer:
            gate.set()
            async for chunk in writer.chunks():
                received.append(bytes(chunk))
    sent = b"".join(received)
    assert sent == b"[" + encode_instance(FILES[A1]) + b"," + encode_instance(FILES[A2])
    assert writer.bytes_in == len(FILES[A1]) + len(FILES[A2])
    assert source.exited == [target]


@pytest.mark.anyio
async def test_several_instances_for_a_single_instance_retrieval_is_a_pacs_error() -> None:
    source = FakeSource()
    # A misbehaving PACS: asked for one instance, it answers with the whole series.
    tokens: list[Token] = [Retrieval(Target(STUDY, SERIES_A), as_array=False)]
    with pytest.raises(PacsError, match="several instances"):
        await write(tokens, source)


@pytest.mark.anyio
async def test_no_instance_for_a_single_instance_retrieval_is_not_found() -> None:
    source = FakeSource(extra_series={"1.2.3.9": []})
    tokens: list[Token] = [Retrieval(Target(STUDY, "1.2.3.9"), as_array=False)]
    with pytest.raises(NotFound, match="not found"):
        await write(tokens, source)


# --- dicom-multipart ------------------------------------------------------------------


def parse_parts(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    boundary = boundary_from_content_type(content_type)
    assert boundary is not None
    decoder = MultipartDecoder(boundary)
    parts = decoder.feed(body)
    decoder.close()
    return list(zip(decoder.part_headers, parts, strict=True))


@pytest.mark.anyio
async def test_multipart_series_is_one_part_per_instance_without_data_keys() -> None:
    source = FakeSource()
    tokens = plan_body(Level.SERIES, Target(STUDY, SERIES_A))
    async with open_body(tokens, source, input_format=InputFormat.DICOM_MULTIPART) as w:
        body = await collect(w)
    parts = parse_parts(body, w.content_type)
    assert [data for _, data in parts] == [FILES[A1], FILES[A2], FILES[A3]]
    for headers, data in parts:
        assert headers == {"content-type": "application/dicom", "content-length": str(len(data))}
    assert body.endswith(b"--\r\n")


@pytest.mark.anyio
async def test_multipart_parts_carry_their_data_keys() -> None:
    source = FakeSource()
    inputs = [
        SeriesInput("ct", SERIES_A, (InstanceInput("first", A1), InstanceInput("last", A3))),
        SeriesInput("other", SERIES_B),
    ]
    tokens = plan_body(Level.STUDY, Target(STUDY), inputs)
    async with open_body(tokens, source, input_format=InputFormat.DICOM_MULTIPART) as w:
        parts = parse_parts(await collect(w), w.content_type)
    keys = [(h.get("series-data-key"), h.get("instance-data-key"), data) for h, data in parts]
    assert keys == [
        ("ct", "first", FILES[A1]),
        ("ct", "last", FILES[A3]),
        ("other", None, FILES[B1]),
    ]


@pytest.mark.anyio
async def test_multipart_instance_level_and_empty_series() -> None:
    source = FakeSource(extra_series={"1.2.3.9": []})
    tokens = plan_body(Level.INSTANCE, Target(STUDY, SERIES_A, A2))
    async with open_body(tokens, source, input_format=InputFormat.DICOM_MULTIPART) as w:
        parts = parse_parts(await collect(w), w.content_type)
    assert [data for _, data in parts] == [FILES[A2]]
    tokens = plan_body(Level.SERIES, Target(STUDY, "1.2.3.9"))
    async with open_body(tokens, source, input_format=InputFormat.DICOM_MULTIPART) as w:
        body = await collect(w)
    assert body.startswith(b"--model-proxy-") and body.endswith(b"--\r\n")
