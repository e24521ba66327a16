"""Jobs as users see them: submission, the derived state, history, listing and cancel.

One source of truth: RQ's job hash (status, timestamps) plus ``job.meta``. Only the running
attempt writes ``meta`` while a job runs; the history is an append-only Redis list beside the
job, and control signals (cancel) live in their own keys.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from rq import Retry
from rq.job import JobStatus

from .model import TERMINAL_STATES, JobSpec, JobState
from .queues import queue_for
from .rqjob import TRANSCODE_FUNC, SafeJob, fetch_job, fetch_jobs, rq_queue

JOBS_INDEX = "ffrtmp:jobs"  # zset id -> created unix time
# zset id -> when it was (re)enqueued; cleared when an attempt starts. RQ workers that listen on
# several queues dequeue with a plain BLPOP, so a worker killed between the pop and registering
# the job would lose it; the recovery loop uses this index to find and requeue such jobs.
PENDING = "ffrtmp:pending"
SUBMITTED_COUNTER = "ffrtmp:stats:submitted"  # hash "<tier>.<priority>" -> count
_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # no l/1/o/0: readable over the phone


def history_key(job_id: str) -> str:
    return f"ffrtmp:job:{job_id}:history"


def cancel_key(job_id: str) -> str:
    return f"ffrtmp:job:{job_id}:cancel"


def lease_key(job_id: str) -> str:
    """The running attempt's fencing token ("<node>/<slot>/<attempt>")."""
    return f"ffrtmp:job:{job_id}:lease"


def logs_key(job_id: str) -> str:
    return f"ffrtmp:job:{job_id}:logs"


@dataclass(frozen=True)
class Retention:
    finished_s: int = 7 * 24 * 3600
    failed_s: int = 30 * 24 * 3600


@dataclass(frozen=True)
class SubmitDefaults:
    max_attempts: int = 3
    default_timeout_s: float = 6 * 3600
    cancel_grace_s: float = 30.0
    retention: Retention = Retention()


def new_job_id() -> str:
    return "j" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))


def utcnow_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def effective_timeout(spec: JobSpec, default_s: float) -> float:
    if spec.timeout is not None:
        return spec.timeout
    if spec.duration is not None:
        # realtime work runs as long as its duration; give encodes generous headroom
        return min(max(default_s, spec.duration * 4 + 600), 7 * 24 * 3600)
    return default_s


def history_entry(frm: str | None, to: str, reason: str, node: str | None = None, attempt: int = 0) -> str:
    return json.dumps(
        {"time": utcnow_iso(), "from": frm, "to": to, "reason": reason, "node": node, "attempt": attempt},
        separators=(",", ":"),
    )


def submit(conn: redis.Redis, spec: JobSpec, defaults: SubmitDefaults) -> dict[str, Any]:
    """Enqueue a validated job in one MULTI: the job, its index entry and its first history
    line. Returns the job's view (built from what was written: no read-back)."""
    job_id = new_job_id()
    while conn.exists(SafeJob.key_for(job_id)):  # 50 bits of id space: practically never loops
        job_id = new_job_id()
    max_attempts = spec.max_attempts or defaults.max_attempts
    timeout = effective_timeout(spec, defaults.default_timeout_s)
    qname = queue_for(spec.queue, spec.priority, spec.hwaccel)
    payload = spec.model_dump(mode="json", exclude_none=True)
    meta = {
        "attempt": 0,
        "max_attempts": max_attempts,
        "timeout": timeout,
        "cancel_grace": defaults.cancel_grace_s,
        "tier": spec.queue,
        "priority": spec.priority,
    }
    now = time.time()
    q = rq_queue(qname, conn)
    first = history_entry(None, "queued", "submitted")
    with conn.pipeline() as pipe:
        job = q.enqueue_call(
            TRANSCODE_FUNC,
            args=[payload],
            job_id=job_id,
            description=f"{spec.scenario} {job_id}",
            # RQ's own SIGALRM is only a backstop: the horse enforces `timeout` itself with
            # SIGTERM, grace, SIGKILL and reports timed_out.
            timeout=int(timeout + defaults.cancel_grace_s + 120),
            result_ttl=defaults.retention.finished_s,
            failure_ttl=defaults.retention.failed_s,
            meta=meta,
            retry=Retry(max=max_attempts - 1) if max_attempts > 1 else None,
            pipeline=pipe,
        )
        pipe.zadd(JOBS_INDEX, {job_id: now})
        pipe.zadd(PENDING, {job_id: now})
        pipe.rpush(history_key(job_id), first)
        pipe.hincrby(SUBMITTED_COUNTER, f"{spec.queue}.{spec.priority}", 1)
        pipe.execute()
    return job_view(job, [json.loads(first)])


