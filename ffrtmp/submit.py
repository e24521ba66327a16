"""Submission: one job, or a batch of up to ``MAX_BATCH``, either of them optionally under an
Idempotency-Key. A batch is all or nothing: every spec is validated (by the caller) and every
pin checked before anything is written, and all jobs are enqueued in one MULTI, so a batch
either exists whole or not at all. Views are built from what was written (no read-back)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from . import keys, lifecycle
from .jobs import get_view, job_view, new_job_id
from .keys import Retention
from .model import JobSpec, SubmissionError
from .presets import HW_FAMILIES
from .queues import queue_for
from .rqjob import TRANSCODE_FUNC, SafeJob, rq_queue

MAX_BATCH = 1000
PARENT_LABEL = lifecycle.PARENT_LABEL


@dataclass(frozen=True)
class SubmitDefaults:
    max_attempts: int = 3
    default_timeout_s: float = 6 * 3600
    cancel_grace_s: float = 30.0
    retention: Retention = field(default_factory=Retention)


class IdempotencyConflict(Exception):
    """An Idempotency-Key already used for a different request."""


def effective_timeout(spec: JobSpec, default_s: float) -> float:
    if spec.timeout is not None:
        return spec.timeout
    if spec.duration is not None:
        # realtime work runs as long as its duration; give encodes generous headroom
        return min(max(default_s, spec.duration * 4 + 600), 7 * 24 * 3600)
    return default_s


def _check_pin(spec: JobSpec, raw: bytes | None, where: str = "node") -> None:
    """A job pinned to a node needs that node up (its record alive, not stopped) and, for a
    hardware encoder family, proven there: otherwise it would wait in its queue for nothing."""
    try:
        rec = json.loads(raw) if raw is not None else None
    except ValueError:
        rec = None
    if not isinstance(rec, dict) or rec.get("stopped"):
        raise SubmissionError(where, f"node '{spec.node}' is not up")
    caps = rec.get("capabilities")
    if spec.hwaccel in HW_FAMILIES and not (isinstance(caps, list) and spec.hwaccel in caps):
        raise SubmissionError(where, f"node '{spec.node}' has no proven {spec.hwaccel} encoder")


def check_pins(conn: redis.Redis, specs: list[JobSpec], field_of: Callable[[int], str]) -> None:
    """Every pinned spec's node, read in one MGET."""
    pinned = [(i, s) for i, s in enumerate(specs) if s.node]
    if not pinned:
        return
    records = conn.mget([keys.node_key(str(s.node)) for _, s in pinned])
    for (i, spec), raw in zip(pinned, records, strict=True):
        _check_pin(spec, raw, field_of(i))


def _free_job_ids(conn: redis.Redis, n: int) -> list[str]:
    """``n`` ids no job has (50 bits each: a collision practically never happens)."""
    ids: list[str] = []
    while len(ids) < n:
        fresh = list({new_job_id() for _ in range(n - len(ids))} - set(ids))
        with conn.pipeline(transaction=False) as pipe:
            for i in fresh:
                pipe.exists(SafeJob.key_for(i))
            taken = pipe.execute()
        ids += [i for i, t in zip(fresh, taken, strict=True) if not t]
    return ids


