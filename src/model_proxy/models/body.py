"""The request body a model receives, as a stream (compat-contract sections 5.2, 5.3).

The body is planned first as a flat list of tokens: literal JSON text, and
retrievals whose instances are written as an array or as a single string. The
plan for a series with data filters ``[{"dataKey": "a", "uuid": "1.2"}]`` is::

    b'{"a":{"data":'  Retrieval(instance 1.2, single)  b'}}'

Writing the plan then streams instances from the source through the encoder
as they arrive; nothing holds more than one instance.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

import orjson

from model_proxy.config import Level
from model_proxy.errors import PacsError
from model_proxy.models.encoder import encode_instance
from model_proxy.pacs.source import DicomSource, Target


@dataclass(frozen=True)
class InstanceInput:
    """An instance chosen for a named input of the model (a nested data filter)."""

    data_key: str
    sop_uid: str


@dataclass(frozen=True)
class SeriesInput:
    """A series chosen for a named input; with ``instances``, only those of it."""

    data_key: str
    series_uid: str
    instances: tuple[InstanceInput, ...] = ()


@dataclass(frozen=True)
class Retrieval:
    target: Target
    as_array: bool


Token = bytes | Retrieval


def plan_body(
    level: Level,
    target: Target,
    inputs: Sequence[SeriesInput | InstanceInput] = (),
) -> list[Token]:
    """Tokens for the body of one inference request.

    Without inputs the body is the level's plain shape: one instance string, or
    an array of them. ``inputs`` are SeriesInput at study level and
    InstanceInput at series level.
    """
    tokens: list[Token] = []
    if not inputs:
        tokens.append(Retrieval(target, as_array=level is not Level.INSTANCE))
        return tokens
    tokens.append(b"{")
    for index, item in enumerate(inputs):
        if index:
            tokens.append(b",")
        tokens.append(orjson.dumps(item.data_key) + b':{"data":')
        if isinstance(item, InstanceInput):
            tokens.append(Retrieval(Target(target.study, target.series, item.sop_uid), False))
        elif item.instances:
            tokens.append(b"{")
            for inner_index, instance in enumerate(item.instances):
                if inner_index:
                    tokens.append(b",")
                tokens.append(orjson.dumps(instance.data_key) + b':{"data":')
                tokens.append(
                    Retrieval(Target(target.study, item.series_uid, instance.sop_uid), False)
                )
                tokens.append(b"}")
            tokens.append(b"}")
        else:
            tokens.append(Retrieval(Target(target.study, item.series_uid), True))
        tokens.append(b"}")
    tokens.append(b"}")
    return tokens


class BodyWriter:
    """Streams a planned body from a source; use as ``async with`` around the POST.

    Entering it opens the first retrieval, so that a study the PACS does not
    have is reported before the model is called.
    """

    def __init__(self, tokens: list[Token], source: DicomSource) -> None:
        self._tokens = tokens
        self._source = source
        self._stack = AsyncExitStack()
        self._first: AsyncIterator[bytes] | None = None
        self.instances_sent = 0
        self.bytes_in = 0

    async def __aenter__(self) -> BodyWriter:
        first = next((t for t in self._tokens if isinstance(t, Retrieval)), None)
        if first is not None:
            self._first = await self._stack.enter_async_context(self._source.retrieve(first.target))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def chunks(self) -> AsyncIterator[bytes]:
        first_pending = self._first
        for token in self._tokens:
            if isinstance(token, bytes):
                yield token
                continue
            if first_pending is not None:
                instances, first_pending = first_pending, None
                async for chunk in self._write(token, instances):
                    yield chunk
            else:
                async with self._source.retrieve(token.target) as instances:
                    async for chunk in self._write(token, instances):
                        yield chunk

    async def _write(
        self, retrieval: Retrieval, instances: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        count = 0
        async for part10 in instances:
            if not retrieval.as_array and count == 1:
                raise PacsError(
                    f"{self._source.label}: returned several instances for"
                    f" {retrieval.target.describe()}"
                )
            encoded = await asyncio.to_thread(encode_instance, part10)
            self.bytes_in += len(part10)
            prefix = b"" if not retrieval.as_array else (b"," if count else b"[")
            count += 1
            yield prefix + encoded if prefix else encoded
        self.instances_sent += count
        if retrieval.as_array:
            yield b"]" if count else b"[]"
