"""Re-adoption: FFmpeg runs belong to the OS, not to the agent. A restarted agent finds the runs
its dead horses left (run supervisor alive, no exit file), checks that each is still its job's
current attempt, and watches it to the end in a thread: it keeps the RQ execution alive, mirrors
progress, honours cancel and timeout, and reports the outcome through RQ as the worker would."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading

import psutil
import redis
from rq.job import JobStatus

from ffrtmp.jobs import lease_key
from ffrtmp.rqjob import SERIALIZER, SafeJob, fetch_job, rq_queue

from .pipeline import AgentContext
from .runner import read_json
from .task import Attempt, Fenced, PlatformError, TerminalJobError
from .worker import FleetWorker

log = logging.getLogger("ffrtmp.agent.adopt")


@dataclasses.dataclass
class OrphanRun:
    job_id: str
    attempt: int
    run_dir: str
    runner_pid: int
    ffmpeg_pid: int
    started: float


def live_runs(work_dir: str) -> list[OrphanRun]:
    """Runs whose supervisor is alive and that have not ended."""
    out = []
    runs = os.path.join(work_dir, "runs")
    if not os.path.isdir(runs):
        return out
    for job_id in os.listdir(runs):
        for attempt in os.listdir(os.path.join(runs, job_id)):
            rdir = os.path.join(runs, job_id, attempt)
            started = read_json(os.path.join(rdir, "started.json"))
            if started is None or os.path.exists(os.path.join(rdir, "exit.json")):
                continue
            try:
                proc = psutil.Process(int(started["runner_pid"]))
                # the pid is the supervisor's only if the process is as old as the run
                if proc.create_time() > float(started["time"]) + 1 or proc.status() == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.NoSuchProcess:
                continue
            out.append(
                OrphanRun(
                    job_id,
                    int(attempt),
                    rdir,
                    int(started["runner_pid"]),
                    int(started["ffmpeg_pid"]),
                    float(started["time"]),
                )
            )
    return out


def _is_current(conn: redis.Redis, job: SafeJob, run: OrphanRun, node: str) -> bool:
    meta = job.meta or {}
    if (
        job.get_status() != JobStatus.STARTED
        or meta.get("node") != node
        or meta.get("attempt") != run.attempt
    ):
        return False
    lease = conn.get(lease_key(job.id))
    return lease is not None and lease.decode() == f"{node}/{meta.get('slot') or ''}/{run.attempt}"


def _finish_in_rq(job: SafeJob, worker: FleetWorker, outcome: str, message: str) -> None:
    """Record the end of the job in RQ's registries, through the worker's own handlers."""
    queue = rq_queue(job.origin, job.connection)
    executions = job.get_executions()
    if not executions:
        log.warning("job %s: no RQ execution left to close", job.id)
        return
    execution = executions[0]
    worker.handle_execution_ended(job, queue, 60)
    if outcome == "success":
        worker.handle_job_success(job, queue, queue.started_job_registry, execution)
    else:
        if outcome == "terminal":
            job.retries_left = 0
        worker.handle_job_failure(
            job, queue, queue.started_job_registry, exc_string=message, execution=execution
        )


def adopt(conn: redis.Redis, ctx: AgentContext, boot_id: str) -> list[threading.Thread]:
    """Adopt every live run left by this node's previous life; return the watching threads."""
    threads = []
    worker = None
    for run in live_runs(ctx.work_dir):
        job = fetch_job(conn, run.job_id)
        if job is None or not _is_current(conn, job, run, ctx.node):
            log.warning(
                "run %s/%s is no longer its job's current attempt: stopping it", run.job_id, run.attempt
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.ffmpeg_pid, signal.SIGTERM)
            continue
        if worker is None:
            worker = FleetWorker(
                [rq_queue(job.origin, conn)],
                name=f"{ctx.node}.adopter.{boot_id}",
                connection=conn,
                job_class=SafeJob,
                serializer=SERIALIZER,
                prepare_for_work=False,
            )
        encoder = (job.meta or {}).get("encoder")
        job_ctx = dataclasses.replace(ctx, encoders={**ctx.encoders, **({encoder: True} if encoder else {})})
        t = threading.Thread(
            target=_watch_adopted, args=(job, run, job_ctx, worker), daemon=True, name=f"adopt-{run.job_id}"
        )
        t.start()
        threads.append(t)
        log.info(
            "adopted run of job %s attempt %d (FFmpeg pid %d)",
            run.job_id,
            run.attempt,
            run.ffmpeg_pid,
            extra={"job": run.job_id, "attempt": run.attempt, "node": ctx.node},
        )
    return threads


def _watch_adopted(job: SafeJob, run: OrphanRun, ctx: AgentContext, worker: FleetWorker) -> None:
    attempt = Attempt(job, job.args[0] if job.args else {}, ctx=ctx, adopted=True)
    try:
        attempt.resume(run.runner_pid, run.started)
        _finish_in_rq(job, worker, "success", "")
    except TerminalJobError as exc:
        _finish_in_rq(job, worker, "terminal", str(exc))
    except PlatformError as exc:
        _finish_in_rq(job, worker, "retry", str(exc))
    except Fenced as exc:
        log.warning("adopted job %s was fenced: %s", job.id, exc)
    except Exception:
        log.exception("adopting job %s failed; RQ's recovery will requeue it", job.id)


__all__ = ["OrphanRun", "adopt", "live_runs"]
