"""``/status``: every server and model probed through its statusUri (docs/compatibility.md §8).

Present only when ZHIVA_SHOW_STATUS_PAGE=true. HTML for a browser, JSON for
``Accept: application/json``:
``{"servers": {uuid: {"ok": bool, ...}}, "models": {uuid: {"ok": bool, ...}},
"jobs": {"queued", "running", "failedLastHour", "maxRunning"}, "watcher": {...}}``
(jobs and the prefetch watcher: docs/jobs.md).
"""

from __future__ import annotations

import asyncio
import html
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from model_proxy.errors import NotFound, redact_urls
from model_proxy.routes.not_found import STATUS_PAGE_OFF
from model_proxy.runtime.state import ProxyState
from model_proxy.upstream.breaker import CircuitBreaker
from model_proxy.upstream.probe import ProbeResult


async def collect_status(state: ProxyState) -> dict[str, dict[str, Any]]:
    """Probe everything concurrently, each probe with its upstream's own timeouts, or
    reuse the state's last round while it is fresh (``--status-cache``)."""
    server_ids = list(state.config.servers)
    model_ids = list(state.config.models)

    async def probe_all() -> list[ProbeResult]:
        return list(
            await asyncio.gather(
                *(state.sources[i].probe() for i in server_ids),
                *(state.models[i].probe() for i in model_ids),
            )
        )

    results, age = await state.probe_rounds.results(probe_all)
    servers = {
        server_id: _entry(result, state.config.servers[server_id].status_uri, kind="server")
        | {
            "uri": redact_urls(state.config.servers[server_id].uri),
            "isDefault": _is_default(state, server_id),
        }
        | _breaker_entry(state.breaker_of_server(server_id))
        | _store_entry(state, server_id)
        for server_id, result in zip(server_ids, results[: len(server_ids)], strict=True)
    }
    models = {
        model_id: _entry(result, state.config.models[model_id].status_uri, kind="model")
        | {
            "task": state.config.models[model_id].task.value,
            "supports": [level.value for level in state.config.models[model_id].supports],
        }
        | _breaker_entry(state.models[model_id].breaker)
        for model_id, result in zip(model_ids, results[len(server_ids) :], strict=True)
    }
    # Live asyncio tasks: flat under load, so a leak shows (the leak test reads it).
    process = {"asyncioTasks": len(asyncio.all_tasks()), "probedSecondsAgo": round(age, 1)}
    return {"servers": servers, "models": models, "process": process}


def _breaker_entry(breaker: CircuitBreaker | None) -> dict[str, Any]:
    return {} if breaker is None else {"breaker": breaker.snapshot()}


def _store_entry(state: ProxyState, server_id: str) -> dict[str, Any]:
    failure = state.store_failures.get(server_id)
    return {} if failure is None else {"lastStoreFailure": failure}


def _is_default(state: ProxyState, server_id: str) -> bool:
    default = state.config.default_server()
    return default is not None and default.id == server_id


def _entry(result: ProbeResult, status_uri: str | None, *, kind: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "ok": result.ok,
        "latencyMs": result.latency_ms,
        "statusUri": redact_urls(status_uri) if status_uri else None,
        "detail": result.detail,
    }
    if result.http_status is not None:
        entry["httpStatus"] = result.http_status
    if not result.ok:
        entry["error"] = result.detail
    return entry


async def status(request: Request) -> Response:
    state: ProxyState = request.state.proxy  # leased by reload.LeaseMiddleware
    if not state.settings.show_status_page:
        raise NotFound(STATUS_PAGE_OFF)
    # With client auth on, the page (it names every PACS and model) needs a caller too.
    caller = await state.access.authenticate(request.headers)
    state.access.authorize_monitoring(caller)
    report = await collect_status(state)
    if request.app.state.jobs is not None:
        report["jobs"] = await request.app.state.jobs.counts()
    watcher = getattr(request.app.state, "watcher", None)
    if watcher is not None:
        report["watcher"] = watcher.status()
    accept = request.headers.get("accept", "")
    if "application/json" in accept and "text/html" not in accept:
        return JSONResponse(report, headers={"Cache-Control": "no-store"})
    return HTMLResponse(render_html(report), headers={"Cache-Control": "no-store"})


