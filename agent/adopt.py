"""Re-adoption: FFmpeg runs belong to the OS, not to the agent. A restarted agent finds the runs
its dead horses left (supervisor alive, no exit file), checks that each still holds its job's
lease, and watches it to the end in a thread: it renews the RQ execution, mirrors progress,
honours cancel and timeout, and reports the outcome through the lifecycle under that lease.
Versions agree on this through the run directory and the lease token, nothing else."""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading

import redis

from ffrtmp import lifecycle
from ffrtmp.lifecycle import Lease
from ffrtmp.rqjob import SafeJob, fetch_job
from ffrtmp.rundir import RunDir

from .attempt import Attempt, Fenced
from .pipeline import AgentContext

log = logging.getLogger("ffrtmp.agent.adopt")


def _current(conn: redis.Redis, rd: RunDir, node: str) -> tuple[SafeJob, Lease] | None:
    lease = Lease.parse(rd.job_id, rd.token)
    if lease is None or lease.node != node:
        return None
    job = fetch_job(conn, lease.job_id)
    if job is None:
        return None
    held, _ = lifecycle.holds(conn, lease)
    return (job, lease) if held else None


def adopt(conn: redis.Redis, ctx: AgentContext) -> list[threading.Thread]:
    """Adopt every live run left by this node's previous life; return the watching threads.
    Runs that no longer hold their lease are killed."""
    threads = []
    for rd in RunDir.live(ctx.work_dir):
        found = _current(conn, rd, ctx.node)
        if found is None:
            log.warning("run %s no longer holds its job's lease: killing it", rd.path)
            rd.signal_ffmpeg(signal.SIGKILL)
            continue
        job, lease = found
        encoder = (job.meta or {}).get("encoder")
        job_ctx = dataclasses.replace(ctx, encoders={**ctx.encoders, **({encoder: True} if encoder else {})})
        t = threading.Thread(
            target=_watch_adopted, args=(job, lease, rd, job_ctx), daemon=True, name=f"adopt-{job.id}"
        )
        t.start()
        threads.append(t)
        log.info(
            "adopted run of job %s attempt %d (%s)",
            job.id,
            lease.attempt,
            rd.path,
            extra={"job": job.id, "attempt": lease.attempt, "node": ctx.node},
        )
    return threads


def _watch_adopted(job: SafeJob, lease: Lease, rd: RunDir, ctx: AgentContext) -> None:
    try:
        Attempt(job, lease, job.args[0] if job.args else {}, ctx).resume(rd)
    except Fenced as exc:
        log.warning("adopted job %s was fenced: %s", job.id, exc)
    except Exception:
        log.exception("adopting job %s failed; recovery will requeue it", job.id)


__all__ = ["adopt"]
