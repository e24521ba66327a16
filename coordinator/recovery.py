"""The recovery loop: the coordinator, not the workers, notices death.

One coordinator at a time runs it (a leader lease in Redis), so any number can serve the API.
Each tick runs RQ's registry cleanup per queue under that queue's maintenance lock (the same
lock RQ workers take, so no abandoned job is ever enqueued twice)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import redis
from rq import worker_registration
from rq.registry import clean_registries

from ffrtmp import stats
from ffrtmp.jobs import Retention, history_entry, history_key, lease_key, utcnow_iso
from ffrtmp.queues import ALL_QUEUES
from ffrtmp.rqjob import rq_queue

if TYPE_CHECKING:
    from .app import CoordinatorConfig

log = logging.getLogger("ffrtmp.coordinator.recovery")
LEADER_KEY = "ffrtmp:recovery:leader"

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

    def tick(self) -> int:
        """One recovery pass; returns the number of queues cleaned."""
        if not self.acquire():
            return 0
        cleaned = 0
        for name in ALL_QUEUES:
            q = rq_queue(name, self.conn)
            if not q.acquire_maintenance_lock():
                continue  # a worker is cleaning this queue right now
            try:
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
            await asyncio.sleep(self.cfg.scheduler_interval)