def derive_state(status: str | None, meta: dict[str, Any]) -> JobState:
    outcome = meta.get("outcome")
    if status in (JobStatus.QUEUED, JobStatus.DEFERRED):
        return JobState.queued
    if status == JobStatus.SCHEDULED:
        return JobState.retrying if meta.get("attempt", 0) > 0 else JobState.queued
    if status == JobStatus.STARTED:
        return JobState.running
    if status == JobStatus.FINISHED:
        return JobState.completed
    if status in (JobStatus.CANCELED, JobStatus.STOPPED):
        return JobState.canceled
    if status == JobStatus.FAILED:
        if outcome in {s.value for s in TERMINAL_STATES}:
            return JobState(outcome)
        return JobState.failed
    return JobState.queued


def read_history(conn: redis.Redis, job_id: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in conn.lrange(history_key(job_id), 0, -1)]


def job_view(job: SafeJob, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    meta = job.meta or {}
    spec = job.args[0] if job.args else {}
    status = job.get_status(refresh=False)
    state = derive_state(status, meta)
    view: dict[str, Any] = {
        "id": job.id,
        "state": state.value,
        "scenario": spec.get("scenario"),
        "queue": spec.get("queue", "default"),
        "priority": spec.get("priority", "medium"),
        "hwaccel": spec.get("hwaccel", "auto"),
        "rq_queue": job.origin,
        "node": meta.get("node"),
        "slot": meta.get("slot"),
        "attempts": meta.get("attempt", 0),
        "max_attempts": meta.get("max_attempts"),
        "progress": meta.get("progress"),
        "error": meta.get("error"),
        "created_at": _iso(job.created_at),
        "started_at": meta.get("started_at") or _iso(job.started_at),
        "ended_at": meta.get("ended_at") or (_iso(job.ended_at) if state in TERMINAL_STATES else None),
        "input": spec.get("input"),
        "output": meta.get("output") or spec.get("output"),
        "result": meta.get("result"),
        "labels": spec.get("labels", {}),
        "spec": spec,
    }
    if history is not None:
        view["history"] = history
    return view


def get_view(conn: redis.Redis, job_id: str) -> dict[str, Any] | None:
    job = fetch_job(conn, job_id)
    if job is None:
        return None
    return job_view(job, read_history(conn, job_id))


def list_views(
    conn: redis.Redis,
    *,
    state: str | None = None,
    queue: str | None = None,
    node: str | None = None,
    cursor: int = 0,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], int | None]:
    """Newest first. Returns (page, next cursor or None). The cursor is an offset in the index."""
    out: list[dict[str, Any]] = []
    pos = cursor
    chunk = max(limit * 2, 100)
    while len(out) < limit:
        ids = [
            i.decode() if isinstance(i, bytes) else i
            for i in conn.zrevrange(JOBS_INDEX, pos, pos + chunk - 1)
        ]
        if not ids:
            return out, None
        jobs = fetch_jobs(conn, ids)
        gone = [jid for jid, j in zip(ids, jobs, strict=True) if j is None]
        for i, job in enumerate(jobs):
            if job is None:
                continue
            view = job_view(job)
            if state and view["state"] != state:
                continue
            if queue and view["queue"] != queue and view["rq_queue"] != queue:
                continue
            if node and view["node"] != node:
                continue
            out.append(view)
            if len(out) == limit:
                nxt = pos + i + 1
                return out, nxt if conn.zcard(JOBS_INDEX) > nxt else None
        if gone:  # expired by their TTL: drop them from our own index
            conn.zrem(JOBS_INDEX, *gone)
            pos += len(ids) - len(gone)
        else:
            pos += len(ids)
    return out, pos