def _enqueue(
    pipe: redis.client.Pipeline, conn: redis.Redis, spec: JobSpec, defaults: SubmitDefaults, job_id: str
) -> SafeJob:
    """Queue RQ's job in ``pipe`` (the lifecycle's records are written for the whole batch)."""
    timeout = effective_timeout(spec, defaults.default_timeout_s)
    qname = queue_for(spec.queue, spec.priority, spec.hwaccel, spec.node, planner=spec.segmented)
    meta = {
        "schema": keys.SCHEMA_VERSION,
        "state": lifecycle.QUEUED,
        "attempt": 0,
        "max_attempts": spec.max_attempts or defaults.max_attempts,
        "timeout": timeout,
        "cancel_grace": defaults.cancel_grace_s,
        "tier": spec.queue,
        "priority": spec.priority,
    }
    job = rq_queue(qname, conn).enqueue_call(
        TRANSCODE_FUNC,
        args=[spec.model_dump(mode="json", exclude_none=True)],
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
    if spec.node:
        pipe.sadd(keys.PINNED_QUEUES, qname)
    return job


def segment_jobs(
    conn: redis.Redis, parent: SafeJob, spec: JobSpec, places: list[dict[str, Any]], run: int = 0
) -> list[SafeJob]:
    """The child jobs of a segmented job, one per place (``{"index", "start", "end"}``), made
    (not saved: ``lifecycle.plan_segments`` enqueues them under the parent's lease). Each is an
    ordinary job of the parent's class with the parent's budget; its spec is the parent's
    without the segmentation, its place the job function's second argument."""
    meta = parent.meta if isinstance(parent.meta, dict) else {}
    child_spec = spec.model_dump(mode="json", exclude_none=True)
    for drop in ("segmented", "segment_seconds", "callback_url"):
        child_spec.pop(drop, None)
    child_spec["labels"] = {PARENT_LABEL: parent.id}  # its listing: ?label=ffrtmp.parent=<id>
    child_spec["overwrite"] = True  # a segment's file is only ever its own attempts'
    qname = queue_for(spec.queue, spec.priority, spec.hwaccel)
    child_meta = {
        "schema": keys.SCHEMA_VERSION,
        "state": lifecycle.QUEUED,
        "attempt": 0,
        **{k: meta[k] for k in ("max_attempts", "timeout", "cancel_grace", "tier", "priority") if k in meta},
    }
    return [
        rq_queue(qname, conn).create_job(
            TRANSCODE_FUNC,
            args=[child_spec, {**place, "parent": parent.id}],
            job_id=keys.child_id(parent.id, int(place["index"]), run),
            description=f"{spec.scenario} {parent.id} segment {place['index']}",
            timeout=parent.timeout,
            result_ttl=parent.result_ttl,
            failure_ttl=parent.failure_ttl,
            meta=dict(child_meta),
        )
        for place in places
    ]


def submit_many(
    conn: redis.Redis,
    specs: list[JobSpec],
    defaults: SubmitDefaults,
    job_ids: list[str] | None = None,
    *,
    numbered: bool = True,
) -> list[dict[str, Any]]:
    """Enqueue validated specs all or nothing, in one MULTI. A pin that fails names its item
    (``jobs[3].node``; just ``node`` when not ``numbered``) and nothing is enqueued."""
    if not 1 <= len(specs) <= MAX_BATCH:
        raise SubmissionError("jobs", f"a batch holds 1 to {MAX_BATCH} jobs, not {len(specs)}")
    check_pins(conn, specs, lambda i: f"jobs[{i}].node" if numbered else "node")
    ids = job_ids or _free_job_ids(conn, len(specs))
    with conn.pipeline() as pipe:
        jobs = [_enqueue(pipe, conn, s, defaults, i) for s, i in zip(specs, ids, strict=True)]
        classes = [(j.id, s.queue, s.priority, j.origin, s.labels) for s, j in zip(specs, jobs, strict=True)]
        first = lifecycle.submitted(pipe, classes, time.time())
        pipe.execute()
    history = [json.loads(first)]
    return [job_view(j, history) for j in jobs]


def submit(
    conn: redis.Redis, spec: JobSpec, defaults: SubmitDefaults, job_id: str | None = None
) -> dict[str, Any]:
    """Enqueue one validated job in one MULTI; returns its view."""
    return submit_many(conn, [spec], defaults, [job_id] if job_id else None, numbered=False)[0]


def _digest(specs: list[JobSpec]) -> str:
    """What a repeat must match: one spec as such (as records of single submits always were), a
    batch as the list."""
    dumps = [s.model_dump(mode="json") for s in specs]
    body = dumps[0] if len(dumps) == 1 else dumps
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def submit_many_once(
    conn: redis.Redis,
    specs: list[JobSpec],
    defaults: SubmitDefaults,
    scope: str,
    key: str,
    *,
    numbered: bool = True,
) -> tuple[list[dict[str, Any]], bool]:
    """Submit under an Idempotency-Key: the first request with this key (per API key, for 24 h)
    creates the jobs; a repeat of it returns them, never a second set. Returns (views,
    created). The key is claimed before anything is enqueued (SET NX), so two racing repeats
    cannot both enqueue."""
    rkey = keys.idempotency_key(scope, key)
    digest = _digest(specs)
    ids = _free_job_ids(conn, len(specs))
    if conn.set(rkey, f"{','.join(ids)} {digest}", nx=True, ex=keys.IDEMPOTENCY_TTL_S):
        try:
            return submit_many(conn, specs, defaults, ids, numbered=numbered), True
        except BaseException:
            conn.delete(rkey)  # nothing was enqueued: the key is free for a retry
            raise
    for _ in range(40):  # the first request may still be enqueuing (milliseconds)
        raw = (conn.get(rkey) or b"").decode(errors="replace")
        first_ids, _, first_digest = raw.partition(" ")
        if first_digest and first_digest != digest:
            raise IdempotencyConflict("this Idempotency-Key was used for a different request")
        views = [get_view(conn, i) for i in first_ids.split(",") if i]
        if views and all(v is not None for v in views):
            return [v for v in views if v is not None], False
        time.sleep(0.05)
    raise IdempotencyConflict("the first request with this Idempotency-Key has not finished")


def submit_once(
    conn: redis.Redis, spec: JobSpec, defaults: SubmitDefaults, scope: str, key: str
) -> tuple[dict[str, Any], bool]:
    views, created = submit_many_once(conn, [spec], defaults, scope, key, numbered=False)
    return views[0], created


__all__ = [
    "MAX_BATCH",
    "IdempotencyConflict",
    "SubmitDefaults",
    "effective_timeout",
    "submit",
    "submit_many",
    "submit_many_once",
    "submit_once",
]
