"""The job lifecycle: the only code that changes a job.

Every transition is one function here. Each runs as one Redis transaction (WATCH the job's
hash and its lease, read, decide, MULTI, write, EXEC; a concurrent change aborts it and it
decides again) and writes everything that belongs to the transition at once: ffrtmp's state in
``job.meta``, RQ's status and registries (through RQ's own pipeline-taking primitives), the
history line, the state index and the fleet statistics.

**Fencing.** A job runs only under a lease: claimed by a worker after it popped the job and
before its horse starts (:func:`claim`), naming the attempt, the RQ execution, the node and the
slot. Every write of a running attempt (start, progress, end, platform failure) names its lease
and is refused unless the job still holds exactly that lease; recovery gives up on an attempt
only by naming the execution that expired (:func:`abandon`). So a frozen horse that wakes up, a
late recovery tick or a worker handler running twice changes nothing: the refusal is logged and
counted in ``ffrtmp_fenced_writes_total``.

**State.** ``meta["state"]`` is the user-visible state and the lifecycle's own record; RQ's
status follows it but is never the basis of a decision (a fenced horse may still set it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from redis.client import Pipeline
from redis.exceptions import WatchError
from rq.executions import Execution
from rq.job import JobStatus
from rq.registry import CanceledJobRegistry, FailedJobRegistry
from rq.results import Result

from . import keys, stats, timing
from .keys import Retention
from .rqjob import SafeJob, fetch_job, job_spec, rq_queue
from .terms import TERMINAL_STATES, JobState

log = logging.getLogger("ffrtmp.lifecycle")

RUNNING = JobState.running.value
QUEUED = JobState.queued.value
RETRYING = JobState.retrying.value
TERMINAL = frozenset(s.value for s in TERMINAL_STATES)
RETRYABLE = frozenset({"failed", "timed_out", "canceled", "rejected"})
ALL_STATES = tuple(s.value for s in JobState)
_RQ_STATUS = {
    "completed": JobStatus.FINISHED,
    "canceled": JobStatus.CANCELED,
}


class Refused(Exception):
    """The transition was not made: the job is not in a state that allows it (fenced)."""


@dataclass(frozen=True)
class Lease:
    """One attempt's right to change its job. The token is what Redis holds."""

    job_id: str
    attempt: int
    execution: str
    node: str
    slot: str

    @property
    def token(self) -> str:
        return f"{self.attempt}|{self.execution}|{self.node}|{self.slot}"

    @classmethod
    def parse(cls, job_id: str, raw: bytes | str | None) -> Lease | None:
        """A lease read from Redis (untrusted): None unless it has the expected shape."""
        if raw is None:
            return None
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        parts = text.split("|")
        if len(parts) != 4 or not (parts[0].isascii() and parts[0].isdecimal()):
            return None
        return cls(job_id, int(parts[0]), parts[1], parts[2], parts[3])


# --- small helpers ------------------------------------------------------------------------
def utcnow_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def history_entry(frm: str | None, to: str, reason: str, node: str | None = None, attempt: int = 0) -> str:
    return json.dumps(
        {"time": utcnow_iso(), "from": frm, "to": to, "reason": reason, "node": node, "attempt": attempt},
        separators=(",", ":"),
    )


def state_of(job: SafeJob, meta: dict[str, Any]) -> str:
    """The lifecycle's state of a job; derived from RQ's status for records without one."""
    st = meta.get("state")
    if st in ALL_STATES:
        return str(st)
    status = job.get_status(refresh=False)
    if status == JobStatus.STARTED:
        return RUNNING
    if status == JobStatus.FINISHED:
        return "completed"
    if status in (JobStatus.CANCELED, JobStatus.STOPPED):
        return "canceled"
    if status == JobStatus.FAILED:
        outcome = meta.get("outcome")
        return outcome if outcome in TERMINAL else "failed"
    return QUEUED


def _meta(job: SafeJob) -> dict[str, Any]:
    """A copy of the job's meta as far as it can be read: RQ keeps undecodable meta under
    "unserialized", which is dropped (the lifecycle rewrites what it needs)."""
    meta = job.meta if isinstance(job.meta, dict) else {}
    return {k: v for k, v in meta.items() if k != "unserialized"}


