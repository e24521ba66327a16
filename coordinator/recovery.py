"""The recovery loop: the coordinator, not the workers, notices death.

One coordinator at a time runs it (a leader lease in Redis), so any number can serve the API.
Each tick runs RQ's registry cleanup per queue under that queue's maintenance lock (the same
lock RQ workers take, so no abandoned job is ever enqueued twice)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import redis
from rq import Worker, worker_registration
from rq.job import JobStatus
from rq.registry import clean_registries

from ffrtmp import stats
from ffrtmp.jobs import (
    PENDING,
    Retention,
    history_entry,
    history_key,
    lease_key,
    recorded_outcome,
    settle_completed,
    utcnow_iso,
)
from ffrtmp.queues import ALL_QUEUES
from ffrtmp.rqjob import SERIALIZER, SafeJob, fetch_job, rq_queue

if TYPE_CHECKING:
    from .app import CoordinatorConfig

log = logging.getLogger("ffrtmp.coordinator.recovery")
LEADER_KEY = "ffrtmp:recovery:leader"
LOST_SUSPECTS = "ffrtmp:recovery:lost-suspects"  # job id -> when first seen queued but in no queue
LOST_CONFIRM_S = 5.0

# Renew only if we still hold it; never steal it.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class Recovery:
    def __init__(self, conn: redis.Redis, cfg: CoordinatorConfig, node_id: str) -> None:
        self.conn = conn
        self.cfg = cfg
        self.node_id = node_id
        self.is_leader = False
        self._renew = conn.register_script(_RENEW)
        self._release = conn.register_script(_RELEASE)

    def lease_ms(self) -> int:
        return int(max(3 * self.cfg.scheduler_interval, 5) * 1000)

    def acquire(self) -> bool:
        if self.is_leader and self._renew(keys=[LEADER_KEY], args=[self.node_id, self.lease_ms()]):
            return True
        self.is_leader = bool(self.conn.set(LEADER_KEY, self.node_id, nx=True, px=self.lease_ms()))
        if self.is_leader:
            log.info("recovery leader lease acquired by %s", self.node_id)
        return self.is_leader

    def release(self) -> None:
        with contextlib.suppress(redis.RedisError, OSError):
            self._release(keys=[LEADER_KEY], args=[self.node_id])
        self.is_leader = False

    def on_abandoned(self, job: Any, *_exc_info: Any) -> bool:
        """RQ found a job whose attempt stopped heartbeating (node lost, agent or slot killed).
        RQ decides next whether to requeue it (retries left) or fail it; record which, for the
        user (history, error), for the operator (metrics, the node's violations), and void the
        dead attempt's fencing lease."""
        meta = job.meta or {}
        node, attempt = meta.get("node"), int(meta.get("attempt", 0))
        ended = recorded_outcome(meta)  # RQ's cleanup fetched the job just now: meta is fresh
        if ended is not None:
            # The attempt had ended and said how (failed, canceled...) before its worker died:
            # RQ only missed the news. Fail it in RQ as it ended, never retry it, no node_lost.
            job.retries_left = 0
            self.conn.delete(lease_key(job.id))
            log.warning(
                "job %s: attempt %d had ended (%s) before its worker died; recorded as such",
                job.id,
                attempt,
                ended,
                extra={"job": job.id, "attempt": attempt, "node": node},
            )
            return True
        tier, prio = meta.get("tier", "default"), meta.get("priority", "medium")
        retry = bool(job.retries_left and job.retries_left > 0)
        msg = f"attempt {attempt} on {node} stopped heartbeating (node lost, agent or slot killed)"
        with self.conn.pipeline() as pipe:
            if retry:
                pipe.rpush(
                    history_key(job.id),
                    history_entry("running", "retrying", "node_lost", node, attempt),
                    history_entry("retrying", "queued", "requeued", None, attempt),
                )
                pipe.hincrby(stats.REQUEUES, "node_lost", 1)
                pipe.zadd(PENDING, {job.id: time.time()})
            else:
                meta.update(
                    outcome="failed",
                    ended_at=utcnow_iso(),
                    error={
                        "reason": "node_lost",
                        "message": msg + "; no attempts left",
                        "exit_code": None,
                        "stderr_tail": None,
                    },
                )
                pipe.hset(job.key, "meta", job.serializer.dumps(meta))
                pipe.rpush(
                    history_key(job.id), history_entry("running", "failed", "node_lost", node, attempt)
                )
                pipe.expire(history_key(job.id), job.failure_ttl or Retention().failed_s)
                stats.record_finished(pipe, tier, prio, "failed", "node_lost")
            if node:
                stats.record_violation(pipe, node, job.id, tier, "platform_failure", f"node_lost: {msg}")
            pipe.delete(lease_key(job.id))
            pipe.execute()
        log.warning(
            "job %s: %s; %s",
            job.id,
            msg,
            "requeued" if retry else "failed (no attempts left)",
            extra={"job": job.id, "attempt": attempt, "node": node},
        )
        return True

    def sweep_lost(self, now: float | None = None) -> list[str]:
        """Find jobs that are 'queued' but in no queue: popped by a worker that died before it
        registered them (RQ's multi-queue dequeue is a plain BLPOP). A suspect must still look
        lost on a later sweep, at least ``LOST_CONFIRM_S`` on, before it is pushed back: a live
        worker takes a few milliseconds from the pop to STARTED, so none is ever queued twice."""
        now = now or time.time()
        grace = max(10.0, 2 * self.cfg.heartbeat_interval)
        candidates = [
            c.decode() for c in self.conn.zrangebyscore(PENDING, "-inf", now - grace, start=0, num=500)
        ]
        if not candidates:
            return []
        with self.conn.pipeline(transaction=False) as pipe:
            for jid in candidates:
                pipe.hmget(SafeJob.key_for(jid), "status", "origin")
                pipe.hget(LOST_SUSPECTS, jid)
            raw = pipe.execute()
        members: dict[str, set[str]] = {}
        requeued = []
        for i, jid in enumerate(candidates):
            (status, origin), suspect_since = raw[2 * i], raw[2 * i + 1]
            if status != b"queued" or origin is None:  # started, finished, expired...: not pending
                self.conn.zrem(PENDING, jid)
                self.conn.hdel(LOST_SUSPECTS, jid)
                continue
            qname = origin.decode()
            if qname not in members:
                q = rq_queue(qname, self.conn)
                members[qname] = {x.decode() for x in self.conn.lrange(q.key, 0, -1)}
            if jid in members[qname]:  # waiting its turn: look again after another grace period
                self.conn.zadd(PENDING, {jid: now})
                self.conn.hdel(LOST_SUSPECTS, jid)
                continue
            if suspect_since is None:
                self.conn.hset(LOST_SUSPECTS, jid, now)
                continue
            if now - float(suspect_since) < LOST_CONFIRM_S:
                continue
            with self.conn.pipeline() as pipe:
                rq_queue(qname, self.conn).push_job_id(jid, pipeline=pipe, at_front=True)
                pipe.rpush(history_key(jid), history_entry("queued", "queued", "lost_in_dequeue", None, 0))
                pipe.hincrby(stats.REQUEUES, "lost_in_dequeue", 1)
                pipe.zadd(PENDING, {jid: now})
                pipe.hdel(LOST_SUSPECTS, jid)
                pipe.execute()
            log.warning(
                "job %s was popped by a worker that died before starting it: requeued",
                jid,
                extra={"job": jid},
            )
            requeued.append(jid)
        return requeued

    def settle_completed(self, q: Any) -> list[str]:
        """Jobs whose attempt completed (its meta says so) but whose worker died before telling
        RQ: record the success instead of letting RQ's cleanup requeue a finished job."""
        settled = []
        for job_id in q.started_job_registry.get_expired_job_ids(time.time()):
            job = fetch_job(self.conn, job_id)
            if job is None or job.get_status() != JobStatus.STARTED:
                continue
            executions = job.get_executions()
            execution = executions[0] if executions else None
            if settle_completed(job, job.meta or {}, self._settler(q), q, execution):
                self.conn.delete(lease_key(job.id))
                log.warning(
                    "job %s had completed before its worker died; success recorded",
                    job.id,
                    extra={"job": job.id},
                )
                settled.append(job.id)
        return settled

    def _settler(self, q: Any) -> Worker:
        """An RQ worker object used only for its bookkeeping methods: never registered, never run."""
        return Worker(
            [q],
            name=f"recovery.{self.node_id}",
            connection=self.conn,
            job_class=SafeJob,
            serializer=SERIALIZER,
            prepare_for_work=False,
        )

    def tick(self) -> int:
        """One recovery pass; returns the number of queues cleaned."""
        if not self.acquire():
            return 0
        self.sweep_lost()
        cleaned = 0
        for name in ALL_QUEUES:
            q = rq_queue(name, self.conn)
            if not q.acquire_maintenance_lock():
                continue  # a worker is cleaning this queue right now
            try:
                self.settle_completed(q)
                clean_registries(q, exception_handlers=[self.on_abandoned])
                worker_registration.clean_worker_registry(q)
                cleaned += 1
            finally:
                q.release_maintenance_lock()
        return cleaned

    async def loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except (redis.RedisError, OSError) as exc:
                log.warning("recovery tick failed: %s", exc)
            except Exception:  # a bug in one tick must not end recovery for good
                log.exception("recovery tick failed")
            await asyncio.sleep(self.cfg.scheduler_interval)
