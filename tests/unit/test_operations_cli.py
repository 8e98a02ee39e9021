"""The operations flags of ``serve`` refuse bad values with one line, and the JSON log
format writes one object per line with a request line's fields as keys."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest

from model_proxy.cli.commands import main
from model_proxy.cli.logs import JsonFormatter


def serve_argv(tmp_path: Path, *extra: str) -> list[str]:
    return ["serve", "--config-dir", str(tmp_path), "--host", "127.0.0.1", "--no-tls", *extra]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--log-format", "xml"], "--log-format must be one of text, json, got 'xml'"),
        (["--log-level", "loud"], "--log-level must be one of debug, info, warning, error"),
        (["--metrics-port", "http"], "port must be a number from 1 to 65535"),
        (["--port", "9102", "--metrics-port", "9102"], "--metrics-port must differ from --port"),
        (["--otlp-endpoint", "collector:4318"], "--otlp-endpoint must be an http(s):// URL"),
    ],
)
def test_bad_operations_flags_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert main(serve_argv(tmp_path, *flags)) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_a_taken_metrics_port_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(serve_argv(tmp_path, "--metrics-port", str(port))) == 2
    err = capsys.readouterr().err
    assert f"--metrics-port: cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err


def test_json_log_lines_carry_the_fields() -> None:
    record = logging.LogRecord(
        "model_proxy.requests", logging.INFO, __file__, 1, "%s", ("request_id=abc",), None
    )
    record.fields = {"request_id": "abc", "status": 200, "cache": None}
    entry = json.loads(JsonFormatter().format(record))
    assert entry["logger"] == "model_proxy.requests"
    assert entry["level"] == "INFO"
    assert entry["message"] == "request_id=abc"
    assert (entry["request_id"], entry["status"]) == ("abc", 200)
    assert "cache" not in entry  # absent rather than null
    assert entry["time"].endswith("Z")
