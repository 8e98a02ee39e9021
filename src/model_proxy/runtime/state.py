"""What the app holds while it runs: the config and one client per upstream."""

from __future__ import annotations

from dataclasses import dataclass, field

from model_proxy.access import AccessGuard, AccessPolicy
from model_proxy.access.guard import JWKS_TIMEOUTS
from model_proxy.access.jwks import JwksCaches
from model_proxy.cache import ResultCache
from model_proxy.config import ProxyConfig, ServerConfig
from model_proxy.errors import BadRequest, ErrorCode, NotFound, shorten
from model_proxy.metrics.registry import UpstreamKind
from model_proxy.models.client import ModelClient
from model_proxy.pacs.auth.flows import PacsAuth
from model_proxy.pacs.auth.shared_tokens import SharedTokenStore
from model_proxy.pacs.dicomweb import DicomWebSource
from model_proxy.pacs.guarded import GuardedSource
from model_proxy.pacs.local_folder import LocalFolderSource
from model_proxy.pacs.source import DicomSource
from model_proxy.runtime.capacity import Capacity
from model_proxy.settings import Settings
from model_proxy.upstream.breaker import CallObserver, CircuitBreaker
from model_proxy.upstream.probe import ProbeRounds


@dataclass
class ProxyState:
    settings: Settings
    config: ProxyConfig
    sources: dict[str, DicomSource]
    models: dict[str, ModelClient]
    auth: PacsAuth
    result_cache: ResultCache
    # Shared by every state of the process (runtime/capacity.py); a state does not close it.
    capacity: Capacity
    # Who may call, with this config: requests use the guard of the state they leased.
    access: AccessGuard
    # The process's JWKS caches (shared like capacity); the guard holds one of them.
    jwks_caches: JwksCaches
    # /status probes of this state's upstreams, cached briefly (routes/status.py).
    probe_rounds: ProbeRounds
    # Server id -> the last failed store of DICOM results that was not required
    # ({"at": ISO time, "message": ...}), shown on /status (docs/dicom-outputs.md).
    store_failures: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        settings: Settings,
        config: ProxyConfig,
        capacity: Capacity | None = None,
        *,
        access: AccessPolicy | None = None,
        jwks_caches: JwksCaches | None = None,
        shared_tokens: SharedTokenStore | None = None,
    ) -> ProxyState:
        """The state of ``config`` and ``access``; ``capacity``, ``jwks_caches`` and
        ``shared_tokens`` (--redis) carry over from the state in force on a reload."""
        capacity = capacity or Capacity.create(settings)
        metrics = capacity.metrics
        auth = PacsAuth(
            settings.data_dir,
            settings.pacs_timeouts,
            settings.auth_failure_memory,
            on_renewal=metrics.token_observer if metrics else None,
            shared=shared_tokens,
        )
        sources: dict[str, DicomSource] = {}
        for server_id, server in config.servers.items():
            observer = metrics.upstream_observer(UpstreamKind.PACS, server_id) if metrics else None
            sources[server_id] = _make_source(server, settings, auth, observer)
        models = {
            model_id: ModelClient(
                model,
                timeouts=settings.model_timeouts,
                max_result_bytes=settings.max_result_bytes,
                breaker=settings.breaker,
                retry=settings.retry,
                observer=metrics.upstream_observer(UpstreamKind.MODEL, model_id)
                if metrics
                else None,
            )
            for model_id, model in config.models.items()
        }
        result_cache = ResultCache.shared(
            settings.data_dir / "result-cache", settings.cache_max_bytes
        )
        jwks_caches = jwks_caches or JwksCaches(JWKS_TIMEOUTS)
        return cls(
            settings,
            config,
            sources,
            models,
            auth,
            result_cache,
            capacity,
            AccessGuard.build(access, jwks_caches),
            jwks_caches,
            ProbeRounds(settings.status_cache_seconds),
        )

    def source_for(self, server_id: str | None) -> tuple[ServerConfig, DicomSource]:
        """The server named by ``?server=``, or the default one."""
        if server_id is None:
            server = self.config.default_server()
            if server is None:
                raise BadRequest(
                    "no default server is configured; choose one with ?server=<uuid>"
                    f" ({', '.join(self.config.servers) or 'servers.json is empty'})",
                    code=ErrorCode.NO_DEFAULT_SERVER,
                )
        else:
            found = self.config.servers.get(server_id)
            if found is None:
                raise NotFound(
                    f"server {shorten(server_id)!r} is not in servers.json",
                    code=ErrorCode.UNKNOWN_SERVER,
                )
            server = found
        return server, self.sources[server.id]

    def start_indexing(self) -> None:
        """Start indexing the file:// folders that have no index yet (needs the loop)."""
        for source in self.sources.values():
            if isinstance(source, LocalFolderSource):
                source.start_indexing()

    def breaker_of_server(self, server_id: str) -> CircuitBreaker | None:
        """The circuit breaker of a DICOMweb server (a local folder has none)."""
        source = self.sources[server_id]
        return source.breaker if isinstance(source, GuardedSource) else None

    async def aclose(self) -> None:
        await self.probe_rounds.aclose()
        for source in self.sources.values():
            await source.aclose()
        for model in self.models.values():
            await model.aclose()
        await self.auth.aclose()
        await self.access.release(self.jwks_caches)


def _make_source(
    server: ServerConfig, settings: Settings, auth: PacsAuth, observer: CallObserver | None
) -> DicomSource:
    if server.is_local_folder:
        return LocalFolderSource(
            server,
            min_rescan_interval=settings.folder_rescan_seconds,
            allow_outside_links=settings.allow_symlinks_outside_folder,
        )
    source = DicomWebSource(
        server,
        timeouts=settings.pacs_timeouts,
        max_instance_bytes=settings.max_instance_bytes,
        retry=settings.retry,
        auth=auth.for_server(server),
        # Every running inference may hold pacs_concurrency retrievals: none may
        # wait for a pooled connection held by a retrieval that waits on it.
        max_connections=settings.max_concurrent_inferences * settings.pacs_concurrency,
        answer_deadline=settings.pacs_answer_deadline,
    )
    return GuardedSource(source, CircuitBreaker(source.label, settings.breaker, observer=observer))
