"""The prefetch watcher: new studies on a PACS become jobs, before anyone opens them.

Every ``--watch-interval`` seconds, for each server a rule of rules.json applies to,
the watcher lists the studies of the lookback window (prefetch/discovery.py). A study
counts as arrived once its instance count is the same as one poll before (a study
still being sent is left alone until it stops growing). An arrived study is matched
against the rules, at study level or series by series, and each match becomes a job
(jobs/manager.py) whose result lands in the result cache under the key of the
viewer's GET. The ledger (prefetch/ledger.py; with ``--redis`` shared by the replicas,
prefetch/shared_ledger.py) keeps what ran on which data, so a study runs once per rule
unless it changes, across restarts and watcher failovers too. A ledger that cannot be
read or written leaves the study for a later poll: never run a study twice.

A PACS that cannot be asked is logged once, shown on /status, and asked again next
interval; nothing here stops the proxy. Only the replica whose ``WatcherRole`` says
so polls (prefetch/role.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from model_proxy.config import PrefetchRule, RuleLevel
from model_proxy.errors import ProxyError
from model_proxy.jobs import JobManager, JobSpec
from model_proxy.pacs.qido import Found
from model_proxy.pacs.source import DicomSource
from model_proxy.prefetch.discovery import Discovery, discovery_for
from model_proxy.prefetch.ledger import LedgerUnavailable, PrefetchLedger, RunKey
from model_proxy.prefetch.role import WatcherRole
from model_proxy.runtime.reload import LiveState
from model_proxy.runtime.state import ProxyState

logger = logging.getLogger(__name__)

# Called once per prefetch job: (rule, server id); the metrics count them.
JobObserver = Callable[[PrefetchRule, str], None]


@dataclass(frozen=True)
class WatchPolicy:
    interval: float  # seconds between polls
    lookback_days: int  # studies of today and this many days before
    max_studies: int  # studies listed per server and poll, at most


@dataclass
class ServerWatch:
    """What the watcher knows of one server: for the next poll and for /status."""

    last_poll: float | None = None
    polls: int = 0  # since start-up, answered or not
    ok: bool | None = None
    error: str | None = None
    truncated: bool = False
    # Study -> instance count at the last poll: unchanged at the next one = arrived.
    counts: dict[str, int] = field(default_factory=dict)
    # Study -> the count it was matched at: not looked at again until it changes.
    matched: dict[str, int] = field(default_factory=dict)
    # A discovery keeps what it learnt (a folder's headers) from poll to poll.
    discovery: Discovery | None = None
    searched: DicomSource | None = None  # the source it searches (a reload replaces it)

    def to_json(self) -> dict[str, Any]:
        return {
            "lastPoll": _iso(self.last_poll),
            "polls": self.polls,
            "ok": self.ok,
            "error": self.error,
            "studiesSeen": len(self.counts),
            "truncated": self.truncated,
        }


class PrefetchWatcher:
    def __init__(
        self,
        live: LiveState,
        jobs: JobManager,
        ledger: PrefetchLedger,
        policy: WatchPolicy,
        role: WatcherRole,
        on_job: JobObserver | None = None,
    ) -> None:
        self._live = live
        self._jobs = jobs
        self._ledger = ledger
        self.policy = policy
        self._role = role
        self._on_job = on_job
        self._servers: dict[str, ServerWatch] = {}
        self._jobs_started: Counter[str] = Counter()
        self._watching: bool | None = None
        self._task: asyncio.Task[None] | None = None
        self._polling = asyncio.Lock()  # one poll at a time, whoever starts it
        self._ledger_failing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._role.release()
        await self._ledger.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # the loop must outlive any one poll's surprise
                logger.exception("prefetch: a poll failed unexpectedly; polling again later")
            await asyncio.sleep(self.policy.interval)

    async def poll(self) -> None:
        """One round over every server a rule applies to, on the config in force."""
        state = self._live.current
        async with self._polling, self._live.hold(state):
            rules = state.config.rules
            if not rules:
                self._servers.clear()
                return
            self._watching = await self._role.is_watcher()
            if not self._watching:
                return
            watched = [s for s in state.config.servers if any(r.applies_to(s) for r in rules)]
            for server_id in list(self._servers):
                if server_id not in watched:
                    del self._servers[server_id]
            for server_id in watched:
                server_rules = [rule for rule in rules if rule.applies_to(server_id)]
                await self._poll_server(state, server_id, server_rules)

    async def _poll_server(
        self, state: ProxyState, server_id: str, rules: list[PrefetchRule]
    ) -> None:
        watch = self._servers.setdefault(server_id, ServerWatch())
        source = state.sources[server_id]
        if watch.discovery is None or watch.searched is not source:
            watch.discovery = discovery_for(
                source,
                lookback_days=self.policy.lookback_days,
                max_studies=self.policy.max_studies,
            )
            watch.searched = source
        discovery = watch.discovery
        try:
            await self._search(watch, discovery, source.label, server_id, rules)
        finally:
            watch.last_poll = time.time()
            watch.polls += 1

    async def _search(
        self,
        watch: ServerWatch,
        discovery: Discovery | None,
        label: str,
        server_id: str,
        rules: list[PrefetchRule],
    ) -> None:
        if discovery is None:
            watch.ok, watch.error = False, f"{label} cannot be searched"
            return
        keywords = sorted({keyword for rule in rules for keyword in rule.keywords})
        try:
            page = await discovery.studies(keywords)
        except ProxyError as exc:
            self._failed(watch, label, exc)
            return
        if watch.ok is False:
            logger.info("prefetch: %s answers again", label)
        watch.ok, watch.error = True, None
        if page.truncated and not watch.truncated:
            logger.warning(
                "prefetch: %s lists more than %d studies in the lookback window; only"
                " the first %d are watched",
                label,
                self.policy.max_studies,
                self.policy.max_studies,
            )
        watch.truncated = page.truncated
        previous, watch.counts = watch.counts, {s.uid: s.instances for s in page.found}
        watch.matched = {uid: n for uid, n in watch.matched.items() if uid in watch.counts}
        for study in page.found:
            arrived = study.instances > 0 and previous.get(study.uid) == study.instances
            if not arrived or watch.matched.get(study.uid) == study.instances:
                continue
            try:
                await self._match(discovery, server_id, study, rules, keywords)
            except ProxyError as exc:
                self._failed(watch, label, exc)
                return  # the same study is looked at again next poll
            except LedgerUnavailable as exc:
                self._ledger_failed(exc)
                return  # this study and the rest wait for the next poll: no use asking now
            watch.matched[study.uid] = study.instances

    def _failed(self, watch: ServerWatch, label: str, exc: ProxyError) -> None:
        if watch.ok is not False:  # once per outage, not once per poll
            logger.warning(
                "prefetch: %s; asking again every %g s", exc.message, self.policy.interval
            )
        watch.ok, watch.error = False, exc.message

    def _ledger_failed(self, exc: LedgerUnavailable) -> None:
        if not self._ledger_failing:  # once per outage, not once per poll
            logger.warning("prefetch: %s; new studies wait until it answers", exc)
        self._ledger_failing = True

    def _ledger_answers(self) -> None:
        if self._ledger_failing:
            logger.info("prefetch: the ledger answers again")
        self._ledger_failing = False

    async def _match(
        self,
        discovery: Discovery,
        server_id: str,
        study: Found,
        rules: list[PrefetchRule],
        keywords: list[str],
    ) -> None:
        series = await discovery.series(study.uid, keywords)
        for rule in rules:
            if rule.level is RuleLevel.STUDY:
                everything = [study.attributes, *(one.attributes for one in series)]
                if rule.matches(everything, study.instances):
                    await self._run_once(rule, server_id, study.uid, None, study.instances)
                continue
            for one in series:
                # A series is matched with the study it belongs to (StudyDescription).
                if rule.matches([{**study.attributes, **one.attributes}], one.instances):
                    await self._run_once(rule, server_id, study.uid, one.uid, one.instances)

    async def _run_once(
        self, rule: PrefetchRule, server_id: str, study: str, series: str | None, count: int
    ) -> None:
        """Submit the rule's job unless it ran on this very data before.

        The entry is written before the job is submitted: a ledger that cannot be
        written raises LedgerUnavailable with nothing submitted, so a study never runs
        twice for want of its entry (a job without one would run again next poll).
        """
        key = RunKey(rule.name, server_id, study, series)
        fingerprint = f"{rule.model}:{rule.level}:{count}"
        done = await self._ledger.fingerprint(key)
        self._ledger_answers()
        if done == fingerprint:
            return
        await self._ledger.record(key, fingerprint, "")
        try:
            job = await self._jobs.submit(
                JobSpec(
                    model=rule.model,
                    study=study,
                    series=series,
                    server=server_id,
                    store=rule.store,
                    caller=f"prefetch rule {rule.name}",
                )
            )
        except BaseException:
            # Not submitted: take the entry back so that the next poll runs it.
            with contextlib.suppress(LedgerUnavailable):
                await self._ledger.forget(key)
            raise
        with contextlib.suppress(LedgerUnavailable):  # the entry already says it ran
            await self._ledger.record(key, fingerprint, job.id)
        self._jobs_started[rule.name] += 1
        if self._on_job is not None:
            self._on_job(rule, server_id)
        logger.info("prefetch rule %r: job %s started", rule.name, job.id)

    def status(self) -> dict[str, Any]:
        """For /status: the watcher's settings, each server's last poll, jobs by rule
        (of the config in force, which the next poll uses)."""
        rules = self._live.current.config.rules
        return {
            "on": bool(rules),
            "detail": "watching" if rules else "no rules (rules.json)",
            "intervalSeconds": self.policy.interval,
            "lookbackDays": self.policy.lookback_days,
            "rules": len(rules),
            "role": self._role.description,
            "watching": self._watching,
            "servers": {server: watch.to_json() for server, watch in self._servers.items()},
            "jobsStarted": {rule.name: self._jobs_started[rule.name] for rule in rules},
        }


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")
