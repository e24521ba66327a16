"""The one allow-listed job function (``agent.task.run_job``). It runs in the RQ work horse,
under the lease its worker claimed (``agent.worker.FleetWorker``), and hands the attempt to
``agent.attempt``. Every outcome is settled through ``ffrtmp.lifecycle`` before the horse
exits 0, so RQ's own handlers have nothing left to record."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import redis
from rq import get_current_job

from ffrtmp import lifecycle
from ffrtmp.lifecycle import Lease, Refused

from .attempt import Fenced
from .context import load_context
from .segmented import MalformedJob, attempt_for

log = logging.getLogger("ffrtmp.agent.task")


def run_job(spec: dict[str, Any], segment: dict[str, Any] | None = None) -> None:
    """``segment``: the place of a segment job in its parent (``agent.segmented``)."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_job must run inside an RQ worker")
    lease = Lease.parse(job.id, (job.meta or {}).get("lease"))
    if lease is None:
        raise RuntimeError(f"job {job.id} has no lease: it must be claimed by an ffrtmp worker")
    try:
        attempt = attempt_for(job, lease, load_context())
    except MalformedJob as exc:
        with contextlib.suppress(Refused, redis.RedisError, OSError):
            lifecycle.finish(job.connection, lease, lifecycle.Ending("rejected", "invalid_spec", str(exc)))
        logging.shutdown()
        os._exit(0)
    try:
        attempt.run()
    except Fenced as exc:
        log.warning("job %s attempt %d fenced: %s", job.id, lease.attempt, exc, extra={"job": job.id})
    except Exception as exc:  # a bug here must not leave the job running forever
        log.exception("job %s attempt %d failed inside the agent", job.id, lease.attempt)
        if attempt.abort():  # a retry may run only once this attempt's FFmpeg is gone
            with contextlib.suppress(Refused, redis.RedisError, OSError):
                lifecycle.platform_failure(job.connection, lease, "agent_error", repr(exc)[:500])
    # The lifecycle has recorded everything: leave before RQ writes its own view of the end.
    logging.shutdown()
    os._exit(0)
