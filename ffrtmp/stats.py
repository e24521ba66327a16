"""Fleet statistics kept in Redis.

Jobs end in short-lived RQ horses on many hosts, so in-process Prometheus counters would die
with them and could not add up across the fleet. Writers add to Redis hashes inside the
pipelines they already send; the coordinator exports them as counters and histograms. Label
values come from small closed sets (tiers, priorities, outcomes, reasons): no per-job labels.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from redis.client import Pipeline

from .keys import (
    CANCELS,
    FENCED,
    FINISHED,
    REQUEUES,
    SLA,
    SUBMITTED,
    hist_key,
    node_stats_key,
    violations_key,
)
from .redisconn import text

__all__ = ["CANCELS", "FENCED", "FINISHED", "REQUEUES", "SLA", "SUBMITTED", "hist_key", "node_stats_key"]

HISTOGRAMS: dict[str, tuple[float, ...]] = {
    "queue_wait": (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
    "run": (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600),
}

# Service level per tier: how long a job may wait in its queue (live work first).
SLA_WAIT_S = {"live": 5.0, "default": 60.0, "batch": 3600.0}
VIOLATIONS_KEPT = 50


def _le(bound: float) -> str:
    return f"{bound:g}"


def observe(pipe: Pipeline, name: str, tier: str, value: float) -> None:
    """Add one observation to a cumulative histogram (buckets as Prometheus expects them)."""
    key = hist_key(name, tier)
    for bound in HISTOGRAMS[name]:
        if value <= bound:
            pipe.hincrby(key, _le(bound), 1)
    pipe.hincrby(key, "+Inf", 1)
    pipe.hincrby(key, "count", 1)
    pipe.hincrbyfloat(key, "sum", float(value))


def parse_histogram(raw: dict[bytes, bytes], name: str) -> tuple[list[tuple[str, float]], float]:
    """(cumulative buckets, sum) from a histogram hash as ``observe`` writes it."""
    values = {k.decode(): float(v) for k, v in raw.items()}
    buckets = [(_le(b), values.get(_le(b), 0.0)) for b in HISTOGRAMS[name]] + [
        ("+Inf", values.get("+Inf", 0.0))
    ]
    return buckets, values.get("sum", 0.0)


def record_finished(pipe: Pipeline, tier: str, priority: str, outcome: str, reason: str) -> None:
    pipe.hincrby(FINISHED, f"{tier}|{priority}|{outcome}|{reason}", 1)


def record_violation(
    pipe: Pipeline, node: str, job_id: str, tier: str, kind: str, detail: str, value: float | None = None
) -> None:
    entry = {"time": time.time(), "job": job_id, "tier": tier, "reason": kind, "detail": detail}
    if value is not None:
        entry["value"] = round(value, 3)
    pipe.lpush(violations_key(node), json.dumps(entry, separators=(",", ":")))
    pipe.ltrim(violations_key(node), 0, VIOLATIONS_KEPT - 1)
    pipe.hincrby(SLA, f"{tier}|{kind}", 1)


def read_violations(conn: redis.Redis, node: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in conn.lrange(violations_key(node), 0, VIOLATIONS_KEPT - 1)]


def split_fields(raw: dict[bytes, bytes], n: int) -> list[tuple[list[str], float]]:
    """Counter fields "a|b|..." of ``n`` parts with their values; a field or value that is not
    one (what Redis holds is untrusted) is left out."""
    out = []
    for k, v in sorted(raw.items()):
        parts = text(k).split("|")
        try:
            value = float(v)
        except ValueError:
            continue
        if len(parts) == n and value == value:  # not NaN
            out.append((parts, value))
    return out
