"""Config reload without downtime: SIGHUP (or changed files) swaps in a new ProxyState.

Each request leases the state in force when it arrived (``LeaseMiddleware`` puts it in
``request.state.proxy``) and keeps it to its last byte, so a reload never pulls a
config or an upstream client from under a running inference. A replaced state closes
its clients when its last lease ends.

A reload validates everything before it changes anything: servers.json, models.json
and access.json are loaded and checked together in one thread, off the event loop;
if any of them does not load, the reload is refused with every problem in the log
and the state in force stays whole.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from model_proxy.access import AccessPolicy
from model_proxy.access.reload import reload_access
from model_proxy.config import ConfigError, ProxyConfig, load_config
from model_proxy.runtime.state import ProxyState
from model_proxy.settings import Settings

logger = logging.getLogger(__name__)

CONFIG_FILES = ("servers.json", "models.json", "access.json", "rules.json")


class LiveState:
    """The ProxyState in force, and the replaced ones still serving their requests."""

    def __init__(self) -> None:
        self._current: ProxyState | None = None
        self._leases: dict[int, int] = {}  # requests and model calls, by id(state)
        self._requests: dict[int, int] = {}  # requests alone: what a reload reports
        self._retired: dict[int, ProxyState] = {}

    @property
    def current(self) -> ProxyState:
        if self._current is None:
            raise RuntimeError("the proxy state is used before the app started")
        return self._current

    @property
    def retired_count(self) -> int:
        return len(self._retired)

    def lease(self) -> AbstractAsyncContextManager[ProxyState]:
        """A request's hold on the state in force, to its last byte."""
        return self._held(self.current, request=True)

    def hold(self, state: ProxyState) -> AbstractAsyncContextManager[ProxyState]:
        """Another hold on ``state``, which the caller holds already, for work that may
        outlive the caller's own lease (a coalesced model call serves every viewer
        that joined it, whoever started it)."""
        if state is not self._current and id(state) not in self._leases:
            raise RuntimeError("a hold on a state that is already closed")
        return self._held(state, request=False)

    @asynccontextmanager
    async def _held(self, state: ProxyState, *, request: bool) -> AsyncIterator[ProxyState]:
        key = id(state)
        self._leases[key] = self._leases.get(key, 0) + 1
        if request:
            self._requests[key] = self._requests.get(key, 0) + 1
        try:
            yield state
        finally:
            self._leases[key] -= 1
            if request:
                self._requests[key] -= 1
                if self._requests[key] == 0:
                    del self._requests[key]
            if self._leases[key] == 0:
                del self._leases[key]
                retired = self._retired.pop(key, None)
                if retired is not None:
                    await _close(retired, "after its last request")

    async def replace(self, state: ProxyState) -> int:
        """Put ``state`` in force; returns how many requests still run on the old one."""
        old, self._current = self._current, state
        if old is None:
            return 0
        if id(old) in self._leases:
            self._retired[id(old)] = old
        else:
            await _close(old, "at once")
        return self._requests.get(id(old), 0)

    async def aclose(self) -> None:
        """At shutdown, after the grace period: close every state, leased or not."""
        states = [*self._retired.values(), *([self._current] if self._current else [])]
        self._retired.clear()
        self._current = None
        for state in states:
            await state.aclose()


async def _close(state: ProxyState, when: str) -> None:
    try:
        await state.aclose()
    except Exception:  # a close failure must not fail the request that triggered it
        logger.exception("closing the previous config's upstream clients failed")
    else:
        logger.info("previous config's upstream clients closed %s", when)


class LeaseMiddleware:
    """Pure ASGI: each HTTP request holds the state in force when it arrived."""

    def __init__(self, app: ASGIApp, live: LiveState) -> None:
        self.app = app
        self.live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        async with self.live.lease() as state:
            scope.setdefault("state", {}).update(proxy=state, live=self.live)
            await self.app(scope, receive, send)


