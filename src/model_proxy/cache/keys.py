"""What makes two requests identical, and whether the data behind them changed.

A request's key covers the whole model entry (uri, task, inputs, input format:
any edit of models.json gives new keys), the server, and the planned body (the
level, the targets and the data filter keys). The entry key adds the
fingerprints of the data (pacs/source.py ``fingerprint``), so a result made
from other data is never found: stale entries simply age out of the LRU.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

import orjson

from model_proxy.config import ModelConfig, ServerConfig
from model_proxy.models.body import Retrieval, Token
from model_proxy.pacs.source import DicomSource

_VERSION = 1  # bump when the layout of cached results changes


def request_key(model: ModelConfig, server: ServerConfig, plan: Sequence[Token]) -> str:
    tokens = [
        [t.target.study, t.target.series, t.target.instance, t.as_array]
        if isinstance(t, Retrieval)
        else t.decode()
        for t in plan
    ]
    identity = {
        "version": _VERSION,
        "model": model.model_dump(mode="json"),
        "server": [server.id, server.uri],
        "plan": tokens,
    }
    return hashlib.sha256(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def data_fingerprint(source: DicomSource, plan: Sequence[Token]) -> str | None:
    """The fingerprints of every retrieval of ``plan``, or None if one is unknown."""
    targets = list(dict.fromkeys(t.target for t in plan if isinstance(t, Retrieval)))
    prints = await asyncio.gather(*(source.fingerprint(target) for target in targets))
    if any(found is None for found in prints):
        return None
    return "\n".join(str(found) for found in prints)


def entry_key(request: str, fingerprint: str) -> str:
    """The cache key (and ETag) of a request's result on the data it fingerprints."""
    return hashlib.sha256(f"{request}\n{fingerprint}".encode()).hexdigest()[:40]