def render_html(report: dict[str, dict[str, Any]]) -> str:
    sections = []
    for title, key, extra in (
        ("PACS servers", "servers", "uri"),
        ("Models", "models", "task"),
    ):
        rows = []
        for uuid, entry in report[key].items():
            badge = "up" if entry["ok"] else "down"
            rows.append(
                "<tr>"
                f'<td><span class="badge {badge}">{badge}</span></td>'
                f"<td><code>{html.escape(uuid)}</code></td>"
                f"<td>{html.escape(str(entry.get(extra, '')))}</td>"
                f'<td class="num">{entry["latencyMs"]:.0f} ms</td>'
                f"<td>{html.escape(entry['detail'])}{_breaker_html(entry)}</td>"
                "</tr>"
            )
        body = "".join(rows) or '<tr><td colspan="5">none configured</td></tr>'
        sections.append(
            f"<h2>{title}</h2><table><thead><tr><th>state</th><th>uuid</th>"
            f"<th>{extra}</th><th>latency</th><th>detail</th></tr></thead>"
            f"<tbody>{body}</tbody></table>"
        )
    entries = [*report["servers"].values(), *report["models"].values()]
    down = sum(not entry["ok"] for entry in entries)
    summary = (
        f'<p class="summary ok">All {len(entries)} up.</p>'
        if not down
        else f'<p class="summary bad">{down} of {len(entries)} down.</p>'
    )
    probed = report["process"]["probedSecondsAgo"]
    footer = "just now" if probed < 1 else f"{probed:.0f} s ago"
    page = _PAGE.replace(
        "{sections}", summary + "".join(sections) + _jobs_html(report) + _watcher_html(report)
    )
    return page.replace("{probed}", footer)


def _jobs_html(report: dict[str, dict[str, Any]]) -> str:
    jobs = report.get("jobs")
    if jobs is None:
        return "<h2>Jobs</h2><p>Off: the result cache is off (--cache-size 0).</p>"
    return (
        '<h2>Jobs</h2><table id="jobs"><tbody>'
        f'<tr><th>queued</th><td class="num">{jobs["queued"]}</td></tr>'
        f'<tr><th>running</th><td class="num">{jobs["running"]} of at most'
        f" {jobs['maxRunning']}</td></tr>"
        f'<tr><th>failed in the last hour</th><td class="num">{jobs["failedLastHour"]}</td></tr>'
        '</tbody></table><p><a href="/jobs">Recent jobs</a></p>'
    )


def _watcher_html(report: dict[str, dict[str, Any]]) -> str:
    watcher = report.get("watcher")
    if watcher is None:
        return "<h2>Prefetch</h2><p>Off (--watch-interval 0, or jobs are off).</p>"
    if not watcher["on"]:
        return f"<h2>Prefetch</h2><p>{html.escape(watcher['detail'])}.</p>"
    rows = []
    for uuid, server in watcher["servers"].items():
        badge = "up" if server["ok"] else "down"
        outcome = "ok" if server["ok"] else server["error"] or "not polled yet"
        rows.append(
            "<tr>"
            f'<td><span class="badge {badge}">{badge}</span></td>'
            f"<td><code>{html.escape(uuid)}</code></td>"
            f"<td>{html.escape(str(server['lastPoll']))}</td>"
            f'<td class="num">{server["studiesSeen"]}</td>'
            f"<td>{html.escape(outcome)}</td>"
            "</tr>"
        )
    started = "".join(
        f'<tr><th>{html.escape(name)}</th><td class="num">{count}</td></tr>'
        for name, count in watcher["jobsStarted"].items()
    )
    return (
        f"<h2>Prefetch</h2><p>{watcher['rules']} rules, every"
        f" {watcher['intervalSeconds']:g} s.</p>"
        '<table id="watcher"><thead><tr><th>state</th><th>server</th><th>last poll</th>'
        "<th>studies seen</th><th>outcome</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        f'<table id="prefetch-jobs"><thead><tr><th>rule</th><th>jobs started</th></tr></thead>'
        f"<tbody>{started}</tbody></table>"
    )


def _breaker_html(entry: dict[str, Any]) -> str:
    breaker = entry.get("breaker")
    if breaker is None or breaker["state"] == "closed":
        return ""
    when = (
        f"a trial call in {breaker['retryInSeconds']:.0f} s"
        if breaker["state"] == "open"
        else "the next call is a trial"
    )
    return (
        f'<br><span class="breaker">circuit breaker {breaker["state"]} after'
        f" {breaker['failures']} failures; {when}: {html.escape(str(breaker['lastFailure']))}"
        "</span>"
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>model-proxy status</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:70rem;padding:0 1rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.45rem .6rem;
border-bottom:1px solid #e3e3e3;vertical-align:top}th{font-weight:600;color:#555}
td.num{text-align:right;white-space:nowrap}code{font-size:.85rem}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:.8rem;font-size:.8rem;
font-weight:600;color:#fff}.up{background:#2e7d32}.down{background:#c62828}
footer{margin-top:2rem;color:#777;font-size:.85rem}
.breaker{color:#c62828;font-size:.85rem}
.summary{font-weight:600}.summary.ok{color:#2e7d32}.summary.bad{color:#c62828}
</style></head><body>
<h1>model-proxy status</h1>
{sections}
<footer>JSON: send <code>Accept: application/json</code>. Probed {probed}.</footer>
</body></html>
"""


routes = [Route("/status", status, methods=["GET"])]
