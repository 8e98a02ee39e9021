"""The audit writer: lines on disk, rotation by size, reopen after logrotate, and a
failing disk that costs records but never raises."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from model_proxy.audit import AuditWriter


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_become_json_lines(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path / "log" / "audit.jsonl")
    writer.start()
    for index in range(50):
        writer.write({"requestId": str(index), "status": 200})
    writer.close()
    records = lines(tmp_path / "log" / "audit.jsonl")
    assert [record["requestId"] for record in records] == [str(i) for i in range(50)]
    assert (tmp_path / "log" / "audit.jsonl").stat().st_mode & 0o777 == 0o600
    assert writer.lost == 0


def test_the_file_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(path, max_bytes=1000, backups=2)
    writer.start()
    for index in range(40):
        writer.write({"requestId": f"{index:04}", "padding": "x" * 80})
        if index % 5 == 4:
            writer.close()  # one batch at a time, so rotation happens between them
            writer.start()
    writer.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    newest = lines(path)[-1]
    assert newest["requestId"] == "0039"


def test_it_reopens_a_file_moved_away_by_logrotate(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(path)
    writer.start()
    writer.write({"n": 1})
    writer.close()
    path.rename(tmp_path / "audit.jsonl.old")
    writer.start()
    writer.write({"n": 2})
    writer.close()
    assert lines(path) == [{"n": 2}]
    assert lines(tmp_path / "audit.jsonl.old") == [{"n": 1}]


def test_reopen_picks_up_a_file_replaced_at_the_same_path(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(path)
    writer.start()
    writer.write({"n": 1})
    writer.close()
    path.unlink()
    path.write_text("")  # a new file at the same path: found by inode anyway
    writer.reopen()
    writer.start()
    writer.write({"n": 2})
    writer.close()
    assert lines(path) == [{"n": 2}]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_loses_records_logs_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = AuditWriter(Path("/dev/full"))
    writer.start()
    with caplog.at_level(logging.ERROR, logger="model_proxy.audit.writer"):
        for index in range(20):
            writer.write({"n": index})
        writer.close()
    assert writer.lost == 20
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors  # at most one line a minute
    assert "audit log /dev/full: cannot write (No space left on device)" in errors[0]


def test_a_full_queue_drops_records_instead_of_blocking(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path / "audit.jsonl", queue_size=3)  # not started: nothing drains
    for index in range(5):
        writer.write({"n": index})
    assert writer.lost == 2
    writer.start()
    writer.close()
    assert len(lines(tmp_path / "audit.jsonl")) == 3


def test_writes_resume_after_a_failure_without_a_broken_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"n": 0}\n{"half": ')  # what an interrupted write leaves behind
    writer = AuditWriter(path)
    writer._broken_line = True  # as set by a write that failed midway
    writer.start()
    writer.write({"n": 1})
    writer.close()
    assert path.read_text().splitlines()[-1] == '{"n":1}'
