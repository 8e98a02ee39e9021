"""access.json is reloaded with the other config files on SIGHUP: a revoked key stops
working at once, a broken file is refused, a deleted one never turns auth off."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from harness import ExampleModel, OrthancServer, ProxyFactory, model_entry, new_uid, server_entry
from identity import ISSUER, identity_provider, rsa_key

from model_proxy.access import digest_of, new_api_key
from model_proxy.sample_data import SampleStudy


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def write_access(folder: Path, content: object) -> None:
    staging = folder / "access.json.new"  # written aside and renamed, as an editor does
    staging.write_text(json.dumps(content) if not isinstance(content, str) else content)
    staging.replace(folder / "access.json")


def test_sighup_reloads_access_rules(
    start_proxy: ProxyFactory,
    tmp_path: Path,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
) -> None:
    old_key, new_key = new_api_key(), new_api_key()
    write_access(tmp_path, {"apiKeys": {"old": {"sha256": digest_of(old_key).hex()}}})
    model_id = new_uid()
    proxy = start_proxy(
        {new_uid(): server_entry(orthanc)},
        {model_id: model_entry(example_model, "/prediction", "prediction", ["/studies/series"])},
        config_dir=tmp_path,
    )
    series = sample_study.series[1]
    path = f"/predictions/{model_id}/studies/{sample_study.study_uid}/series/{series.series_uid}"

    def status_with(key: str) -> int:
        with proxy.client() as client:
            return client.get(path, headers={"X-API-Key": key}).status_code

    def hang_up() -> None:
        assert proxy.process.pid is not None
        os.kill(proxy.process.pid, signal.SIGHUP)

    assert (status_with(old_key), status_with(new_key)) == (200, 401)

    # The old key is revoked, a new one added, and bearer tokens turned on.
    with identity_provider() as idp:
        signer = rsa_key("k1")
        idp.publish(signer)
        write_access(
            tmp_path,
            {
                "apiKeys": {"new": {"sha256": digest_of(new_key).hex()}},
                "jwt": {"jwksUri": idp.jwks_url, "issuer": ISSUER, "audience": "model-proxy"},
                "models": {model_id: {"keys": ["new"], "subjects": ["alice"]}},
            },
        )
        hang_up()
        eventually(lambda: status_with(old_key) == 401)
        assert status_with(new_key) == 200
        with proxy.client() as client:
            token = idp.mint(signer, subject="alice")
            bearer = client.get(path, headers={"Authorization": f"Bearer {token}"})
            assert bearer.status_code == 200, bearer.text
            bob = idp.mint(signer, subject="bob")
            refused = client.get(path, headers={"Authorization": f"Bearer {bob}"})
            assert refused.status_code == 403

    # A broken file is refused with its problem; the rules in force stay.
    write_access(tmp_path, {"apiKeys": {"new": {"sha256": "not-a-digest"}}})
    hang_up()
    eventually(lambda: "config reload refused" in proxy.log_text())
    assert 'field "apiKeys.new.sha256"' in proxy.log_text()
    assert status_with(new_key) == 200

    # A deleted file does not open the proxy.
    (tmp_path / "access.json").unlink()
    hang_up()
    eventually(lambda: "not found any more; client authentication stays on" in proxy.log_text())
    assert status_with(new_key) == 200
    with proxy.client() as client:
        assert client.get(path).status_code == 401
    log = proxy.log_text()
    assert "client access rules reloaded" in log
    assert new_key not in log and old_key not in log
