"""A Model API that reads the whole request body and discards it: the model end of
the benchmark, so that what is measured is the proxy and not an AI model.

    python -m benchmarks.sink_model --port 8012

Answers every request with ``{"received": <bytes>}`` (valid JSON, as the proxy
requires of a model) once the body has been read to its end, chunked or not. It is
an asyncio protocol around httptools' C parser on uvloop, without a web framework:
a Python ASGI server spends more time per received chunk than the proxy does, and
the sink must not be what the floor and the proxy measure.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util

import httptools
import uvloop


class SinkProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.WriteTransport | None = None
        self.received = 0
        self.expects_continue = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.received = 0
        self.expects_continue = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"expect" and value.lower() == b"100-continue":
            self.expects_continue = True

    def on_headers_complete(self) -> None:
        # curl -T asks before sending a large body, and waits a second for an answer.
        if self.expects_continue and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.received += len(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        answer = b'{"received":%d}' % self.received
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
        )
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SinkProtocol, host, port)
    async with server:
        await server.serve_forever()


def keep_freed_memory_mapped() -> None:
    """Stop glibc from returning freed memory to the kernel between reads.

    Each read allocates a bytes object for the data and httptools another for
    each body piece. With glibc's defaults the freed blocks go back to the
    kernel (unmapped, or trimmed off the heap) and the next ones are faulted in
    again: measured on the benchmark VM, about 230,000 page faults and 0.9 s
    of system time per 631 MB body, more than everything else the sink does.
    """
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name)
    if not hasattr(libc, "mallopt"):  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    libc.mallopt(m_trim_threshold, 256 * 1024 * 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8012)
    args = parser.parse_args()
    keep_freed_memory_mapped()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