class Reloader:
    """Reloads the config files into a new ProxyState; one reload at a time."""

    def __init__(
        self,
        settings: Settings,
        live: LiveState,
        on_state: Callable[[ProxyState], None] = lambda state: None,
    ) -> None:
        self.settings = settings
        self.live = live
        self.on_state = on_state
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()
        self._watcher: asyncio.Task[None] | None = None

    def watched_files(self) -> list[Path]:
        return [self.settings.config_dir / name for name in CONFIG_FILES]

    async def reload(self, reason: str) -> bool:
        """Load, check and put in force the config files; False if they were refused."""
        async with self._lock:
            config_dir = self.settings.config_dir
            logger.info("reloading the config from %s (%s)", config_dir, reason)
            current = self.live.current
            try:
                config, access = await asyncio.to_thread(self._load_files, current.access.policy)
                # Budget, encoder threads, JWKS keys and shared tokens outlive the config.
                state = ProxyState.build(
                    self.settings,
                    config,
                    current.capacity,
                    access=access,
                    jwks_caches=current.jwks_caches,
                    shared_tokens=current.auth.shared,
                )
            except ConfigError as exc:
                problems = "\n".join(f"  - {line}" for line in exc.messages)
                logger.error(
                    "config reload refused, the previous config stays in force:\n%s", problems
                )
                return False
            except Exception as exc:
                logger.error("config reload refused, the previous config stays in force: %s", exc)
                return False
            running = await self.live.replace(state)
            self.on_state(state)
            state.start_indexing()  # a file:// folder new in this config
            logger.info(
                "config reloaded: %d servers, %d models; %d requests finish on the previous one",
                len(config.servers),
                len(config.models),
                running,
            )
            if access is not None:
                logger.info(
                    "client access rules %s from %s: %d API keys%s, %d model rules",
                    "turned on" if current.access.policy is None else "reloaded",
                    access.source,
                    len(access.api_keys),
                    " and bearer JWTs" if access.jwt else "",
                    len(access.models),
                )
                for warning in access.warnings:
                    logger.warning("%s", warning)
            return True

    def _load_files(
        self, access_in_force: AccessPolicy | None
    ) -> tuple[ProxyConfig, AccessPolicy | None]:
        """Every config file, read and checked (blocking: run in a thread)."""
        config = load_config(self.settings.config_dir)
        access = reload_access(
            self.settings.config_dir,
            self.settings.access_file,
            access_in_force,
            config.models,
            config.servers,
        )
        return config, access

    def request_reload(self, reason: str) -> None:
        """Start a reload from a signal handler (the loop keeps a reference to it)."""
        task = asyncio.get_running_loop().create_task(self.reload(reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self, watch_interval: float = 0.0) -> None:
        """Reload on SIGHUP, and every ``watch_interval`` seconds if a file changed."""
        loop = asyncio.get_running_loop()
        if hasattr(signal, "SIGHUP"):
            loop.add_signal_handler(signal.SIGHUP, self.request_reload, "SIGHUP")
        if watch_interval > 0:
            self._watcher = loop.create_task(self._watch(watch_interval))

    async def stop(self) -> None:
        if hasattr(signal, "SIGHUP"):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._watcher is not None:
            self._watcher.cancel()
            with suppress(asyncio.CancelledError):
                await self._watcher
        for task in list(self._tasks):
            with suppress(asyncio.CancelledError):
                await task

    async def _watch(self, interval: float) -> None:
        seen = self._stamps()
        while True:
            await asyncio.sleep(interval)
            stamps = self._stamps()
            if stamps != seen:
                seen = stamps
                await self.reload("config files changed")

    def _stamps(self) -> dict[Path, tuple[int, int] | None]:
        stamps: dict[Path, tuple[int, int] | None] = {}
        for path in self.watched_files():
            try:
                stat = os.stat(path)
            except OSError:
                stamps[path] = None
            else:
                stamps[path] = (stat.st_mtime_ns, stat.st_size)
        return stamps