def meta_int(meta: dict[str, Any], key: str, default: int) -> int:
    """An integer from a job's meta, which is untrusted: anything else reads as ``default``."""
    value = meta.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def meta_float(meta: dict[str, Any], key: str, default: float) -> float:
    """A number from a job's meta (untrusted): anything but a finite positive one reads as
    ``default``."""
    value = meta.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < float("inf"):
        return float(value)
    return default


def _counter(raw: bytes | None) -> int:
    try:
        return max(0, int(raw or 0))
    except ValueError:
        return 0


def attempts_used(meta: dict[str, Any], attempt: int) -> int:
    """Attempts of the current run (a manual retry starts a new run with a fresh budget)."""
    return attempt - meta_int(meta, "attempt_base", 0)


def _set_state(pipe: Pipeline, job_id: str, frm: str | None, to: str, now: float) -> None:
    """Move the job from the index of the state it was read in to its new state's. Every
    transition reads ``frm`` in its own transaction, so that is the only index it is in."""
    if frm is not None and frm != to:
        pipe.zrem(keys.state_index(frm), job_id)
    pipe.zadd(keys.state_index(to), {job_id: now})
    if to in TERMINAL and frm != to:  # the event webhooks are made from (keys.EVENTS)
        event = {"type": "job", "job": job_id, "state": to, "at": repr(now)}
        pipe.xadd(keys.EVENTS, event, maxlen=keys.EVENTS_MAXLEN, approximate=True)


def _save_meta(pipe: Pipeline, job: SafeJob, meta: dict[str, Any]) -> None:
    job.meta = meta
    pipe.hset(job.key, "meta", job.serializer.dumps(meta))


def _expire_with_job(pipe: Pipeline, job_id: str, ttl: int | None) -> None:
    for k in keys.job_keys(job_id):
        if ttl and ttl > 0:
            pipe.expire(k, ttl)
        else:
            pipe.persist(k)


def _count_fenced(conn: redis.Redis, transition: str) -> None:
    with contextlib.suppress(redis.RedisError, OSError):
        conn.hincrby(keys.FENCED, transition, 1)


def _transact(
    conn: redis.Redis,
    job_id: str,
    body: Callable[[Pipeline, SafeJob | None, bytes | None], Any],
    also_watch: tuple[str, ...] = (),
) -> Any:
    """Run ``body(pipe, job, raw_lease)`` with the job and its lease (and ``also_watch``)
    watched; ``body`` reads what it needs, calls ``pipe.multi()`` and queues its writes (or
    raises ``Refused``). A concurrent change to any watched key aborts the transaction and runs
    ``body`` again on what Redis holds now."""
    while True:
        with conn.pipeline() as pipe:
            try:
                pipe.watch(SafeJob.key_for(job_id), keys.lease_key(job_id), *also_watch)
                raw_lease = pipe.get(keys.lease_key(job_id))
                job = fetch_job(conn, job_id)
                out = body(pipe, job, raw_lease)
                if pipe.explicit_transaction:
                    pipe.execute()
                else:
                    pipe.reset()
                return out
            except WatchError:
                continue


def _check_lease(job: SafeJob | None, raw_lease: bytes | None, lease: Lease, transition: str) -> SafeJob:
    if job is None:
        raise Refused(f"{transition}: job {lease.job_id} is gone")
    holder = raw_lease.decode(errors="replace") if raw_lease else None
    if holder != lease.token:
        raise Refused(
            f"{transition}: job {lease.job_id} is leased to {holder or 'nobody'}, not {lease.token}"
        )
    return job


def _fenced(conn: redis.Redis, lease: Lease, transition: str, write: Callable[..., Any]) -> Any:
    """A transition of the attempt that holds ``lease``; refused (and counted) otherwise."""

    def body(pipe: Pipeline, job: SafeJob | None, raw: bytes | None) -> Any:
        job = _check_lease(job, raw, lease, transition)
        return write(pipe, job, _meta(job))

    try:
        return _transact(conn, lease.job_id, body)
    except Refused as exc:
        log.warning("refused: %s", exc, extra={"job": lease.job_id, "attempt": lease.attempt})
        _count_fenced(conn, transition)
        raise


def _execution(job: SafeJob, execution_id: str) -> Execution:
    return Execution(execution_id, job.id, connection=job.connection)


