"""Coordinator metrics, read from Redis at scrape time.

Reads never trigger RQ cleanups: registries are counted with ZCARD on their keys and queues
with LLEN, never with ``.count`` or ``get_job_ids()``. Counters live in Redis so that any
number of coordinators report the same totals.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.utils import utcparse

from ffrtmp import __version__
from ffrtmp.jobs import SUBMITTED_COUNTER
from ffrtmp.nodes import list_nodes
from ffrtmp.queues import ALL_QUEUES, split_queue
from ffrtmp.rqjob import SafeJob, rq_queue

if TYPE_CHECKING:
    from .app import CoordinatorConfig

REGISTRIES = {
    "started": StartedJobRegistry,
    "finished": FinishedJobRegistry,
    "failed": FailedJobRegistry,
    "deferred": DeferredJobRegistry,
    "scheduled": ScheduledJobRegistry,
    "canceled": CanceledJobRegistry,
}
NODE_STATES = ("alive", "draining", "dead", "stopped")


class CoordinatorMetrics:
    def __init__(self, conn: redis.Redis, cfg: CoordinatorConfig) -> None:
        self.conn = conn
        self.cfg = cfg
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def queue_stats(self) -> list[dict[str, Any]]:
        now = time.time()
        keys = {}
        with self.conn.pipeline(transaction=False) as pipe:
            for name in ALL_QUEUES:
                q = rq_queue(name, self.conn)
                keys[name] = q
                pipe.llen(q.key)
                pipe.lindex(q.key, 0)
                for reg in REGISTRIES.values():
                    pipe.zcard(reg(name, connection=self.conn).key)
            raw = pipe.execute()
        width = 2 + len(REGISTRIES)
        heads = {}
        out = []
        for i, name in enumerate(ALL_QUEUES):
            row = raw[i * width : (i + 1) * width]
            tier, prio, cap = split_queue(name)
            stats = {"name": name, "tier": tier, "priority": prio, "capability": cap, "queued": row[0]}
            for j, status in enumerate(REGISTRIES):
                stats[status] = row[2 + j]
            if row[1]:
                heads[name] = row[1].decode()
            out.append(stats)
        if heads:
            with self.conn.pipeline(transaction=False) as pipe:
                for jid in heads.values():
                    pipe.hget(SafeJob.key_for(jid), "enqueued_at")
                stamps = pipe.execute()
            ages = {}
            for (name, _jid), ts in zip(heads.items(), stamps, strict=True):
                if ts:
                    ages[name] = max(0.0, now - utcparse(ts.decode()).timestamp())
            for stats in out:
                stats["oldest_age_s"] = round(ages.get(stats["name"], 0.0), 3)
        else:
            for stats in out:
                stats["oldest_age_s"] = 0.0
        return out

    def collect(self):  # type: ignore[no-untyped-def]
        info = InfoMetricFamily("ffrtmp_coordinator_build", "Coordinator version")
        info.add_metric([], {"version": __version__})
        yield info
        try:
            stats = self.queue_stats()
            nodes = list_nodes(self.conn, self.cfg.heartbeat_timeout)
            submitted = self.conn.hgetall(SUBMITTED_COUNTER)
            up = 1
        except (redis.RedisError, OSError):
            up = 0
        g_up = GaugeMetricFamily("ffrtmp_redis_up", "1 if the coordinator can read Redis")
        g_up.add_metric([], up)
        yield g_up
        if not up:
            return
        jobs = GaugeMetricFamily("rq_jobs", "RQ jobs by queue and status", labels=["queue", "status"])
        age = GaugeMetricFamily(
            "ffrtmp_queue_oldest_job_age_seconds",
            "Age of the oldest queued job per queue (starvation signal)",
            labels=["queue"],
        )
        for s in stats:
            jobs.add_metric([s["name"], "queued"], s["queued"])
            for status in REGISTRIES:
                jobs.add_metric([s["name"], status], s[status])
            age.add_metric([s["name"]], s["oldest_age_s"])
        yield jobs
        yield age
        g_nodes = GaugeMetricFamily("ffrtmp_nodes", "Agents by state", labels=["state"])
        counts = dict.fromkeys(NODE_STATES, 0)
        slots_total = slots_busy = 0
        for n in nodes:
            counts[n["state"]] = counts.get(n["state"], 0) + 1
            if n["state"] in ("alive", "draining"):
                slots_total += int(n.get("slots", 0))
                slots_busy += int(n.get("slots_busy", 0))
        for state, c in counts.items():
            g_nodes.add_metric([state], c)
        yield g_nodes
        g_slots = GaugeMetricFamily("ffrtmp_fleet_slots", "Job slots on live agents", labels=["state"])
        g_slots.add_metric(["busy"], slots_busy)
        g_slots.add_metric(["total"], slots_total)
        yield g_slots
        c_sub = CounterMetricFamily(
            "ffrtmp_jobs_submitted", "Jobs accepted by the API", labels=["tier", "priority"]
        )
        for k, v in sorted(submitted.items()):
            tier, _, prio = k.decode().partition(".")
            c_sub.add_metric([tier, prio], int(v))
        yield c_sub
