"""A job as one JSON document: how the shared queue keeps it in Redis (redis_queue.py).

The same fields as a row of ``jobs.sqlite`` (store.py). The progress is the
runner's snapshot at its last write, so a replica that does not run the job
shows the figures of the one that does.
"""

from __future__ import annotations

from typing import Any

import orjson

from model_proxy.jobs.job import Job, JobStatus
from model_proxy.jobs.spec import JobSpec


def dump_job(job: Job) -> bytes:
    return orjson.dumps(
        {
            "id": job.id,
            "spec": job.spec.dumps(),
            "status": job.status.value,
            "created": job.created,
            "started": job.started,
            "finished": job.finished,
            "attempts": job.attempts,
            "progress": job.progress_json(),
            "error": job.error,
            "resultKey": job.result_key,
            "stored": job.stored,
            "storeError": job.store_error,
        }
    )


def load_job(raw: bytes | str) -> Job:
    record: dict[str, Any] = orjson.loads(raw)
    return Job(
        id=record["id"],
        spec=JobSpec.loads(record["spec"]),
        status=JobStatus(record["status"]),
        created=record["created"],
        started=record["started"],
        finished=record["finished"],
        attempts=record["attempts"],
        error=record["error"],
        result_key=record["resultKey"],
        stored_progress=record["progress"],
        stored=record["stored"],
        store_error=record["storeError"],
    )