# --- claim and start ----------------------------------------------------------------------
def claim(
    conn: redis.Redis, job_id: str, execution_id: str, node: str, slot: str, lease_ttl_s: int
) -> tuple[Lease, dict[str, Any]] | None:
    """A worker that popped the job takes its lease, before its horse starts. Refused (None)
    when the job is not waiting to run (canceled meanwhile, or already running under another
    lease: a duplicate in a queue never runs twice). The attempt number comes from the job's
    own counter, so it never repeats whatever an older copy of the job says."""

    def body(pipe: Pipeline, job: SafeJob | None, raw: bytes | None) -> tuple[Lease, dict[str, Any]] | None:
        if job is None:
            return None
        meta = _meta(job)
        state = state_of(job, meta)
        if raw is not None or state not in (QUEUED, RETRYING):
            why = f"leased to {raw.decode(errors='replace')}" if raw else f"it is {state}"
            log.warning("job %s not claimed by %s: %s", job_id, slot, why, extra={"job": job_id})
            return None
        counted = _counter(pipe.get(keys.attempts_key(job_id)))
        attempt = max(counted, meta_int(meta, "attempt", 0)) + 1
        lease = Lease(job_id, attempt, execution_id, node, slot)
        now = time.time()
        meta.update(
            state=RUNNING,
            attempt=attempt,
            lease=lease.token,
            node=node,
            slot=slot,
            started_at=utcnow_iso(),
            ended_at=None,
            progress=None,
            error=None,
            outcome=None,
            result=None,
            stop=None,
        )
        pipe.multi()
        _save_meta(pipe, job, meta)
        pipe.set(keys.attempts_key(job_id), attempt)
        pipe.set(keys.lease_key(job_id), lease.token, ex=lease_ttl_s)
        pipe.delete(keys.progress_key(job_id))
        pipe.rpush(keys.history_key(job_id), history_entry(state, RUNNING, "started", node, attempt))
        _set_state(pipe, job_id, state, RUNNING, now)
        return lease, meta

    claimed = _transact(conn, job_id, body)
    if claimed is not None:
        _index_on_node(conn, job_id, node)
    return claimed


def _index_on_node(conn: redis.Redis, job_id: str, node: str) -> None:
    """The listing's node index, after the claim and outside it: it only helps find the job,
    and an agent newer than its Redis ACL (upgraded before site.yml ran) must still run jobs."""
    try:
        conn.zadd(keys.node_index(node), {job_id: time.time()})
    except redis.exceptions.NoPermissionError:
        log.warning("job %s not indexed on node %s: re-run site.yml (Redis ACL)", job_id, node)
    except (redis.RedisError, OSError) as exc:
        log.warning("job %s not indexed on node %s: %s", job_id, node, exc)


def ask_running_on(pipe: Pipeline, node: str) -> None:
    """Queue on ``pipe`` the read whose answer ``leases_on`` takes: the node's jobs that are
    in the running state (a caller reading more about the node saves a round trip)."""
    pipe.zinter([keys.node_index(node), keys.state_index(RUNNING)])


def leases_on(conn: redis.Redis, node: str, running: list[Any] | None = None) -> list[Lease]:
    """The attempts the lifecycle has running on ``node``: the node's jobs in the running
    state whose lease names it (a job that ran there before and runs elsewhere now is not).
    ``running`` is the answer of ``ask_running_on`` when the caller already read it."""
    if running is None:
        with conn.pipeline(transaction=False) as pipe:
            ask_running_on(pipe, node)
            (running,) = pipe.execute()
    ids = [i.decode() if isinstance(i, bytes) else i for i in running]
    if not ids:
        return []
    tokens = conn.mget([keys.lease_key(i) for i in ids])
    leases = (Lease.parse(i, t) for i, t in zip(ids, tokens, strict=True))
    return [lease for lease in leases if lease is not None and lease.node == node]


def started(conn: redis.Redis, lease: Lease, fields: dict[str, Any], tier: str, queue_wait_s: float) -> bool:
    """The attempt is about to start FFmpeg: record where it runs (run directory, output,
    encoder) and the queue wait. Returns whether a cancel is pending. Refused if fenced."""

    def write(pipe: Pipeline, job: SafeJob, meta: dict[str, Any]) -> bool:
        canceled = bool(pipe.exists(keys.cancel_key(job.id)))
        meta.update(fields)
        pipe.multi()
        job.prepare_for_execution(lease.slot, pipe)  # what RQ's horse would write, fenced here
        pipe.persist(job.key)
        _save_meta(pipe, job, meta)
        pipe.zrem(keys.PENDING, job.id)
        pipe.hdel(keys.LOST_SUSPECTS, job.id)
        stats.observe(pipe, "queue_wait", tier, queue_wait_s)
        target = stats.SLA_WAIT_S.get(tier, float("inf"))
        if queue_wait_s > target:
            detail = f"waited {queue_wait_s:.1f}s (target {target:g}s)"
            stats.record_violation(pipe, lease.node, job.id, tier, "queue_wait", detail, queue_wait_s)
        return canceled

    return bool(_fenced(conn, lease, "started", write))


