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
    attempt.leave_slot = _leave_slot
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


def _leave_slot() -> bool:
    """FFmpeg exited cleanly and what is left is to verify its output, publish it and record
    the end: a fork of this horse does that, and the horse exits 0 now, so its slot starts the
    next job without waiting for an ffprobe. Returns in the fork, which finishes the attempt
    under its lease as the horse would have (renewing the RQ execution meanwhile); it is no
    horse of the worker any more and outlives it, as the run supervisor does (the agent's own
    stop waits for it: ``concluding.json``). If it dies before the end is recorded, the job's
    execution expires and recovery runs the job again (FFmpeg is gone; an output it had
    already published is this job's own, which the retry replaces). Without a fork the horse
    finishes itself (False)."""
    try:
        pid = os.fork()
    except OSError:
        return False
    if pid:
        os._exit(0)  # RQ takes a clean exit as the job done: the lifecycle records the rest
    os.setsid()  # out of the horse's process group, which a cold stop of the slot kills
    return True
