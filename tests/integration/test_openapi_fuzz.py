"""Fuzz the running proxy with its own OpenAPI description (schemathesis): valid and
invalid requests on every route, against the real Orthanc and example model. No
answer may be a 5xx, carry a traceback, or differ from what the document promises."""

from __future__ import annotations

import copy
import re
from collections import Counter
from typing import Any

import hypothesis
import pytest
import schemathesis
from deployment import Deployment
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from model_proxy.routes.openapi import DOCUMENT

# Upstreams that work: every 5xx from these is a bug of the proxy, not an injected fault.
# By the route family of their task: a pinned run pairs a family with its own models,
# since any other pairing is refused as wrong_task and never reaches the model.
HEALTHY_MODELS = {
    "segmentations": ["seg", "seg-legacy"],
    "annotations": ["ann"],
    "predictions": ["pred", "two-series", "instance-inputs", "nested"],
}
HEALTHY_SERVERS = ["orthanc", "basic", "folder"]

# Invalid input is rejected with these; 414 and 431 are the limits of web/http_limits.py.
CONFIG = schemathesis.Config.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": [400, 404, 405, 414, 431]}}}
)


def _pinned_to(deployment: Deployment, family: str) -> dict[str, Any]:
    """The published document with the IDs narrowed to the deployment's healthy models,
    servers and real UIDs: valid requests that reach the PACS and the model."""
    document = copy.deepcopy(DOCUMENT)
    study = deployment.study
    series = study.series[0]
    real = {
        "family": [family],
        "model": [deployment.models[name] for name in HEALTHY_MODELS[family]],
        "server": [deployment.servers[name] for name in HEALTHY_SERVERS],
        "study": [study.study_uid, deployment.other_study.study_uid],
        "series": [series.series_uid, study.series[1].series_uid],
        "instance": series.sop_uids[:3],
    }
    for path in document["paths"].values():
        operation = path["get"]
        # Filters get fuzzed by the other runs; here they would mostly make a 400. Storing
        # would add SEG/SR series to the study other tests count the series of.
        parameters = [
            p for p in operation.get("parameters", []) if p["name"] not in ("data-filters", "store")
        ]
        operation["parameters"] = parameters
        for parameter in parameters:
            if parameter["name"] in real:
                values = [str(value) for value in real[parameter["name"]]]  # pydicom UIDs
                parameter["schema"] = {"type": "string", "enum": values}
    return document


@pytest.mark.parametrize(
    ("document", "mode"),
    [
        ("published", GenerationMode.POSITIVE),
        ("published", GenerationMode.NEGATIVE),
        *(("pinned " + family, GenerationMode.POSITIVE) for family in HEALTHY_MODELS),
    ],
)
def test_no_5xx_and_every_answer_as_documented(
    deployment: Deployment, document: str, mode: GenerationMode
) -> None:
    published = deployment.get("/openapi.json")
    assert published.status_code == 200 and published.json() == DOCUMENT
    pinned = document.startswith("pinned")
    chosen = _pinned_to(deployment, document.split()[1]) if pinned else DOCUMENT
    schema = schemathesis.openapi.from_dict(chosen, config=CONFIG)
    assert deployment.proxy.cert is not None
    verify = str(deployment.proxy.cert.cert)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        no_traceback,
    ]
    if mode is GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)

    @hypothesis.given(case=schema.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=15 if pinned else 40,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def call(case: schemathesis.Case[Any]) -> None:
        response = case.call_and_validate(
            base_url=deployment.proxy.url, checks=checks, verify=verify, timeout=60
        )
        statuses[response.status_code] += 1

    statuses: Counter[int] = Counter()
    call()
    # The fuzzing reached where it was meant to: real results, and refusals.
    if pinned:
        assert statuses[200] >= 3, statuses
    if mode is GenerationMode.NEGATIVE:
        assert statuses[400] + statuses[404] >= 20, statuses


def no_traceback(ctx: schemathesis.CheckContext, response: Any, case: Any) -> bool | None:
    body = response.content.decode("utf-8", "replace")
    assert "Traceback" not in body and 'File "' not in body, body[:500]
    return None


def test_nothing_reached_the_catch_all(deployment: Deployment) -> None:
    # The catch-all's own log line and the request line it leads to; the bare code
    # can be in a logged URL, which the fuzzer fills with any text.
    log = deployment.proxy.log_text()
    assert "unexpected error on" not in log and "Traceback" not in log
    assert not re.search(r"status=500 code=internal_error", log)