_PROGRESS = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('set', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[3]))
  return 1
end
return 0
"""


def progress(conn: redis.Redis, lease: Lease, data: dict[str, Any]) -> bool:
    """Mirror the run's progress; written only while the attempt holds its lease (one script,
    so a fenced horse's late progress never lands). False when fenced."""
    ok = conn.eval(
        _PROGRESS,
        2,
        keys.lease_key(lease.job_id),
        keys.progress_key(lease.job_id),
        lease.token,
        json.dumps(data, separators=(",", ":")),
        keys.PROGRESS_TTL_S,
    )
    return bool(ok)


_LOGS = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('hset', KEYS[2], ARGV[2], ARGV[3])
  return 1
end
return 0
"""


def save_logs(conn: redis.Redis, lease: Lease, text: str) -> bool:
    """Keep the attempt's FFmpeg stderr tail; only while it holds its lease."""
    lk, gk = keys.lease_key(lease.job_id), keys.logs_key(lease.job_id)
    return bool(conn.eval(_LOGS, 2, lk, gk, lease.token, str(lease.attempt), text))


def holds(conn: redis.Redis, lease: Lease) -> tuple[bool, bool]:
    """(still holds its lease, cancel requested), in one round trip."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.get(keys.lease_key(lease.job_id))
        pipe.exists(keys.cancel_key(lease.job_id))
        raw, canceled = pipe.execute()
    return (raw is not None and raw.decode(errors="replace") == lease.token), bool(canceled)


# --- ends ---------------------------------------------------------------------------------
@dataclass
class Ending:
    """What an attempt says about how it ended."""

    outcome: str  # a terminal state
    reason: str
    message: str
    exit_code: int | None = None
    stderr_tail: str | None = None
    result: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    stop: str | None = None  # how a cancel/timeout stopped FFmpeg
    run_s: float | None = None
    bytes_in: int = 0


def _error(
    reason: str, message: str, exit_code: int | None = None, tail: str | None = None
) -> dict[str, Any]:
    return {"reason": reason, "message": message, "exit_code": exit_code, "stderr_tail": tail}


def _close_execution(pipe: Pipeline, job: SafeJob, execution_id: str | None) -> None:
    if execution_id:
        _execution(job, execution_id).delete(job, pipe)


def _write_terminal(
    pipe: Pipeline,
    job: SafeJob,
    meta: dict[str, Any],
    end: Ending,
    node: str | None,
    execution_id: str | None,
) -> None:
    """Queue the writes that end a job for good (inside MULTI)."""
    frm = state_of(job, meta)
    attempt = meta_int(meta, "attempt", 0)
    now = datetime.now(UTC)
    meta.update(state=end.outcome, outcome=end.outcome, ended_at=utcnow_iso(), lease=None)
    if end.progress is not None:
        meta["progress"] = end.progress
    if end.stop:
        meta["stop"] = end.stop
    if end.outcome == "completed":
        meta["result"] = end.result or {}
        meta["error"] = None
    else:
        meta["error"] = _error(end.reason, end.message, end.exit_code, end.stderr_tail)
    ok = end.outcome == "completed"
    ttl = (job.result_ttl if ok else job.failure_ttl) or (
        Retention().finished_s if ok else Retention().failed_s
    )
    job.ended_at = now
    _save_meta(pipe, job, meta)
    _close_execution(pipe, job, execution_id)
    if ok:
        job.set_status(JobStatus.FINISHED, pipeline=pipe)
        job.save(pipeline=pipe, include_meta=False, include_result=False)
        Result.create(job, Result.Type.SUCCESSFUL, ttl, return_value=end.result, pipeline=pipe)
        job.finished_job_registry.add(job, ttl, pipeline=pipe)
        job.cleanup(ttl, pipeline=pipe, remove_from_queue=False)
    elif end.outcome == "canceled":
        job.set_status(JobStatus.CANCELED, pipeline=pipe)
        job.save(pipeline=pipe, include_meta=False, include_result=False)
        CanceledJobRegistry(job.origin, connection=job.connection, serializer=job.serializer).add(
            job, ttl, pipeline=pipe
        )
        job.cleanup(ttl, pipeline=pipe, remove_from_queue=True)
    else:
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        FailedJobRegistry(job.origin, connection=job.connection, serializer=job.serializer).add(
            job, ttl, f"{end.outcome}: {end.reason}: {end.message}", pipeline=pipe
        )
    pipe.delete(keys.lease_key(job.id), keys.cancel_key(job.id), keys.progress_key(job.id))
    pipe.zrem(keys.PENDING, job.id)
    pipe.hdel(keys.LOST_SUSPECTS, job.id)
    pipe.rpush(keys.history_key(job.id), history_entry(frm, end.outcome, end.reason, node, attempt))
    _expire_with_job(pipe, job.id, ttl)
    _set_state(pipe, job.id, frm, end.outcome, time.time())
    tier, prio = str(meta.get("tier") or "default"), str(meta.get("priority") or "medium")
    stats.record_finished(pipe, tier, prio, end.outcome, end.reason)
    if end.run_s is not None:
        stats.observe(pipe, "run", tier, end.run_s)
    if node and end.result and end.result.get("size_bytes"):
        pipe.hincrby(keys.node_stats_key(node), "bytes_out", int(end.result["size_bytes"]))
    if node and end.bytes_in:
        pipe.hincrby(keys.node_stats_key(node), "bytes_in", end.bytes_in)
    if end.stop:
        pipe.hincrby(keys.CANCELS, "forced" if "forced" in end.stop else "graceful", 1)


def finish(conn: redis.Redis, lease: Lease, end: Ending) -> None:
    """The attempt ended for good (completed, or a workload failure, cancel, timeout). Raises
    ``Refused`` if the attempt no longer holds its lease: then it must publish nothing."""

    def write(pipe: Pipeline, job: SafeJob, meta: dict[str, Any]) -> None:
        pipe.multi()
        _write_terminal(pipe, job, meta, end, lease.node, lease.execution)

    _fenced(conn, lease, f"finish_{end.outcome}", write)


def _enqueue(pipe: Pipeline, job: SafeJob) -> None:
    """Put the job back in its queue inside the caller's MULTI: RQ's enqueue bookkeeping
    (status, enqueue time, the whole hash with its meta) and the push, nothing that reads."""
    job.enqueued_at = datetime.now(UTC)
    job.set_status(JobStatus.QUEUED, pipeline=pipe)
    job.save(pipeline=pipe)
    rq_queue(job.origin, job.connection).push_job_id(job.id, pipeline=pipe)


def _requeue(
    pipe: Pipeline,
    job: SafeJob,
    meta: dict[str, Any],
    reason: str,
    message: str,
    node: str | None,
    execution_id: str | None,
    backoff: bool = True,
) -> None:
    """Queue the writes that put a job back in its queue after a platform failure; with
    ``backoff`` (a failure its agent reported, which can repeat at once) not before the
    back-off of its count of them."""
    frm = state_of(job, meta)
    attempt = meta_int(meta, "attempt", 0)
    failures = meta_int(meta, "platform_failures", 0) + 1
    meta.update(state=QUEUED, lease=None, error=_error(reason, message), progress=None, ended_at=None)
    wait = timing.retry_backoff(failures) if backoff else 0.0
    meta.update(platform_failures=failures, retry_not_before=time.time() + wait if wait else None)
    if node:
        meta.update(last_failed_node=node, last_failed_at=time.time())
    job.meta = meta
    _close_execution(pipe, job, execution_id)
    pipe.delete(keys.lease_key(job.id), keys.progress_key(job.id))
    _enqueue(pipe, job)  # saves meta too
    pipe.rpush(
        keys.history_key(job.id),
        history_entry(frm, RETRYING, reason, node, attempt),
        history_entry(RETRYING, QUEUED, "requeued", None, attempt),
    )
    pipe.zadd(keys.PENDING, {job.id: time.time()})
    _set_state(pipe, job.id, frm, QUEUED, time.time())
    pipe.hincrby(keys.REQUEUES, reason, 1)


def _platform(
    pipe: Pipeline,
    job: SafeJob,
    meta: dict[str, Any],
    reason: str,
    message: str,
    node: str | None,
    execution_id: str | None,
    backoff: bool = True,
) -> str:
    attempt = meta_int(meta, "attempt", 0)
    tier = str(meta.get("tier") or "default")
    left = meta_int(meta, "max_attempts", 1) - attempts_used(meta, attempt)
    pipe.multi()
    if node:
        stats.record_violation(pipe, node, job.id, tier, "platform_failure", f"{reason}: {message}")
    if left > 0:
        _requeue(pipe, job, meta, reason, message, node, execution_id, backoff)
        return "requeued"
    end = Ending("failed", reason, f"{message} (no attempts left)")
    _write_terminal(pipe, job, meta, end, node, execution_id)
    return "failed"


def platform_failure(conn: redis.Redis, lease: Lease, reason: str, message: str) -> str:
    """This node could not run the attempt (not the workload's fault): requeue the job while
    attempts remain, else fail it with ``reason``. Returns 'requeued' or 'failed'; raises
    ``Refused`` if fenced."""

    def write(pipe: Pipeline, job: SafeJob, meta: dict[str, Any]) -> str:
        return _platform(pipe, job, meta, reason, message, lease.node, lease.execution)

    out = _fenced(conn, lease, f"platform_{reason}", write)
    log.warning(
        "job %s attempt %d: %s: %s -> %s",
        lease.job_id,
        lease.attempt,
        reason,
        message,
        out,
        extra={"job": lease.job_id, "attempt": lease.attempt, "node": lease.node},
    )
    return str(out)


# --- recovery -----------------------------------------------------------------------------
def abandon(
    conn: redis.Redis, job_id: str, execution_id: str, registry_key: str, reason_for: Callable[[Lease], str]
) -> str:
    """Recovery found RQ execution ``execution_id`` of this job expired (its worker stopped
    renewing it). If that execution is the job's current attempt, give up on the attempt:
    requeue or fail the job with ``reason_for(lease)``, voiding its lease. Any other expired
    execution (a fenced horse's, a refused claim's) is only removed from RQ's registry.
    Returns what was done: 'requeued', 'failed' or 'stale'."""

    member = f"{job_id}:{execution_id}"

    def body(pipe: Pipeline, job: SafeJob | None, raw: bytes | None) -> str:
        score = pipe.zscore(registry_key, member)
        if score is None or score > time.time():
            return "renewed"  # its worker renewed it after all (a thaw, a slow tick)
        lease = Lease.parse(job_id, raw)
        if job is not None and raw is None and state_of(job, _meta(job)) == RUNNING:
            # the lease key itself is gone (lost with a Redis restart, expired): the attempt
            # the job's own record names is the current one
            lease = Lease.parse(job_id, _meta(job).get("lease"))
        if lease is None and job is not None and state_of(job, _meta(job)) == RUNNING:
            # a running job with no lease this version can read (written by an older agent, or
            # garbled): its expired execution is the only thing known of the attempt
            m = _meta(job)
            lease = Lease(
                job_id, meta_int(m, "attempt", 0), execution_id, str(m.get("node")), str(m.get("slot"))
            )
        if job is None or lease is None or lease.execution != execution_id:
            if job is None and pipe.exists(SafeJob.key_for(job_id)):
                raise Refused(f"job {job_id} cannot be read; its expired execution is kept")
            pipe.multi()
            if job is not None:
                _close_execution(pipe, job, execution_id)
            pipe.zrem(registry_key, member)
            return "stale"
        meta = _meta(job)
        reason = reason_for(lease)
        msg = f"attempt {lease.attempt} on {lease.node} stopped renewing its execution ({reason})"
        # found by recovery after the heartbeat timeout: waiting more only delays a live job
        return _platform(pipe, job, meta, reason, msg, lease.node, execution_id, backoff=False)

    return str(_transact(conn, job_id, body, also_watch=(registry_key,)))


def requeue_lost(conn: redis.Redis, job_id: str) -> bool:
    """A job waiting to run that is in no queue list and under no lease: popped by a worker
    that died before claiming it. Push it back at the front of its queue, once."""

    def body(pipe: Pipeline, job: SafeJob | None, raw: bytes | None) -> bool:
        if job is None or raw is not None:
            return False
        meta = _meta(job)
        if state_of(job, meta) not in (QUEUED, RETRYING):
            return False
        q = rq_queue(job.origin, conn)
        if pipe.lpos(q.key, job_id) is not None:
            return False
        pipe.multi()
        q.push_job_id(job_id, pipeline=pipe, at_front=True)
        pipe.rpush(
            keys.history_key(job_id),
            history_entry(QUEUED, QUEUED, "lost_in_dequeue", None, meta_int(meta, "attempt", 0)),
        )
        pipe.hincrby(keys.REQUEUES, "lost_in_dequeue", 1)
        pipe.zadd(keys.PENDING, {job_id: time.time()})
        pipe.hdel(keys.LOST_SUSPECTS, job_id)
        return True

    return bool(_transact(conn, job_id, body))


# --- operator actions ---------------------------------------------------------------------
def cancel(conn: redis.Redis, job_id: str, requested_by: str) -> str:
    """'canceled' (it was waiting: now canceled, out of its queue), 'requested' (it runs: its
    attempt stops FFmpeg and ends it canceled), 'terminal' or 'missing'."""

    def body(pipe: Pipeline, job: SafeJob | None, raw: bytes | None) -> str:
        if job is None:
            return "missing"
        meta = _meta(job)
        state = state_of(job, meta)
        if state in TERMINAL:
            return "terminal"
        pipe.multi()
        if raw is not None or state == RUNNING:
            pipe.set(keys.cancel_key(job_id), requested_by, ex=keys.CANCEL_TTL_S)
            return "requested"
        pipe.lrem(rq_queue(job.origin, conn).key, 0, job_id)
        end = Ending("canceled", "canceled", f"canceled by {requested_by}")
        _write_terminal(pipe, job, meta, end, None, None)
        return "canceled"

    out = str(_transact(conn, job_id, body))
    if out == "canceled":  # a segmented job waiting between attempts: its segments go too
        job = fetch_job(conn, job_id)
        for child in segment_children(_meta(job)) if job is not None else []:
            cancel(conn, child, f"{requested_by} (parent {job_id})")
    return out


def retry(conn: redis.Redis, job_id: str, requested_by: str) -> str:
    """Re-run a failed, timed-out, canceled or rejected job by hand as its next attempt, with
    a fresh budget of attempts. 'queued', 'not_retryable' or 'missing'."""

    def body(pipe: Pipeline, job: SafeJob | None, raw: bytes | None) -> str:
        if job is None:
            return "missing"
        meta = _meta(job)
        state = state_of(job, meta)
        if state not in RETRYABLE or raw is not None:
            return "not_retryable"
        counted = _counter(pipe.get(keys.attempts_key(job_id)))
        base = max(counted, meta_int(meta, "attempt", 0))
        meta.update(
            state=QUEUED,
            outcome=None,
            error=None,
            ended_at=None,
            progress=None,
            result=None,
            stop=None,
            attempt_base=base,
            manual_retries=meta_int(meta, "manual_retries", 0) + 1,
            platform_failures=0,
            retry_not_before=None,
        )
        old_run[:] = segment_children(meta)
        if old_run or job_spec(job).get("segmented") is True:
            # a new run with new segments (the old files went with its end), in a directory
            # of its own even when the last run ended before it planned any: a sweep that
            # judged that run ended removes only its runs' directories
            meta.update(segments=None, segment_run=segment_run(meta) + 1)
        job.meta = meta
        pipe.multi()
        FailedJobRegistry(job.origin, connection=conn).remove(job, pipeline=pipe)
        CanceledJobRegistry(job.origin, connection=conn).remove(job, pipeline=pipe)
        pipe.delete(keys.cancel_key(job_id))
        pipe.persist(job.key)
        _enqueue(pipe, job)
        pipe.zadd(keys.PENDING, {job_id: time.time()})
        pipe.rpush(
            keys.history_key(job_id), history_entry(state, QUEUED, f"retried by {requested_by}", None, base)
        )
        _expire_with_job(pipe, job_id, None)
        _set_state(pipe, job_id, state, QUEUED, time.time())
        return "queued"

    old_run: list[str] = []
    out = str(_transact(conn, job_id, body))
    for child in old_run if out == "queued" else []:  # the earlier run's, if any still wait
        cancel(conn, child, f"{requested_by} (retry of {job_id})")
    return out


def submitted(pipe: Pipeline, jobs: list[tuple[str, str, str, str, dict[str, str]]], now: float) -> str:
    """What a submission of ``jobs`` ((id, tier, priority, RQ queue, labels) each) writes
    beside RQ's jobs, inside the submission's MULTI: each index in one command, the counters
    once per class, a first history line per job. Returns that line (the same for the batch)."""
    first = history_entry(None, QUEUED, "submitted")
    ids = {job_id: now for job_id, *_ in jobs}
    pipe.zadd(keys.JOBS_INDEX, ids)
    pipe.zadd(keys.PENDING, ids)
    pipe.zadd(keys.state_index(QUEUED), ids)  # a new job is in no other state's index
    by_index: dict[str, dict[str, float]] = {}
    label_indexes: set[str] = set()
    for job_id, tier, _, rq_name, labels in jobs:
        pipe.rpush(keys.history_key(job_id), first)
        by_index.setdefault(keys.queue_index(tier), {})[job_id] = now
        by_index.setdefault(keys.queue_index(rq_name), {})[job_id] = now
        for k, v in labels.items():
            label_indexes.add(keys.label_index(k, v))
            by_index.setdefault(keys.label_index(k, v), {})[job_id] = now
    for index, members in by_index.items():
        pipe.zadd(index, members)
    if label_indexes:  # the prune in the recovery housekeeping finds them here
        pipe.sadd(keys.LABEL_INDEXES, *label_indexes)
    for cls, n in Counter(f"{tier}.{priority}" for _, tier, priority, _, _ in jobs).items():
        pipe.hincrby(keys.SUBMITTED, cls, n)
    return first


# --- segmented jobs -----------------------------------------------------------------------
PARENT_LABEL = "ffrtmp.parent"  # a segment's label naming its segmented job (listing by parent)


def segment_children(meta: dict[str, Any]) -> list[str]:
    """The child jobs a segmented job's record names (untrusted: only well-formed ids)."""
    seg = meta.get("segments")
    children = seg.get("children") if isinstance(seg, dict) else None
    if not isinstance(children, list):
        return []
    return [c for c in children if isinstance(c, str) and keys.is_child_id(c)]


def segment_run(meta: dict[str, Any]) -> int:
    """Which run of a segmented job this is (each manual retry starts one, with new segments)."""
    return meta_int(meta, "segment_run", 0)


def plan_segments(
    conn: redis.Redis, lease: Lease, segments: dict[str, Any], children: list[SafeJob]
) -> dict[str, Any]:
    """A segmented job's attempt planned its segments: record the plan and enqueue the child
    jobs in one fenced transaction, once per run of the job. An attempt that finds a plan
    recorded (an earlier attempt of this run made it) gets that one and enqueues nothing.
    Raises ``Refused`` if fenced."""

    def write(pipe: Pipeline, job: SafeJob, meta: dict[str, Any]) -> dict[str, Any]:
        known = meta.get("segments")
        if isinstance(known, dict) and segment_children(meta):
            return known
        plan = {**segments, "run": segment_run(meta), "children": [c.id for c in children]}
        meta["segments"] = plan
        now = time.time()
        tier, prio = str(meta.get("tier") or "default"), str(meta.get("priority") or "medium")
        pipe.multi()
        _save_meta(pipe, job, meta)
        for child in children:
            _enqueue(pipe, child)
        labels = [c.args[0].get("labels") or {} for c in children]  # PARENT_LABEL, from the spec
        submitted(
            pipe, [(c.id, tier, prio, c.origin, la) for c, la in zip(children, labels, strict=True)], now
        )
        reason = f"planned {len(children)} segments"
        pipe.rpush(
            keys.history_key(job.id), history_entry(RUNNING, RUNNING, reason, lease.node, lease.attempt)
        )
        return plan

    return dict(_fenced(conn, lease, "plan_segments", write))


def states_of(conn: redis.Redis, job_ids: list[str]) -> list[str | None]:
    """The lifecycle state of each job, from the state indexes (one pipelined round trip);
    None for a job in none of them."""
    if not job_ids:
        return []
    with conn.pipeline(transaction=False) as pipe:
        for state in ALL_STATES:
            pipe.zmscore(keys.state_index(state), job_ids)
        scores = pipe.execute()
    out: list[str | None] = [None] * len(job_ids)
    for state, row in zip(ALL_STATES, scores, strict=True):
        for i, score in enumerate(row):
            if score is not None and (out[i] is None or state in TERMINAL):
                out[i] = state
    return out
