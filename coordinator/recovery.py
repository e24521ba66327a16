"""The recovery loop: the coordinator, not the workers, notices death.

One coordinator at a time runs it (a leader lease in Redis), so any number can serve the API.
Each tick runs RQ's registry cleanup per queue under that queue's maintenance lock (the same
lock RQ workers take, so no abandoned job is ever enqueued twice)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import redis
from rq import worker_registration
from rq.registry import clean_registries

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
                clean_registries(q)
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
