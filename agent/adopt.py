"""Re-adoption: FFmpeg runs belong to the OS, not to the agent. A restarted agent finds the runs
its dead horses left (supervisor alive, no exit file), checks that each still holds its job's
lease, and watches it to the end in a thread: it renews the RQ execution, mirrors progress,
honours cancel and timeout, and reports the outcome through the lifecycle under that lease.
A segmented job's attempt that was following its segments is taken over the same way.
Versions agree on this through the run directory and the lease token, nothing else."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading

import redis

from ffrtmp import lifecycle, timing
from ffrtmp.lifecycle import Lease
from ffrtmp.rqjob import SafeJob, fetch_job
from ffrtmp.rundir import FORMAT, RunDir

from .attempt import Fenced
from .pipeline import AgentContext
from .segmented import attempt_for

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
    for rd in RunDir.adoptable(ctx.work_dir):
        if rd.format > FORMAT:
            log.warning(
                "run %s is in format %d (this agent reads %d): left alone", rd.path, rd.format, FORMAT
            )
            continue
        found = _current(conn, rd, ctx.node)
        if found is None and rd.following() is not None:
            log.info("run %s followed segments under a lease that moved on: left", rd.path)
            rd.end_following()
            continue
        if found is None:
            log.warning("run %s no longer holds its job's lease: killing it", rd.path)
            rd.kill_run(timing.STOP_WAIT_S)
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


def _unpublishable(conn: redis.Redis, rd: RunDir, quiet_s: float) -> bool:
    """Can this run's output never be published? Its supervisor is gone and nobody has watched
    it for ``quiet_s``; and FFmpeg failed, never reported an exit, or the run lost its lease
    (a horse may still be verifying a clean exit, but only under its lease)."""
    if rd.runner_alive() or rd.ffmpeg_alive() or rd.owner_age() < quiet_s:
        return False
    ended = rd.exit()
    if ended is None or ended.get("returncode") != 0:
        return True
    lease = Lease.parse(rd.job_id, rd.token)
    return lease is None or not lifecycle.holds(conn, lease)[0]


def sweep_partials(conn: redis.Redis, work_dir: str, quiet_s: float) -> int:
    """Remove the temporary outputs of this node's runs that can never be published: those
    whose watchers died with them (an agent killed with its supervisor) on a job that then ran
    out of attempts, which no later attempt would clean. Returns how many were removed."""
    removed = 0
    for rd in RunDir.all(work_dir):
        path = rd.partial()
        if path is None or not os.path.lexists(path) or not _unpublishable(conn, rd, quiet_s):
            continue
        log.warning("removing %s, left by the dead run %s", path, rd.path)
        rd.discard_partial()
        removed += 1
    return removed


def _watch_adopted(job: SafeJob, lease: Lease, rd: RunDir, ctx: AgentContext) -> None:
    try:
        attempt_for(job, lease, ctx).resume(rd)
    except Fenced as exc:
        log.warning("adopted job %s was fenced: %s", job.id, exc)
    except Exception:
        log.exception("adopting job %s failed; recovery will requeue it", job.id)


__all__ = ["adopt", "sweep_partials"]
