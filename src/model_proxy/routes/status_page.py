"""The ``/status`` report (routes/status.py) as an HTML page a person watches.

Self-contained and script-free, so the default CSP of HTML pages
(web/security_headers.py) holds: inline styles, a ``<meta http-equiv="refresh">``
every ``REFRESH_SECONDS`` (``?refresh=N``: N seconds, 0 never). Cards in a grid that
falls to one column on a phone, long UUIDs and URLs wrap: no horizontal scrolling at
390 px. Every value from the config or an upstream is escaped. A section is one
function in ``_SECTIONS``.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

REFRESH_SECONDS = 15
Report = dict[str, dict[str, Any]]


def render_html(report: Report, refresh: int = REFRESH_SECONDS) -> str:
    """The page; it reloads itself every ``refresh`` seconds (0: never)."""
    entries = [*report["servers"].values(), *report["models"].values()]
    down = sum(not entry["ok"] for entry in entries)
    summary = (
        f'<p class="summary ok">All {len(entries)} up.</p>'
        if not down
        else f'<p class="summary bad">{down} of {len(entries)} down.</p>'
    )
    process = report["process"]
    meta = (
        f'<p class="meta">version {_e(process.get("version", "?"))} &middot; up'
        f' <span id="uptime">{_duration(process.get("uptimeSeconds", 0))}</span>'
        + (f" &middot; refreshes every {refresh} s" if refresh else "")
        + "</p>"
    )
    body = meta + summary + "".join(section(report) for section in _SECTIONS)
    probed = process["probedSecondsAgo"]
    footer = "just now" if probed < 1 else f"{probed:.0f} s ago"
    reload = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    page = _PAGE.replace("{refresh}", reload)
    return page.replace("{sections}", body).replace("{probed}", footer)


def _e(value: object) -> str:
    return html.escape(str(value))


def _time(iso: str) -> str:
    """``2026-12-05T21:28:53+00:00`` as ``2026-12-05 21:28:53 UTC``."""
    return _e(iso.replace("T", " ").replace("+00:00", " UTC"))


def _title(uuid: str, entry: dict[str, Any]) -> str:
    """The name, or the UUID where there is none; the UUID always shows below."""
    name = entry.get("name")
    return f'<span class="name">{_e(name)}</span>' if name else f"<code>{_e(uuid)}</code>"


def _badge(entry: dict[str, Any]) -> str:
    state = "up" if entry["ok"] else "down"
    return f'<span class="badge {state}">{state}</span>'


def _models_html(report: Report) -> str:
    cards = []
    for uuid, entry in report["models"].items():
        cards.append(
            f'<section class="card" id="model-{_e(uuid)}"><h3>{_badge(entry)} {_title(uuid, entry)}'
            f'</h3><p class="sub"><code>{_e(uuid)}</code> &middot; {_e(entry.get("task", ""))}'
            f" &middot; probe {entry['latencyMs']:.0f} ms</p>"
            f"{_traffic_html(entry.get('traffic'))}"
            f'<p class="detail">{_e(entry["detail"])}</p>{_problems_html(entry)}</section>'
        )
    return _cards("Models", cards)


def _traffic_html(traffic: dict[str, dict[str, Any]] | None) -> str:
    if not traffic:
        return ""
    rows = []
    for window, figures in traffic.items():
        errors = figures["errors"]
        rate = figures["errorRate"]
        error_text = f"{errors}" + (f" ({rate * 100:.0f}%)" if rate else "")
        rows.append(
            f'<tr data-window="{_e(window)}"><th>{_e(window.replace("m", " min"))}</th>'
            f'<td class="num rate">{figures["requestsPerMinute"]:.1f}</td>'
            f'<td class="num errors{" bad" if errors else ""}">{error_text}</td>'
            f'<td class="num p50">{_ms(figures["p50Ms"])}</td>'
            f'<td class="num p95">{_ms(figures["p95Ms"])}</td>'
            f'<td class="num hits">{_percent(figures["cacheHitRate"])}</td></tr>'
        )
    return (
        '<table class="traffic"><thead><tr><th>last</th><th class="num">req/min</th>'
        '<th class="num">errors</th><th class="num">p50</th><th class="num">p95</th>'
        f'<th class="num">cache hits</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _servers_html(report: Report) -> str:
    cards = []
    for uuid, entry in report["servers"].items():
        default = ' <span class="tag">default</span>' if entry.get("isDefault") else ""
        cards.append(
            f'<section class="card" id="server-{_e(uuid)}"><h3>{_badge(entry)}'
            f" {_title(uuid, entry)}{default}</h3>"
            f'<p class="sub"><code>{_e(uuid)}</code> &middot; probe'
            f" {entry['latencyMs']:.0f} ms</p>"
            f'<p class="uri"><code>{_e(entry.get("uri", ""))}</code></p>'
            f'<p class="detail">{_e(entry["detail"])}</p>'
            f"{_token_html(entry.get('token'))}{_problems_html(entry)}</section>"
        )
    return _cards("PACS servers", cards)


def _token_html(token: dict[str, Any] | None) -> str:
    if token is None:
        return ""
    state = token["state"]
    if state == "failing":
        text = f"refresh failing since {_time(token['failingSince'])}: {_e(token['lastFailure'])}"
    elif state == "none":
        text = "no token yet (obtained at the first request that needs one)"
    elif token["expiresAt"] is None:
        text = "valid, no expiry known"
    else:
        text = f"valid until {_time(token['expiresAt'])}" if state == "valid" else "expired"
    css = "bad" if state in ("failing", "expired") else ""
    return f'<p class="token {css}">Access token: {text}</p>'


def _problems_html(entry: dict[str, Any]) -> str:
    parts = []
    breaker = entry.get("breaker")
    if breaker is not None and breaker["state"] != "closed":
        when = (
            f"a trial call in {breaker['retryInSeconds']:.0f} s"
            if breaker["state"] == "open"
            else "the next call is a trial"
        )
        parts.append(
            f'<p class="breaker">circuit breaker {breaker["state"]} after'
            f" {breaker['failures']} failures; {when}: {_e(breaker['lastFailure'])}</p>"
        )
    last = entry.get("lastError")
    if last is not None:
        parts.append(
            f'<p class="last-error">Last error {_time(last["at"])}: {_e(last["message"])}</p>'
        )
    store = entry.get("lastStoreFailure")
    if store is not None:
        parts.append(
            f'<p class="last-error">Last failed store {_time(store.get("at", ""))}:'
            f" {_e(store.get('message', ''))}</p>"
        )
    return "".join(parts)


def _capacity_html(report: Report) -> str:
    capacity, cache = report.get("capacity"), report.get("cache")
    rows = []
    if capacity is not None:
        used, total = capacity["memoryBudgetUsedBytes"], capacity["memoryBudgetBytes"]
        rows.append(
            f'<tr><th>memory budget in use</th><td class="num">{_mib(used)} of {_mib(total)}'
            f" ({used / total * 100 if total else 0:.0f}%)</td></tr>"
            f'<tr><th>inferences running</th><td class="num">{capacity["inferencesRunning"]}'
            f" of at most {capacity['inferencesMax']}</td></tr>"
        )
    if cache is not None:
        if not cache["enabled"]:
            rows.append('<tr><th>result cache</th><td class="num">off</td></tr>')
        else:
            hits = " &middot; ".join(
                f"{_percent(cache[key]['hitRate'])} over {key.replace('m', ' min')}"
                for key in ("5m", "60m")
                if key in cache
            )
            rows.append(
                f'<tr><th>result cache</th><td class="num">{_mib(cache["sizeBytes"])} of'
                f" {_mib(cache['maxBytes'])}</td></tr>"
                f'<tr><th>cache hit rate</th><td class="num" id="cache-hits">{hits}</td></tr>'
            )
    if not rows:
        return ""
    return f'<h2>Capacity</h2><table id="capacity"><tbody>{"".join(rows)}</tbody></table>'


def _jobs_html(report: Report) -> str:
    jobs = report.get("jobs")
    if jobs is None:
        return "<h2>Jobs</h2><p>Off: the result cache is off (--cache-size 0).</p>"
    running = f"{_count(jobs['running'])} of at most {jobs['maxRunning']}"
    if jobs["running"] != jobs["runningHere"]:  # several replicas share the queue
        running = (
            f"{_count(jobs['running'])} in all; here {jobs['runningHere']}"
            f" of at most {jobs['maxRunning']}"
        )
    error = jobs.get("error")
    return (
        '<h2>Jobs</h2><table id="jobs"><tbody>'
        f'<tr><th>queued</th><td class="num">{_count(jobs["queued"])}</td></tr>'
        f'<tr><th>running</th><td class="num">{running}</td></tr>'
        '<tr><th>failed in the last hour</th><td class="num">'
        f"{_count(jobs['failedLastHour'])}</td></tr>"
        "</tbody></table>"
        + ("" if error is None else f'<p class="bad">{html.escape(error)}</p>')
        + '<p><a href="/jobs">Recent jobs</a></p>'
    )


def _count(value: int | None) -> str:
    return "unknown" if value is None else str(value)


def _watcher_html(report: Report) -> str:
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


def _redis_html(report: Report) -> str:
    redis = report.get("redis")
    if redis is None:
        return ""  # no --redis: nothing shared
    badge = "up" if redis["reachable"] is not False else "down"
    last = redis.get("lastError")
    error = f"; last error {last['at']}: {html.escape(last['message'])}" if last else ""
    return (
        f'<h2>Shared state</h2><p id="redis"><span class="badge {badge}">{badge}</span>'
        f" Redis at <code>{html.escape(redis['url'])}</code> since {redis['since']}{error}</p>"
    )


_SECTIONS: list[Callable[[Report], str]] = [
    _models_html,
    _servers_html,
    _capacity_html,
    _jobs_html,
    _watcher_html,
    _redis_html,
]


def _cards(title: str, cards: list[str]) -> str:
    body = "".join(cards) or "<p>none configured</p>"
    return f'<h2>{title}</h2><div class="cards">{body}</div>'


def _ms(value: float | None) -> str:
    if value is None:
        return "&ndash;"
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.1f} s"


def _percent(value: float | None) -> str:
    return "&ndash;" if value is None else f"{value * 100:.0f}%"


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.0f} MiB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60 % 60, seconds // 3600 % 24, seconds // 86400
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{refresh}
<title>model-proxy status</title>
<style>
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:1.5rem auto;max-width:80rem;padding:0 1rem;
color:#222;overflow-wrap:break-word}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem}
h3{font-size:1rem;margin:0 0 .3rem}
.meta{color:#555;margin-top:0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,27rem),1fr));gap:1rem}
.card{border:1px solid #ddd;border-radius:.5rem;padding:.8rem;min-width:0}
.card p{margin:.35rem 0}.sub,.uri,.detail{color:#555;font-size:.85rem}
.name{font-weight:600}code{font-size:.8rem;overflow-wrap:anywhere}
.detail,.last-error,.breaker,.token{overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.35rem .4rem;border-bottom:1px solid #e3e3e3;vertical-align:top}
th{font-weight:600;color:#555}td.num,th.num{text-align:right}td.num{white-space:nowrap}
#capacity td.num{white-space:normal}.traffic tbody th{white-space:nowrap}
.traffic{font-size:.85rem;margin:.4rem 0}.traffic th,.traffic td{padding:.25rem .3rem}
.badge{display:inline-block;padding:.05rem .45rem;border-radius:.8rem;font-size:.75rem;
font-weight:600;color:#fff;vertical-align:middle}.up{background:#2e7d32}.down{background:#c62828}
.tag{display:inline-block;padding:.05rem .45rem;border-radius:.8rem;font-size:.75rem;
background:#1565c0;color:#fff;vertical-align:middle}
.breaker,.last-error,.bad{color:#c62828;font-size:.85rem}.token{font-size:.85rem}
.summary{font-weight:600}.summary.ok{color:#2e7d32}.summary.bad{color:#c62828}
footer{margin-top:2rem;color:#777;font-size:.85rem}
@media (max-width:30rem){body{padding:0 .6rem}.traffic th,.traffic td{padding:.2rem .15rem}}
</style></head><body>
<h1>model-proxy status</h1>
{sections}
<footer>JSON: send <code>Accept: application/json</code>. Probed {probed}.</footer>
</body></html>
"""
