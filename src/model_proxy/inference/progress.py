"""How far one inference has got: what a job reports while it runs (jobs/).

The runner moves ``phase`` along as the model call proceeds and points the
counters at the body pipeline it streams, so a snapshot is always current
without the pipeline knowing anyone watches::

    progress = Progress()
    runner = InferenceRunner(request, state, live, progress=progress)
    ...  # meanwhile, elsewhere: progress.snapshot()
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class Phase(StrEnum):
    """Where a model call is (docs/jobs.md)."""

    QUEUED = "queued"
    RETRIEVING = "retrieving"
    SENDING = "sending"
    WAITING_FOR_MODEL = "waiting-for-model"
    RECEIVING = "receiving"
    STORING = "storing"
    DONE = "done"


class Counters(Protocol):
    """What a body pipeline counts (models/pipeline.py ``BodyPipeline``)."""

    instances_sent: int
    bytes_in: int


@dataclass
class Progress:
    """``instances_total`` comes from the PACS's instance count before the call
    (None when it cannot tell); the sent figures from the pipeline as it sends."""

    phase: Phase = Phase.QUEUED
    instances_total: int | None = None
    counters: Counters | None = None
    # Kept when a pipeline is done with, so the figures stay at their end values.
    _instances_sent: int = 0
    _bytes_sent: int = 0

    @property
    def instances_sent(self) -> int:
        return self.counters.instances_sent if self.counters else self._instances_sent

    @property
    def bytes_sent(self) -> int:
        return self.counters.bytes_in if self.counters else self._bytes_sent

    def follow(self, counters: Counters) -> None:
        self.counters = counters

    def unfollow(self) -> None:
        if self.counters is not None:
            self._instances_sent = self.counters.instances_sent
            self._bytes_sent = self.counters.bytes_in
            self.counters = None

    def snapshot(self) -> dict[str, Any]:
        """The JSON of ``GET /jobs/{id}``'s ``progress``."""
        sent = self.instances_sent
        total = self.instances_total
        if total is not None and sent > total:
            total = sent  # the PACS gained instances after it was counted
        return {
            "phase": self.phase.value,
            "instancesTotal": total,
            "instancesSent": sent,
            "bytesSent": self.bytes_sent,
        }


def instances_hint(fingerprint: str | None) -> int | None:
    """The instance count inside a data fingerprint (cache/keys.py joins one line
    per retrieval), when every line is a QIDO count (pacs/fingerprint.py)."""
    if not fingerprint:
        return None
    total = 0
    for line in fingerprint.split("\n"):
        kind, _, value = line.partition(":")
        if kind != "count" or not value.isdigit():
            return None
        total += int(value)
    return total
