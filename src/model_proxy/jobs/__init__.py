"""Inference jobs: ``POST /jobs`` and ``Prefer: respond-async`` run an inference in the
background, with progress, cancel and a durable SQLite store (docs/jobs.md).

``spec.py`` (what a job asks for), ``job.py`` (its state), ``store.py`` (SQLite),
``manager.py`` (the queue and the runs). The routes are in routes/jobs.py.
"""

from model_proxy.jobs.job import Job, JobStatus
from model_proxy.jobs.manager import JobManager, JobPolicy
from model_proxy.jobs.spec import JobSpec
from model_proxy.jobs.store import JobStore

__all__ = ["Job", "JobManager", "JobPolicy", "JobSpec", "JobStatus", "JobStore"]
