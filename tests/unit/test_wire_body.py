"""The model wire format: instance encoding, result unwrapping and the body plan."""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pydicom
import pydicom.data
import pytest
from fake_pacs import A1, A3, SERIES_A, SERIES_B, STUDY

from model_proxy.config import Level
from model_proxy.errors import ModelError
from model_proxy.models import encoder
from model_proxy.models.body import InstanceInput, Retrieval, SeriesInput, plan_body
from model_proxy.models.encoder import (
    OPENING,
    SLICE_BYTES,
    encode_instance,
    encode_range,
    encode_range_into,
    max_slice_text_size,
    slice_ranges,
)
from model_proxy.models.result import unwrap_result
from model_proxy.pacs.source import Target

# --- encode_instance ----------------------------------------------------------------


def wire_decode(encoded: bytes) -> bytes:
    """What a Model API does with one instance of the body (contract 5.1)."""
    instance = json.loads(encoded)
    assert isinstance(instance, str)
    return bytes(json.loads(instance))


def test_encode_small_example_exactly() -> None:
    # Compact: what json.dumps(..., separators=(",", ":")) and orjson write.
    assert encode_instance(bytes([0, 0, 1])) == b'"[0,0,1]"'
    assert encode_instance(bytes([9, 10, 99, 100, 255])) == b'"[9,10,99,100,255]"'
    assert encode_instance(b"") == b'"[]"'


def random_inputs() -> list[bytes]:
    rng = random.Random(7)
    # Lengths around the pair and slice boundaries of the encoder, odd and even.
    lengths = [0, 1, 2, 3, 4, 5, 7, 8, 9, 255, 256, 257, 1023, 4096, 65535, 65536, 65537]
    return [rng.randbytes(length) for length in lengths] + [
        bytes(range(256)),
        bytes(range(255, -1, -1)) * 4,
        bytes([0]) * 1000,
        bytes([255]) * 1001,
    ]


@pytest.mark.parametrize("data", random_inputs(), ids=lambda d: f"{len(d)}-bytes")
def test_encode_round_trips(data: bytes) -> None:
    encoded = encode_instance(data)
    assert json.loads(json.loads(encoded)) == list(data)
    assert wire_decode(encoded) == data
    # Only digits, commas and brackets inside the quotes: nothing needed escaping.
    assert set(encoded[1:-1]) <= set(b"0123456789,[]")
    # The example model's fast decoder reads it too.
    assert bytes(orjson.loads(orjson.loads(encoded))) == data


@pytest.mark.parametrize("data", random_inputs(), ids=lambda d: f"{len(d)}-bytes")
def test_encode_is_exactly_the_compact_reference(data: bytes) -> None:
    reference = json.dumps(json.dumps(list(data), separators=(",", ":"))).encode()
    assert encode_instance(data) == reference


def writers() -> list[object]:
    """The compiled writer (when built) and the orjson fallback: both must agree."""
    found: list[object] = [pytest.param(encoder._write_values_with_orjson, id="orjson")]
    try:
        from model_proxy.models._compact import write_values
    except ImportError:
        found.append(pytest.param(None, id="compiled", marks=pytest.mark.skip("not built")))
    else:
        found.append(pytest.param(write_values, id="compiled"))
    return found


@pytest.mark.parametrize("write", writers())
@pytest.mark.parametrize("data", random_inputs(), ids=lambda d: f"{len(d)}-bytes")
def test_each_writer_gives_the_compact_text_and_stays_in_bounds(
    write: Callable[[bytes | memoryview, bytearray], int], data: bytes
) -> None:
    guard = b"\xa5" * 16
    out = bytearray(4 * len(data)) + guard
    length = write(memoryview(data), out)
    expected = b"".join(b"%d," % value for value in data)
    assert bytes(out[:length]) == expected
    assert out[4 * len(data) :] == guard  # nothing written past 4 bytes per input byte


def test_the_compiled_writer_is_built_in_ci() -> None:
    # CI installs a C compiler (.ci/run): there the fallback must not hide a failed build.
    if not os.environ.get("CI"):
        pytest.skip("only CI promises a C compiler")
    assert encoder.IMPLEMENTATION == "compiled"


def test_a_short_output_buffer_is_refused() -> None:
    data = bytes(10)
    with pytest.raises(ValueError, match="the range needs 41"):
        encode_range_into(data, 0, 10, bytearray(40))
    assert encode_range_into(data, 0, 10, bytearray(max_slice_text_size(10, 0, 10))) == 21


def test_slices_joined_are_the_whole_instance() -> None:
    data = random.Random(3).randbytes(2 * SLICE_BYTES + 3)
    ranges = slice_ranges(len(data))
    assert ranges == [
        (0, SLICE_BYTES),
        (SLICE_BYTES, 2 * SLICE_BYTES),
        (2 * SLICE_BYTES, 2 * SLICE_BYTES + 3),
    ]
    text = OPENING + b"".join(encode_range(data, start, stop) for start, stop in ranges)
    assert text == encode_instance(data)
    assert wire_decode(text) == data


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 100])
def test_ranges_of_any_size_concatenate(cut: int) -> None:
    data = random.Random(cut).randbytes(301)
    pieces = [encode_range(data, start, min(start + cut, 301)) for start in range(0, 301, cut)]
    assert OPENING + b"".join(pieces) == encode_instance(data)


def test_encode_accepts_a_memoryview() -> None:
    data = bytes(range(10))
    assert encode_instance(memoryview(data)) == encode_instance(data)


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


# --- plan_body -------------------------------------------------------------------------


def test_plan_has_one_retrieval_per_input() -> None:
    inputs = [InstanceInput("a", A1)]
    tokens = plan_body(Level.SERIES, Target(STUDY, SERIES_A), inputs)
    retrievals = [t for t in tokens if isinstance(t, Retrieval)]
    assert retrievals == [Retrieval(Target(STUDY, SERIES_A, A1), False, instance_key="a")]
    text = b"".join(t if isinstance(t, bytes) else b'"X"' for t in tokens)
    assert json.loads(text) == {"a": {"data": "X"}}


def test_plan_names_the_data_key_of_each_retrieval() -> None:
    inputs = [
        SeriesInput("ct", SERIES_A, (InstanceInput("first", A1), InstanceInput("last", A3))),
        SeriesInput("other", SERIES_B),
    ]
    tokens = plan_body(Level.STUDY, Target(STUDY), inputs)
    keys = [(t.series_key, t.instance_key, t.as_array) for t in tokens if isinstance(t, Retrieval)]
    assert keys == [("ct", "first", False), ("ct", "last", False), ("other", None, True)]


def test_plan_without_inputs_has_no_data_key() -> None:
    tokens = plan_body(Level.STUDY, Target(STUDY))
    # A whole study leaves out its SEG / SR (docs/dicom-outputs.md).
    assert tokens == [Retrieval(Target(STUDY), as_array=True, leave_out_results=True)]
