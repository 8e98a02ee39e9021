"""``GET /jobs`` in a browser: recent jobs with progress bars, refreshed every 2 s.

Static HTML; its script reads ``GET /jobs`` as JSON (the same answer, the same
access rules) and draws it, escaping every value it shows.
"""

import base64
import hashlib

JOBS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>model-proxy jobs</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:80rem;padding:0 1rem;color:#222}
h1{font-size:1.5rem}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid #e3e3e3;vertical-align:top}
th{font-weight:600;color:#555}code{font-size:.8rem}progress{width:10rem}
.status{font-weight:600}.succeeded{color:#2e7d32}.failed,.cancelled{color:#c62828}
.running{color:#1565c0}.queued{color:#777}.error{color:#c62828;font-size:.85rem}
footer{margin-top:2rem;color:#777;font-size:.85rem}
</style></head><body>
<h1>model-proxy jobs</h1>
<p id="summary">Loading&hellip;</p>
<table><thead><tr><th>job</th><th>status</th><th>progress</th><th>model</th>
<th>study / series</th><th>created</th></tr></thead><tbody id="jobs"></tbody></table>
<footer>JSON: <code>GET /jobs</code> with <code>Accept: application/json</code>;
see docs/jobs.md.</footer>
<script>
"use strict";
function cell(row, text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  row.appendChild(td);
  return td;
}
function draw(jobs) {
  const body = document.getElementById("jobs");
  body.replaceChildren();
  for (const job of jobs) {
    const row = document.createElement("tr");
    row.className = "job";
    row.dataset.id = job.id;
    row.dataset.status = job.status;
    cell(row, job.id.slice(0, 12), "id");
    cell(row, job.status, "status " + job.status);
    const p = job.progress;
    const td = cell(row, "");
    const bar = document.createElement("progress");
    bar.max = p.instancesTotal || Math.max(p.instancesSent, 1);
    bar.value = job.status === "succeeded" ? bar.max : p.instancesSent;
    td.appendChild(bar);
    td.appendChild(document.createTextNode(
      " " + p.instancesSent + " / " + (p.instancesTotal ?? "?") + " " + p.phase));
    if (job.error) {
      const e = document.createElement("div");
      e.className = "error";
      e.textContent = job.error.code + ": " + job.error.message;
      td.appendChild(e);
    }
    cell(row, job.model.slice(0, 8));
    cell(row, job.study + (job.series ? " / " + job.series : ""));
    cell(row, job.created);
    body.appendChild(row);
  }
  const running = jobs.filter(j => j.status === "running").length;
  const queued = jobs.filter(j => j.status === "queued").length;
  document.getElementById("summary").textContent =
    jobs.length + " recent jobs: " + running + " running, " + queued + " queued.";
}
async function refresh() {
  try {
    const answer = await fetch("/jobs", {headers: {"Accept": "application/json"}});
    const data = await answer.json();
    if (!answer.ok) throw new Error(data.message || answer.statusText);
    draw(data.jobs);
  } catch (error) {
    document.getElementById("summary").textContent = "Cannot read the jobs: " + error.message;
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body></html>
"""


def _script_hash(page: str) -> str:
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    return base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()


# The page's own script, by hash, and its fetch of /jobs; nothing else (docs/security.md).
JOBS_PAGE_CSP = (
    f"default-src 'none'; script-src 'sha256-{_script_hash(JOBS_PAGE)}'; connect-src 'self'; "
    "style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