def cancel(conn: redis.Redis, job_id: str, requested_by: str = "api") -> tuple[str, dict[str, Any] | None]:
    """Cancel a job. Returns (outcome, view): outcome is 'canceled' (it was queued and is now
    canceled), 'requested' (it is running; its attempt stops FFmpeg and ends it canceled),
    'terminal' (already finished: nothing to do) or 'missing'."""
    job = fetch_job(conn, job_id)
    if job is None:
        return "missing", None
    state = derive_state(job.get_status(), job.meta or {})
    if state in TERMINAL_STATES:
        return "terminal", get_view(conn, job_id)
    # Whoever removes the id from the queue list owns the job: BLPOP and LREM are atomic.
    removed = conn.lrem(rq_queue(job.origin, conn).key, 0, job_id)
    if removed:
        job.meta["outcome"] = "canceled"
        job.meta["ended_at"] = utcnow_iso()
        job.save_meta()
        job.cancel()
        with conn.pipeline() as pipe:
            pipe.rpush(
                history_key(job_id), history_entry(state.value, "canceled", f"canceled by {requested_by}")
            )
            pipe.expire(history_key(job_id), job.failure_ttl or Retention().failed_s)
            pipe.execute()
        return "canceled", get_view(conn, job_id)
    # Dequeued already (or about to start): signal the attempt; it stops FFmpeg gracefully.
    conn.set(cancel_key(job_id), requested_by, ex=7 * 24 * 3600)
    return "requested", get_view(conn, job_id)


RETRYABLE_STATES = frozenset({JobState.failed, JobState.timed_out, JobState.canceled, JobState.rejected})


def retry(conn: redis.Redis, job_id: str, requested_by: str = "api") -> tuple[str, dict[str, Any] | None]:
    """Re-run a failed, timed-out, canceled or rejected job by hand, as its next attempt.
    Returns (outcome, view): 'queued', 'not_retryable' or 'missing'. Atomic against concurrent
    retries and cancels (WATCH on the job): a job is never enqueued twice."""
    from redis.exceptions import WatchError
    from rq.registry import CanceledJobRegistry, FailedJobRegistry

    while True:
        job = fetch_job(conn, job_id)
        if job is None:
            return "missing", None
        with conn.pipeline() as pipe:
            try:
                pipe.watch(job.key)
                state = derive_state(job.get_status(), job.meta or {})
                if state not in RETRYABLE_STATES:
                    pipe.unwatch()
                    return "not_retryable", get_view(conn, job_id)
                meta = job.meta
                meta.update(outcome=None, error=None, ended_at=None, progress=None, result=None, stop=None)
                meta["manual_retries"] = int(meta.get("manual_retries", 0)) + 1
                # a manual run gets the platform retries a fresh submission would
                job.retries_left = max(0, int(meta.get("max_attempts") or 1) - 1)
                pipe.multi()
                FailedJobRegistry(job.origin, connection=conn).remove(job, pipeline=pipe)
                CanceledJobRegistry(job.origin, connection=conn).remove(job, pipeline=pipe)
                pipe.delete(cancel_key(job_id))
                rq_queue(job.origin, conn).enqueue_job(job, pipeline=pipe)
                pipe.zadd(PENDING, {job_id: time.time()})
                pipe.rpush(
                    history_key(job_id),
                    history_entry(
                        state.value, "queued", f"retried by {requested_by}", None, int(meta.get("attempt", 0))
                    ),
                )
                pipe.persist(history_key(job_id))
                pipe.persist(logs_key(job_id))
                pipe.execute()
            except WatchError:
                continue  # the job changed under us (a worker, a cancel, another retry): look again
        return "queued", get_view(conn, job_id)


def fresh_meta(job: Any) -> dict[str, Any]:
    """The job's meta as Redis has it now (an attempt writes it from another process)."""
    raw = job.connection.hget(job.key, "meta")
    return job.serializer.loads(raw) if raw else {}


def recorded_outcome(meta: dict[str, Any]) -> str | None:
    """The outcome the job's current attempt wrote, or None while it has not ended. A worker
    may die between that write and telling RQ."""
    outcome = meta.get("outcome")
    return outcome if outcome in {s.value for s in TERMINAL_STATES} else None


def settle_completed(job: Any, meta: dict[str, Any], worker: Any, queue: Any, execution: Any) -> bool:
    """Record in RQ the success of an attempt whose ``meta`` (fresh) says ``completed`` but whose
    worker (or horse) died before telling RQ, as that worker would have. RQ would otherwise treat
    the job as abandoned and requeue it, and a finished job would run again. False when the
    attempt did not complete (or RQ's execution record is gone: then the caller fails it without
    a retry, and the job's view still says 'completed' from its meta)."""
    if execution is None or recorded_outcome(meta) != "completed":
        return False
    job.meta = meta
    if job.ended_at is None:
        job.ended_at = datetime.now(UTC)
    worker.handle_job_success(job, queue, queue.started_job_registry, execution)
    return True
