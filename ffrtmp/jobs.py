"""Jobs as users see them: submission, the derived state, history, listing and cancel.

One source of truth: RQ's job hash (status, timestamps) plus ``job.meta``. Only the running
attempt writes ``meta`` while a job runs; the history is an append-only Redis list beside the
job, and control signals (cancel) live in their own keys.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from . import keys, lifecycle
from .keys import Retention
from .model import TERMINAL_STATES, JobSpec, JobState
from .queues import queue_for
from .rqjob import TRANSCODE_FUNC, SafeJob, fetch_job, fetch_jobs, rq_queue

__all__ = ["Retention", "SubmitDefaults", "cancel", "get_view", "list_views", "retry", "submit"]

_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # no l/1/o/0: readable over the phone
LIST_SCAN_LIMIT = 2000  # index entries one listing request may look at, whatever it finds


@dataclass(frozen=True)
class SubmitDefaults:
    max_attempts: int = 3
    default_timeout_s: float = 6 * 3600
    cancel_grace_s: float = 30.0
    retention: Retention = field(default_factory=Retention)


def new_job_id() -> str:
    return "j" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))


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


def submit(conn: redis.Redis, spec: JobSpec, defaults: SubmitDefaults) -> dict[str, Any]:
    """Enqueue a validated job in one MULTI: the job and what the lifecycle records beside it
    (indexes, first history line, counters). Returns the job's view (no read-back)."""
    job_id = new_job_id()
    while conn.exists(SafeJob.key_for(job_id)):  # 50 bits of id space: practically never loops
        job_id = new_job_id()
    max_attempts = spec.max_attempts or defaults.max_attempts
    timeout = effective_timeout(spec, defaults.default_timeout_s)
    qname = queue_for(spec.queue, spec.priority, spec.hwaccel)
    payload = spec.model_dump(mode="json", exclude_none=True)
    meta = {
        "schema": keys.SCHEMA_VERSION,
        "state": lifecycle.QUEUED,
        "attempt": 0,
        "max_attempts": max_attempts,
        "timeout": timeout,
        "cancel_grace": defaults.cancel_grace_s,
        "tier": spec.queue,
        "priority": spec.priority,
    }
    now = time.time()
    q = rq_queue(qname, conn)
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
            pipeline=pipe,
        )
        lifecycle.submitted(pipe, job_id, spec.queue, spec.priority, now)
        pipe.execute()
    return job_view(job, read_history(conn, job_id))


def read_history(conn: redis.Redis, job_id: str) -> list[dict[str, Any]]:
    out = []
    for raw in conn.lrange(keys.history_key(job_id), 0, -1):
        try:
            entry = json.loads(raw)
        except ValueError:
            continue  # never trust what Redis holds: a broken line is skipped, not a 500
        if isinstance(entry, dict):
            out.append(entry)
    return out


def _live_progress(raw: bytes | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def job_view(
    job: SafeJob, history: list[dict[str, Any]] | None = None, live_progress: bytes | None = None
) -> dict[str, Any]:
    meta = job.meta if isinstance(job.meta, dict) else {}
    spec = job.args[0] if job.args and isinstance(job.args[0], dict) else {}
    state = JobState(lifecycle.state_of(job, meta))
    progress = _live_progress(live_progress) if state == JobState.running else None
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
        "progress": progress or meta.get("progress"),
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
    return job_view(job, read_history(conn, job_id), conn.get(keys.progress_key(job_id)))


def _page_ids(conn: redis.Redis, index: str, pos: int, count: int) -> list[str]:
    return [i.decode() if isinstance(i, bytes) else i for i in conn.zrevrange(index, pos, pos + count - 1)]


def list_views(
    conn: redis.Redis,
    *,
    state: str | None = None,
    queue: str | None = None,
    node: str | None = None,
    cursor: int = 0,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], int | None]:
    """Newest first. Returns (page, next cursor or None); the cursor is an offset in the index
    read (the state's own index when filtering by state). One request looks at no more than
    ``LIST_SCAN_LIMIT`` entries: a filter that matches little returns a short page and a cursor
    to go on from, never a scan of every job."""
    index = keys.state_index(state) if state else keys.JOBS_INDEX
    out: list[dict[str, Any]] = []
    pos = cursor
    budget = LIST_SCAN_LIMIT
    chunk = min(max(limit * 2, 100), budget)
    while len(out) < limit and budget > 0:
        ids = _page_ids(conn, index, pos, min(chunk, budget))
        if not ids:
            return out, None
        budget -= len(ids)
        jobs = fetch_jobs(conn, ids)
        progress = conn.mget([keys.progress_key(i) for i in ids])
        gone = [jid for jid, j in zip(ids, jobs, strict=True) if j is None]
        for i, job in enumerate(jobs):
            if job is None:
                continue
            view = job_view(job, live_progress=progress[i])
            if state and view["state"] != state:
                continue
            if queue and view["queue"] != queue and view["rq_queue"] != queue:
                continue
            if node and view["node"] != node:
                continue
            out.append(view)
            if len(out) == limit:  # expired ids of this chunk are dropped on a later pass
                nxt = pos + i + 1
                return out, nxt if conn.zcard(index) > nxt else None
        if gone:  # expired by their TTL: drop them from our own index
            conn.zrem(index, *gone)
            pos += len(ids) - len(gone)
        else:
            pos += len(ids)
    return out, pos if conn.zcard(index) > pos else None


def cancel(conn: redis.Redis, job_id: str, requested_by: str = "api") -> tuple[str, dict[str, Any] | None]:
    """Cancel a job: 'canceled' (it was waiting), 'requested' (it is running; its attempt stops
    FFmpeg gracefully and ends it canceled), 'terminal' (nothing to do) or 'missing'."""
    outcome = lifecycle.cancel(conn, job_id, requested_by)
    return outcome, get_view(conn, job_id) if outcome != "missing" else None


def retry(conn: redis.Redis, job_id: str, requested_by: str = "api") -> tuple[str, dict[str, Any] | None]:
    """Re-run a failed, timed-out, canceled or rejected job by hand: 'queued', 'not_retryable'
    or 'missing'. Atomic against concurrent retries and cancels: never enqueued twice."""
    outcome = lifecycle.retry(conn, job_id, requested_by)
    return outcome, get_view(conn, job_id) if outcome != "missing" else None
