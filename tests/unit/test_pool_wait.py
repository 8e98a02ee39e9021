"""A wait for a free pooled connection that runs out is the proxy's congestion, not the
upstream's failure (upstream/clients.py): 503 with its own code and Retry-After, no
upstream label for the breaker, and not retried."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from loopback_servers import asyncio_server

from model_proxy.errors import ModelError, Overloaded, PacsError
from model_proxy.upstream.clients import Timeouts, is_transient, make_client, translated

pytestmark = pytest.mark.anyio


async def test_a_pool_wait_that_runs_out_is_503_with_retry_after() -> None:
    received, release = asyncio.Event(), asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        received.set()
        await release.wait()  # holds the only pooled connection

    async with asyncio_server(silent) as port:
        # One connection; the pool wait is bounded by the connect timeout.
        client = make_client(
            tls_verify=True, timeouts=Timeouts(connect=0.5, idle=30.0), max_connections=1
        )
        url = f"http://127.0.0.1:{port}/"
        holding = asyncio.create_task(client.get(url))
        try:
            await asyncio.wait_for(received.wait(), 30)
            with pytest.raises(httpx.PoolTimeout) as waited:
                await client.get(url)
        finally:
            release.set()
            holding.cancel()
            await asyncio.gather(holding, return_exceptions=True)
            await client.aclose()

    assert not is_transient(waited.value)
    for error_type, code in (
        (PacsError, "pacs_connections_busy"),
        (ModelError, "model_connections_busy"),
    ):
        error = translated(waited.value, "PACS b1407f18…", error_type)
        assert isinstance(error, Overloaded)
        assert (error.status_code, error.code, error.upstream) == (503, code, None)
        assert int(error.headers()["Retry-After"]) > 0
        assert "every connection to PACS b1407f18… is in use" in error.message
