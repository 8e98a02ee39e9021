"""models/error_summary.py: a model's error body as a bounded, consistent summary that
never carries bytes of the request body."""

from __future__ import annotations

import orjson
import pytest

from model_proxy.models.error_summary import MAX_ERROR_BODY, MAX_SUMMARY, summarize

JSON = "application/json"
WIRE = b"[[  0,  0, 17, 254, 1023,  0,  0, 12, 400,  0,  0,  0,  0,  0]]"
MULTIPART = (
    b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n"
    + b"\0" * 128
    + b"DICM\x02\x00\x01\x00OB\x00\x00Phantom^Synthetic 1.2.826.0.1.3680043.8.498.1"
)


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b'{"detail": "no lungs found"}', JSON, "no lungs found"),
        (b'{"message": "CUDA out of memory", "detail": "x"}', JSON, "CUDA out of memory"),
        (b'{"detail": {"message": "GPU busy"}}', JSON, "GPU busy"),
        (b"overloaded\n", "text/plain", "overloaded"),
        (b"", JSON, ""),
        (
            b"<html><body>Bad Gateway</body></html>",
            "text/html",
            "(37 bytes of text/html, not quoted)",
        ),
        (b'{"status": 3}', JSON, "(13 bytes of application/json, not quoted)"),
        (b"\x89PNG\r\n\x1a\n", "image/png", "(8 bytes of image/png, not quoted)"),
    ],
)
def test_what_is_quoted(body: bytes, content_type: str, expected: str) -> None:
    assert summarize(body, content_type, WIRE) == expected


def test_fastapi_validation_errors_never_quote_the_input() -> None:
    answer = {
        "detail": [
            {"type": "dict_type", "loc": ["body"], "msg": "Input should be a valid dictionary",
             "input": orjson.loads(WIRE)},
        ]
    }  # fmt: skip
    small = summarize(orjson.dumps(answer), JSON, WIRE)
    assert small == "body: Input should be a valid dictionary"
    # The same answer over the read limit (its input is a whole study) says the same.
    answer["detail"][0]["input"] = [list(range(1000))] * 40
    big = orjson.dumps(answer)
    assert len(big) > MAX_ERROR_BODY
    assert summarize(big[:MAX_ERROR_BODY], JSON, WIRE, truncated=True) == small


@pytest.mark.parametrize("sent", [WIRE, MULTIPART])
def test_an_echo_of_the_request_is_cut(sent: bytes) -> None:
    echoed = f"cannot read {sent.decode('latin-1')!r} at offset 3"
    summary = summarize(orjson.dumps({"detail": echoed}), JSON, sent)
    assert summary.startswith("cannot read") and summary.endswith("at offset 3")
    for secret in ("1023", "Phantom", "1.2.826", "DICM", "\\x00"):
        assert secret not in summary, summary


def test_plain_words_of_the_request_head_stay_readable() -> None:
    summary = summarize(b'{"detail": "expected application/json"}', JSON, MULTIPART)
    assert summary == "expected application/json"


def test_long_messages_are_bounded_and_on_one_line() -> None:
    summary = summarize(orjson.dumps({"message": "word\n" * 500}), JSON, b"")
    assert len(summary) == MAX_SUMMARY and summary.endswith("…") and "\n" not in summary


def test_a_huge_body_without_a_message_is_described() -> None:
    body = b"<html>" + b"x" * MAX_ERROR_BODY
    summary = summarize(body[:MAX_ERROR_BODY], "text/html", b"", truncated=True)
    assert summary == "(an error body over 64 KiB, not quoted)"
