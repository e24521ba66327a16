"""Coordinator metrics, read from Redis at scrape time.

Reads never trigger RQ cleanups: registries are counted with ZCARD on their keys and queues
with LLEN, never with ``.count`` or ``get_job_ids()``. Counters live in Redis so that any
number of coordinators report the same totals.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.utils import utcparse

from ffrtmp import __version__, stats
from ffrtmp.nodes import FleetSummary, fleet_summary
from ffrtmp.queues import ALL_QUEUES, PRIORITIES, TIERS, split_queue
from ffrtmp.redisconn import text
from ffrtmp.rqjob import SafeJob, rq_queue
from ffrtmp.terms import COMMON_ENDS, REQUEUE_REASONS

if TYPE_CHECKING:
    from .config import CoordinatorConfig

REGISTRIES = {
    "started": StartedJobRegistry,
    "finished": FinishedJobRegistry,
    "failed": FailedJobRegistry,
    "deferred": DeferredJobRegistry,
    "scheduled": ScheduledJobRegistry,
    "canceled": CanceledJobRegistry,
}


PROBE_TIMEOUT_S = 0.8  # a scrape learns that Redis is not answering within this


class CoordinatorMetrics:
    def __init__(self, conn: redis.Redis, cfg: CoordinatorConfig) -> None:
        self.conn = conn
        self.cfg = cfg
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self._probe = _probe_client(conn)
        self._down = CollectorRegistry()
        self._down.register(_RedisDown())

    def redis_answers(self) -> bool:
        """Does Redis answer a PING within PROBE_TIMEOUT_S? A frozen Redis must not hold a scrape
        past the scrape timeout: then the scrape says ffrtmp_redis_up 0 at once, and the
        RedisDown alert fires instead of CoordinatorDown."""
        try:
            return self._probe is not None and bool(self._probe.ping())
        except (redis.RedisError, OSError):
            return False

    def exposition_while_down(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self._down)

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
                heads[name] = text(row[1])
            out.append(stats)
        if heads:
            with self.conn.pipeline(transaction=False) as pipe:
                for jid in heads.values():
                    pipe.hget(SafeJob.key_for(jid), "enqueued_at")
                stamps = pipe.execute()
            ages = {}
            for (name, _jid), ts in zip(heads.items(), stamps, strict=True):
                with contextlib.suppress(ValueError, TypeError):  # a stamp that is not one: no age
                    ages[name] = max(0.0, now - utcparse(text(ts)).timestamp()) if ts else 0.0
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
            queues = self.queue_stats()
            fleet = fleet_summary(self.conn, self.cfg.heartbeat_timeout)
            with self.conn.pipeline(transaction=False) as pipe:
                for key in (
                    stats.SUBMITTED,
                    stats.FINISHED,
                    stats.REQUEUES,
                    stats.CANCELS,
                    stats.SLA,
                    stats.FENCED,
                ):
                    pipe.hgetall(key)
                for name in stats.HISTOGRAMS:
                    for tier in TIERS:
                        pipe.hgetall(stats.hist_key(name, tier))
                pipe.scard("rq:workers")
                raw = pipe.execute()
            up = 1
        except (redis.RedisError, OSError):
            up = 0
        g_up = GaugeMetricFamily("ffrtmp_redis_up", "1 if the coordinator can read Redis")
        g_up.add_metric([], up)
        yield g_up
        if not up:
            return
        submitted, finished, requeues, cancels, sla, fenced = raw[:6]
        hists = raw[6:-1]
        yield from self._queue_metrics(queues)
        yield from self._node_metrics(fleet, raw[-1])

        c = CounterMetricFamily(
            "ffrtmp_jobs_submitted", "Jobs accepted by the API", labels=["tier", "priority"]
        )
        for (tier, prio), v in stats.split_fields(
            {k.replace(b".", b"|"): v for k, v in submitted.items()}, 2
        ):
            c.add_metric([tier, prio], v)
        yield c
        c = CounterMetricFamily(
            "ffrtmp_jobs_finished",
            "Jobs that reached a terminal state",
            labels=["tier", "priority", "outcome", "reason"],
        )
        ends = {(t, p, o, r): 0.0 for t in TIERS for p in PRIORITIES for o, r in COMMON_ENDS}
        ends.update({tuple(labels): v for labels, v in stats.split_fields(finished, 4)})
        for labels, v in ends.items():
            c.add_metric(list(labels), v)
        yield c
        c = CounterMetricFamily(
            "ffrtmp_job_requeues", "Attempts requeued after a platform failure", labels=["reason"]
        )
        by_reason = dict.fromkeys(REQUEUE_REASONS, 0.0)
        by_reason.update({reason: v for (reason,), v in stats.split_fields(requeues, 1)})
        for reason, v in by_reason.items():
            c.add_metric([reason], v)
        yield c
        c = CounterMetricFamily(
            "ffrtmp_fenced_writes",
            "Job writes refused because the attempt no longer held its lease",
            labels=["transition"],
        )
        for (transition,), v in stats.split_fields(fenced, 1):
            c.add_metric([transition], v)
        yield c
        c = CounterMetricFamily(
            "ffrtmp_job_cancels", "FFmpeg stops on cancel or timeout, by how they ended", labels=["mode"]
        )
        for mode in ("graceful", "forced"):
            c.add_metric([mode], float(cancels.get(mode.encode(), 0)))
        yield c
        c = CounterMetricFamily(
            "ffrtmp_sla_violations",
            "SLA violations (queue wait over the tier's target, platform-caused failures)",
            labels=["tier", "kind"],
        )
        for labels, v in stats.split_fields(sla, 2):
            c.add_metric(labels, v)
        yield c
        i = 0
        for name in stats.HISTOGRAMS:
            help_text = {
                "queue_wait": "Seconds from enqueue to an attempt's start",
                "run": "Seconds an attempt ran, by tier",
            }[name]
            h = HistogramMetricFamily(f"ffrtmp_job_{name}_seconds", help_text, labels=["tier"])
            for tier in TIERS:
                buckets, total = stats.parse_histogram(hists[i], name)
                i += 1
                h.add_metric([tier], buckets, total)
            yield h

    def _queue_metrics(self, queues: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
        jobs = GaugeMetricFamily("rq_jobs", "RQ jobs by queue and status", labels=["queue", "status"])
        age = GaugeMetricFamily(
            "ffrtmp_queue_oldest_job_age_seconds",
            "Age of the oldest queued job per queue (starvation signal)",
            labels=["queue"],
        )
        for s in queues:
            jobs.add_metric([s["name"], "queued"], s["queued"])
            for status in REGISTRIES:
                jobs.add_metric([s["name"], status], s[status])
            age.add_metric([s["name"]], s["oldest_age_s"])
        yield jobs
        yield age

    def _node_metrics(self, fleet: FleetSummary, workers: int):  # type: ignore[no-untyped-def]
        """Fleet gauges from one aggregate; per-node series only for the nodes that are down
        (what the AgentDown alert needs). Per-node detail is each agent's own /metrics."""
        g_nodes = GaugeMetricFamily("ffrtmp_nodes", "Agents by state", labels=["state"])
        for state, c in fleet.states.items():
            g_nodes.add_metric([state], c)
        yield g_nodes
        up = GaugeMetricFamily(
            "ffrtmp_node_up",
            "0 for each node that missed its heartbeats (live and cleanly stopped nodes are left out)",
            labels=["node"],
        )
        age = GaugeMetricFamily(
            "ffrtmp_node_heartbeat_age_seconds", "Seconds since a down node's last heartbeat", labels=["node"]
        )
        for name, seconds in fleet.down:
            up.add_metric([name], 0)
            age.add_metric([name], seconds)
        yield up
        yield age
        g_slots = GaugeMetricFamily("ffrtmp_fleet_slots", "Job slots on live agents", labels=["state"])
        g_slots.add_metric(["busy"], fleet.slots_busy)
        g_slots.add_metric(["total"], fleet.slots_total)
        yield g_slots
        w = GaugeMetricFamily("rq_workers", "RQ workers registered (one per agent slot)")
        w.add_metric([], workers)
        yield w


def _probe_client(conn: redis.Redis | None) -> redis.Redis | None:
    """A client of the same Redis with short timeouts (its own pool: the main pool's
    connections may all be held by calls that a frozen Redis keeps waiting)."""
    if conn is None:
        return None
    pool = conn.connection_pool
    kwargs = {
        **pool.connection_kwargs,
        "socket_timeout": PROBE_TIMEOUT_S,
        "socket_connect_timeout": PROBE_TIMEOUT_S,
    }
    return redis.Redis(connection_pool=type(pool)(connection_class=pool.connection_class, **kwargs))


class _RedisDown:
    """What a scrape says while Redis does not answer: the build and ffrtmp_redis_up 0."""

    def collect(self):  # type: ignore[no-untyped-def]
        info = InfoMetricFamily("ffrtmp_coordinator_build", "Coordinator version")
        info.add_metric([], {"version": __version__})
        yield info
        g_up = GaugeMetricFamily("ffrtmp_redis_up", "1 if the coordinator can read Redis")
        g_up.add_metric([], 0)
        yield g_up
