"""The disk store of the result cache and the flights that coalesce identical requests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from model_proxy.cache.flights import Flights
from model_proxy.cache.store import TRAILER_BYTES, CorruptEntry, ResultStore, read_verified
from model_proxy.errors import ErrorCode, ModelError


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def put(store: ResultStore, key: str, data: bytes, coding: str = "identity") -> bool:
    spool = store.spool(key, coding)
    spool.write(data[:3])
    spool.write(data[3:])
    return store.commit(spool)


def test_commit_lookup_and_verified_read(tmp_path: Path) -> None:
    store = ResultStore(tmp_path, 10_000)
    store.open()
    assert store.lookup("k", "identity") is None
    assert put(store, "k", b'{"a": [0, 1]}')
    found = store.lookup("k", "identity")
    assert found is not None
    assert found[1] == len(b'{"a": [0, 1]}')
    assert read_verified(found[0]) == b'{"a": [0, 1]}'
    assert store.lookup("k", "zstd") is None
    assert not list((tmp_path / "tmp").iterdir())


@pytest.mark.parametrize(
    "damage",
    [lambda d: d[:-1], lambda d: b"x" + d[1:], lambda d: d[:5] + d[6:], lambda d: b""],
    ids=["cut", "flipped", "shortened", "empty"],
)
def test_damaged_files_are_detected(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    store = ResultStore(tmp_path, 10_000)
    store.open()
    put(store, "k", b'{"result": "' + b"x" * 100 + b'"}')
    path = store.path("k", "identity")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CorruptEntry):
        read_verified(path)


def test_least_recently_used_entries_go_first(tmp_path: Path) -> None:
    size = 1000
    store = ResultStore(tmp_path, 3 * (size + TRAILER_BYTES))
    store.open()
    for key in "abc":
        put(store, key, b"0" * size)
    store.lookup("a", "identity")
    put(store, "d", b"0" * size)
    assert store.lookup("b", "identity") is None
    assert all(store.lookup(key, "identity") for key in "acd")
    assert store.total_bytes <= store.max_bytes
    assert not store.path("b", "identity").exists()
    # An entry bigger than the whole cache is not kept, and evicts nothing.
    assert not put(store, "huge", b"0" * (4 * size))
    assert all(store.lookup(key, "identity") for key in "acd")


def test_reopening_finds_entries_and_clears_leftovers(tmp_path: Path) -> None:
    store = ResultStore(tmp_path, 10_000)
    store.open()
    put(store, "k", b"[1]")
    put(store, "k", b"zstd bytes", coding="zstd")
    (tmp_path / "tmp" / "k.identity.dead").write_bytes(b"[1")
    (tmp_path / "notes.txt").write_text("not an entry")
    again = ResultStore(tmp_path, 10_000)
    again.open()
    assert again.lookup("k", "identity") is not None
    assert again.lookup("k", "zstd") is not None
    assert again.total_bytes == store.total_bytes
    assert not list((tmp_path / "tmp").iterdir())


async def collect(flights: Flights, key: str, producer: Callable[..., Awaitable[None]]) -> bytes:
    flight = flights.join(key, producer)
    try:
        return b"".join([chunk async for chunk in flight.reader()])
    finally:
        flights.leave(flight)


@pytest.mark.anyio
async def test_readers_of_one_flight_share_one_producer(tmp_path: Path) -> None:
    store = ResultStore(tmp_path, 1 << 24)
    store.open()
    flights = Flights(store)
    runs = 0

    async def producer(append: Callable[[bytes], Awaitable[None]]) -> None:
        nonlocal runs
        runs += 1
        for index in range(20):
            await append(b"%d," % index + b"0" * 300_000)  # big appends go to a thread
            await asyncio.sleep(0.001)

    results = await asyncio.gather(*(collect(flights, "k", producer) for _ in range(4)))
    assert runs == 1
    assert len(set(results)) == 1 and len(results[0]) > 6_000_000
    assert flights.active == 0
    found = store.lookup("k", "identity")
    assert found is not None and read_verified(found[0]) == results[0]


@pytest.mark.anyio
async def test_a_failure_reaches_every_reader_and_nothing_is_stored(tmp_path: Path) -> None:
    store = ResultStore(tmp_path, 1 << 20)
    store.open()
    flights = Flights(store)

    async def producer(append: Callable[[bytes], Awaitable[None]]) -> None:
        await asyncio.sleep(0.01)
        raise ModelError("model m: answered 500", code=ErrorCode.MODEL_FAILED)

    outcomes = await asyncio.gather(
        *(collect(flights, "k", producer) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(outcome, ModelError) for outcome in outcomes)
    assert store.lookup("k", "identity") is None
    assert not list((tmp_path / "tmp").iterdir())


@pytest.mark.anyio
async def test_the_model_call_is_cancelled_when_every_reader_left(tmp_path: Path) -> None:
    store = ResultStore(tmp_path, 1 << 20)
    store.open()
    flights = Flights(store)
    cancelled = asyncio.Event()

    async def producer(append: Callable[[bytes], Awaitable[None]]) -> None:
        await append(b"[")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    flight = flights.join("k", producer)
    reader = flight.reader()
    assert await anext(reader) == b"["
    await reader.aclose()
    flights.leave(flight)
    await asyncio.wait_for(cancelled.wait(), 5)
    await asyncio.sleep(0)
    assert flights.active == 0
    assert store.lookup("k", "identity") is None
