"""The serve flags of the memory budget and the concurrency limits; one clear line for
a bad value of these and of the other limits (jobs, prefetch, Redis results)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_proxy.cli import commands as cli
from model_proxy.cli.options import EXIT_USAGE, parse_memory_budget

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("512MiB", 512 * MiB),
        ("300MB", 300_000_000),
        ("2GiB", 2048 * MiB),
        ("1.5GiB", 1536 * MiB),
        (" 8MiB ", 8 * MiB),
    ],
)
def test_memory_budget_takes_a_size(value: str, expected: int) -> None:
    assert parse_memory_budget(value) == expected


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--memory-budget", "lots"], "--memory-budget must be a size like 0, 500MB or 2GiB"),
        (["--memory-budget", "0"], "--memory-budget must be at least 1MiB"),
        (["--memory-budget", "512"], "--memory-budget must be at least 1MiB"),
        (["--max-concurrent-inferences", "0"], "--max-concurrent-inferences must be a whole"),
        (["--pacs-concurrency", "two"], "--pacs-concurrency must be a whole number"),
        (["--max-running-jobs", "0"], "--max-running-jobs must be a whole number from 1"),
        (["--job-retention", "forever"], "--job-retention must be a positive duration"),
        (["--watch-interval", "-1"], "--watch-interval must be zero or a positive number"),
        (["--watch-lookback", "a week"], "--watch-lookback must be a whole number from 0"),
        # The results shared on Redis (docs/replicas.md, "Results").
        (["--redis-max-entry", "big"], "--redis-max-entry must be a size like 0, 500MB or 2GiB"),
        (["--redis-result-ttl", "0"], "--redis-result-ttl must be a positive duration"),
        (["--redis-lock-lease", "0"], "--redis-lock-lease must be a positive number of seconds"),
        (["--redis-check-interval", "-1"], "--redis-check-interval must be a positive number"),
    ],
)
def test_bad_limits_are_one_clear_line_and_exit_2(
    args: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", *args]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert fragment in err
    assert "Traceback" not in err


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_PROXY_MEMORY_BUDGET", "1GiB")
    monkeypatch.setenv("MODEL_PROXY_MAX_CONCURRENT_INFERENCES", "7")
    monkeypatch.setenv("MODEL_PROXY_PACS_CONCURRENCY", "3")
    args = cli.build_parser().parse_args(["serve"])
    assert parse_memory_budget(args.memory_budget) == 1024 * MiB
    assert (args.max_concurrent_inferences, args.pacs_concurrency) == ("7", "3")


def test_a_damaged_job_store_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # serve would hand the process's logging to its own handlers; not in pytest's process.
    monkeypatch.setattr("model_proxy.cli.logs.setup_logging", lambda log_dir, **options: None)
    (tmp_path / "jobs.sqlite").write_bytes(b"not a database, " * 512)
    args = ["serve", "--no-tls", "--data-dir", str(tmp_path), "--log-dir", str(tmp_path / "log")]
    assert cli.main(args) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"cannot open the job store {tmp_path / 'jobs.sqlite'}" in err
    assert "move it aside" in err and "Traceback" not in err
