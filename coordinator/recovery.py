"""The recovery loop: the coordinator, not the workers, notices death.

One coordinator at a time runs it (a leader lease in Redis), so any number can serve the API.
Each tick, per queue and under that queue's maintenance lock (the same lock RQ workers take),
it gives up on attempts whose RQ execution expired, through ``ffrtmp.lifecycle.abandon``: one
job at a time, each in its own transaction, so one bad record is logged and skipped and never
aborts the pass. It also finds jobs lost between a worker's pop and its claim. After a Redis
outage (its own ticks failed, or Redis restarted) it holds off for a few renewal intervals, so
workers renew their executions before anything is called dead; what still expired because of
the outage is requeued with reason ``redis_outage``, not ``node_lost``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from rq import worker_registration

from ffrtmp import keys, lifecycle
from ffrtmp.jobs import prune_indexes
from ffrtmp.lifecycle import Lease
from ffrtmp.nodes import node_key
from ffrtmp.queues import queues_in_use
from ffrtmp.rqjob import SafeJob, rq_queue
from ffrtmp.timing import execution_ttl, renewal_interval

if TYPE_CHECKING:
    from .config import CoordinatorConfig

log = logging.getLogger("ffrtmp.coordinator.recovery")
LEADER_KEY = keys.RECOVERY_LEADER
LOST_CONFIRM_S = 5.0
EXPIRED_PER_QUEUE = 500  # bounds one tick's work per queue; the rest waits for the next tick
HOUSEKEEPING_S = 60  # each queue's RQ registry expiry and dead-worker sweep, once this often

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


@dataclass
class Outage:
    """When Redis was last out of reach (or restarted), as this coordinator saw it."""

    since: float
    until: float


class Recovery:
    def __init__(self, conn: redis.Redis, cfg: CoordinatorConfig, node_id: str) -> None:
        self.conn = conn
        self.cfg = cfg
        self.node_id = node_id
        self.is_leader = False
        self._renew = conn.register_script(_RENEW)
        self._release = conn.register_script(_RELEASE)
        self.outage: Outage | None = None
        self._run_id: str | None = None
        self._last_ok: float | None = None
        self._failing_since: float | None = None
        self.hold_until = 0.0  # expired executions are left alone until then
        self.errors = 0  # records skipped because handling them raised
        self._housekeeping_at = 0  # where the next slice of housekeeping starts

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

    # --- Redis outages ---------------------------------------------------------------------
    def _note_redis(self, now: float) -> None:
        """The first Redis call of a tick: notice that Redis was out of reach (earlier ticks
        failed) or restarted (its run id changed) since the last good tick, and hold off."""
        run_id = self.conn.info("server").get("run_id")
        since = None
        if self._failing_since is not None:
            since, self._failing_since = self._failing_since, None
        elif self._run_id is not None and run_id != self._run_id:
            since = self._last_ok or now
        self._run_id = run_id
        if since is not None:
            self.outage = Outage(since, now)
            self.hold_until = now + self.hold_s()
            log.warning("Redis was unreachable or restarted: holding off recovery for %.0fs", self.hold_s())

    def hold_s(self) -> float:
        """How long after an outage expired executions are left for their workers to renew."""
        return max(5.0, 3.0 * renewal_interval(self.cfg.heartbeat_interval))

    def reason_for(self, lease: Lease, expired_at: float) -> str:
        """Why an attempt's execution expired: its last renewal fell within a Redis outage, or
        its node stopped beating (node_lost), or only its worker did (attempt_lost)."""
        last_renewal = expired_at - execution_ttl(self.cfg.heartbeat_interval)
        o = self.outage
        slack = 2 * renewal_interval(self.cfg.heartbeat_interval)
        if o is not None and o.since - slack <= last_renewal <= o.until:
            return "redis_outage"
        raw = self.conn.zscore(keys.NODES_INDEX, lease.node)
        if raw is None or time.time() - float(raw) > 3 * self.cfg.heartbeat_interval:
            return "node_lost"
        blob = self.conn.get(node_key(lease.node))
        if blob is not None and b'"stopped":true' in blob:
            return "node_lost"
        return "attempt_lost"

    # --- the pass --------------------------------------------------------------------------
    def abandon_expired(self, q: Any, now: float) -> list[str]:
        """Give up on this queue's attempts whose execution expired; one job at a time."""
        done = []
        key = q.started_job_registry.key
        for member, score in self.conn.zrangebyscore(
            key, 0, now, start=0, num=EXPIRED_PER_QUEUE, withscores=True
        ):
            entry = member.decode(errors="replace")
            job_id, _, execution_id = entry.partition(":")
            try:
                if not execution_id:
                    self.conn.zrem(key, member)
                    continue
                what = lifecycle.abandon(
                    self.conn, job_id, execution_id, key, lambda lease, at=score: self.reason_for(lease, at)
                )
            except Exception:  # one broken record must not stop the others
                log.exception("recovery: could not settle expired execution %s; skipped", entry)
                self.errors += 1
                continue
            if what in ("requeued", "failed"):
                log.warning("job %s: its attempt stopped renewing; %s", job_id, what, extra={"job": job_id})
                done.append(job_id)
        return done

    def sweep_lost(self, now: float | None = None) -> list[str]:
        """Find jobs that are 'queued' but in no queue: popped by a worker that died before it
        claimed them (RQ's multi-queue dequeue is a plain BLPOP). A suspect must still look lost
        on a later sweep, at least ``LOST_CONFIRM_S`` on, before it is pushed back: a live
        worker takes milliseconds from the pop to its claim, so none is ever queued twice."""
        now = now or time.time()
        grace = max(10.0, 2 * self.cfg.heartbeat_interval)
        candidates = [
            c.decode(errors="replace")
            for c in self.conn.zrangebyscore(keys.PENDING, "-inf", now - grace, start=0, num=500)
        ]
        requeued = []
        for jid in candidates:
            try:
                if self._sweep_one(jid, now):
                    requeued.append(jid)
            except Exception:
                log.exception("recovery: could not check pending job %s; skipped", jid)
                self.errors += 1
        return requeued

    def _sweep_one(self, jid: str, now: float) -> bool:
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.hmget(SafeJob.key_for(jid), "status", "origin")
            pipe.exists(keys.lease_key(jid))
            pipe.hget(keys.LOST_SUSPECTS, jid)
            (status, origin), leased, suspect_since = pipe.execute()
        if origin is None or status not in (b"queued", b"started"):
            self.conn.zrem(keys.PENDING, jid)  # finished, expired...: not pending any more
            self.conn.hdel(keys.LOST_SUSPECTS, jid)
            return False
        if leased:  # claimed: if its worker died, its expiring execution says so (abandon)
            self.conn.zadd(keys.PENDING, {jid: now})
            self.conn.hdel(keys.LOST_SUSPECTS, jid)
            return False
        if self.conn.lpos(rq_queue(origin.decode(), self.conn).key, jid) is not None:
            self.conn.zadd(keys.PENDING, {jid: now})  # waiting its turn: look again later
            self.conn.hdel(keys.LOST_SUSPECTS, jid)
            return False
        if suspect_since is None:
            self.conn.hset(keys.LOST_SUSPECTS, jid, now)
            return False
        if now - float(suspect_since) < LOST_CONFIRM_S:
            return False
        if lifecycle.requeue_lost(self.conn, jid):
            log.warning(
                "job %s was popped by a worker that died before starting it: requeued",
                jid,
                extra={"job": jid},
            )
            return True
        return False

    def housekeep(self, q: Any) -> None:
        """RQ's registry expiry and dead-worker sweep for one queue: each queue once per
        ``HOUSEKEEPING_S``, a slice of them per tick (the worker sweep reads every worker of
        the queue, which grows with the fleet)."""
        for reg in (q.finished_job_registry, q.failed_job_registry, q.deferred_job_registry):
            try:
                reg.cleanup()
            except Exception:
                log.exception("recovery: cleanup of %s failed", reg.key)
                self.errors += 1
        worker_registration.clean_worker_registry(q)

    def _expired_queues(self, names: list[str], now: float) -> list[str]:
        """The queues with an expired execution, asked of all queues in one round trip."""
        with self.conn.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zrangebyscore(rq_queue(name, self.conn).started_job_registry.key, 0, now, start=0, num=1)
            found = pipe.execute()
        return [name for name, hit in zip(names, found, strict=True) if hit]

    def _housekeeping_slice(self, names: list[str]) -> list[str]:
        per_tick = max(1, math.ceil(len(names) * self.cfg.scheduler_interval / HOUSEKEEPING_S))
        start = self._housekeeping_at % max(1, len(names))
        self._housekeeping_at = start + per_tick
        return (names[start:] + names[:start])[:per_tick]

    def prune_nodes(self, now: float) -> int:
        """Forget nodes that have not beaten for the node records' lifetime (their records
        are gone): the heartbeat index and the fleet summary would otherwise only grow."""
        gone = self.conn.zrangebyscore(keys.NODES_INDEX, "-inf", now - keys.NODE_TTL_S, start=0, num=1000)
        if gone:
            with self.conn.pipeline(transaction=False) as pipe:
                pipe.zrem(keys.NODES_INDEX, *gone)
                pipe.hdel(keys.NODE_SUMMARY, *gone)
                pipe.delete(*(keys.node_index(n.decode(errors="replace")) for n in gone))
                pipe.hdel(keys.PRUNE_CURSORS, *(keys.node_index(n.decode(errors="replace")) for n in gone))
                pipe.execute()
        return len(gone)

    def tick(self) -> int:
        """One recovery pass; returns the number of queues it took the maintenance lock of.
        What it costs grows with what changed (expired executions, lost jobs), not with the
        fleet: the expiry check is one pipelined round trip over every queue."""
        now = time.time()
        self._note_redis(now)
        was_leader = self.is_leader
        if not self.acquire():
            return 0
        if not was_leader:  # it cannot know what happened before: workers renew first
            self.hold_until = max(self.hold_until, now + self.hold_s())
        self.sweep_lost(now)
        cleaned = 0
        if now >= self.hold_until:
            names = queues_in_use(self.conn)
            chores = {n: False for n in self._expired_queues(names, now)}
            chores.update({n: True for n in self._housekeeping_slice(names)})
            for name, housekeeping in chores.items():
                cleaned += self._clean(name, now, housekeeping)
            if self._housekeeping_at >= len(names):
                self._housekeeping_at = 0
                self.prune_nodes(now)
                prune_indexes(self.conn)
        self._last_ok = time.time()
        return cleaned

    def _clean(self, name: str, now: float, housekeeping: bool) -> int:
        q = rq_queue(name, self.conn)
        if not q.acquire_maintenance_lock():
            return 0  # a worker is cleaning this queue right now
        try:
            self.abandon_expired(q, now)
            if housekeeping:
                self.housekeep(q)
        finally:
            q.release_maintenance_lock()
        return 1

    async def loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except (redis.RedisError, OSError) as exc:
                if self._failing_since is None:
                    self._failing_since = self._last_ok or time.time()
                log.warning("recovery tick failed: %s", exc)
            except Exception:  # a bug in one tick must not end recovery for good
                log.exception("recovery tick failed")
            await asyncio.sleep(self.cfg.scheduler_interval)
