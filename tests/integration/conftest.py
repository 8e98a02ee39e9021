"""Fixtures for the integration tests: real Orthanc, example model and proxy on loopback.

Session-wide servers are started once and shared; a test that needs a proxy with its
own configuration asks ``start_proxy`` for one:

    def test_health(start_proxy: ProxyFactory, orthanc: OrthancServer) -> None:
        proxy = start_proxy({new_uid(): server_entry(orthanc)}, {})
        with proxy.client() as client:
            assert client.get("/health").status_code == 200
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from auth_setup import AuthSetup, AuthSetupFactory
from deployment import Deployment, deploy
from guarded_deployment import Guarded, deploy_guarded
from harness import (
    ExampleModel,
    HarnessError,
    OrthancServer,
    ProxyFactory,
    ProxyProcess,
    TlsCert,
    gen_cert,
    live_processes,
    start_example_model,
    start_orthanc,
)
from harness import (
    start_proxy as start_proxy_process,
)
from token_gateway import Gateway, start_token_gateway
from token_server import TokenServer, start_token_server

from model_proxy.sample_data import SampleStudy, make_study

T = TypeVar("T")

ORTHANC_USERS = {"user": "pass"}


def _or_fail(start: Callable[[], T]) -> T:
    # A server that does not come up fails the test with its output, never skips it.
    try:
        return start()
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and report.when in ("setup", "call"):
        for process in live_processes():
            report.sections.append(
                (f"{process.name} output (tail of {process.log_path})", process.tail())
            )
    return report


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """Orthanc without authentication; holds ``sample_study`` and ``second_study``."""
    server = _or_fail(lambda: start_orthanc(tmp_path_factory.mktemp("orthanc")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def orthanc_basic_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """Orthanc that wants HTTP basic auth ``user:pass``; holds ``sample_study``."""
    workdir = tmp_path_factory.mktemp("orthanc-basic-auth")
    server = _or_fail(lambda: start_orthanc(workdir, users=ORTHANC_USERS))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sample_study(orthanc: OrthancServer, orthanc_basic_auth: OrthancServer) -> SampleStudy:
    """Synthetic CT, two series of 24 and 12 slices, stored in both Orthancs."""
    study = make_study(series_slices=(24, 12))
    files = [part10 for _, _, part10 in study.iter_instances()]
    orthanc.upload_many(files)
    orthanc_basic_auth.upload_many(files)
    return study


@pytest.fixture(scope="session")
def second_study(orthanc: OrthancServer) -> SampleStudy:
    """Another synthetic CT (other UIDs), only in the Orthanc without auth."""
    study = make_study(series_slices=(24, 12), seed=1)
    orthanc.upload_many(part10 for _, _, part10 in study.iter_instances())
    return study


@pytest.fixture(scope="session")
def example_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleModel]:
    """``model-proxy example-model`` on a free loopback port, answering ``/health``."""
    model = _or_fail(lambda: start_example_model(tmp_path_factory.mktemp("example-model")))
    yield model
    model.stop()


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> TlsCert:
    """A self-signed zhiva.crt / zhiva.key from ``model-proxy gen-cert``."""
    return _or_fail(lambda: gen_cert(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def start_proxy(
    tmp_path_factory: pytest.TempPathFactory, tls_cert: TlsCert
) -> Iterator[ProxyFactory]:
    """Start ``model-proxy serve`` with the given servers.json / models.json content.

    Pass ``config_dir`` / ``data_dir`` of an earlier proxy to start another one on the
    same files (e.g. to check that tokens survive a restart). Every proxy started
    through this fixture is stopped when the test ends.
    """
    started: list[ProxyProcess] = []

    def factory(
        servers: Mapping[str, Any] | None,
        models: Mapping[str, Any] | None,
        *,
        env: Mapping[str, str] | None = None,
        tls: bool = True,
        config_dir: Path | None = None,
        data_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        open_files: int | None = None,
    ) -> ProxyProcess:
        proxy = _or_fail(
            lambda: start_proxy_process(
                config_dir or tmp_path_factory.mktemp("proxy"),
                servers,
                models,
                cert=tls_cert if tls else None,
                env=env,
                data_dir=data_dir,
                extra_args=extra_args,
                open_files=open_files,
            )
        )
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory,
    orthanc: OrthancServer,
    orthanc_basic_auth: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
    second_study: SampleStudy,
    tls_cert: TlsCert,
) -> Iterator[Deployment]:
    """A proxy configured with every kind of server and model (see deployment.py)."""
    with deploy(
        tmp_path_factory,
        orthanc,
        orthanc_basic_auth,
        example_model,
        sample_study,
        second_study,
        tls_cert,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def guarded(
    tmp_path_factory: pytest.TempPathFactory,
    orthanc_basic_auth: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
    tls_cert: TlsCert,
) -> Iterator[Guarded]:
    """A proxy with client authentication, access rules, a CORS allow-list and the
    status page on (see guarded_deployment.py)."""
    with deploy_guarded(
        tmp_path_factory, orthanc_basic_auth, example_model, sample_study, tls_cert
    ) as running:
        yield running


@pytest.fixture
def token_server() -> Iterator[TokenServer]:
    """The token server double (token_server.py) with its defaults: user doctor/s3cret,
    OAuth client proxy/client-secret, access tokens for 1 h, refresh tokens for 30 d."""
    with start_token_server() as server:
        yield server


@pytest.fixture
def token_pacs(
    orthanc: OrthancServer, sample_study: SampleStudy, token_server: TokenServer
) -> Iterator[Gateway]:
    """The session Orthanc holding ``sample_study`` behind a gateway that wants the
    access tokens of ``token_server`` (token_gateway.py); ``.server_entry(authType)``."""
    with start_token_gateway(orthanc.url, token_server) as gateway:
        yield gateway


@pytest.fixture
def auth_setup(
    start_proxy: ProxyFactory, example_model: ExampleModel, sample_study: SampleStudy
) -> AuthSetupFactory:
    """Start a proxy with one PACS (the given servers.json entry) and the example model:
    ``auth_setup(token_pacs.server_entry("token"))``; see auth_setup.py."""

    def factory(
        server: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        extra_args: Iterable[str] = (),
    ) -> AuthSetup:
        return AuthSetup.start(
            start_proxy, example_model, sample_study, server, env=env, extra_args=extra_args
        )

    return factory
