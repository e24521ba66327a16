"""Queue names and routing.

Nine plain RQ queues ``<tier>.<priority>`` in strict order, plus capability-qualified twins
``<tier>.<priority>.<family>`` for jobs that name a hardware encoder family, plus pinned queues
``<tier>.<priority>@<node>`` for jobs that must run on one agent (canaries), plus planner queues
``<tier>.<priority>.plan`` for the parents of segmented jobs, which only an agent's planner
slot takes (a parent waits for its segments: on a transcoding slot it could hold the very slot
they need). Pinned queues are
made on demand; the set of them lives in Redis (``keys.PINNED_QUEUES``) so recovery and the
metrics find them.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from .keys import PINNED_QUEUES
from .presets import HW_FAMILIES

TIERS = ("live", "default", "batch")
PRIORITIES = ("high", "medium", "low")
PLAIN_QUEUES = tuple(f"{t}.{p}" for t in TIERS for p in PRIORITIES)
FAMILIES = tuple(HW_FAMILIES)
PLAN = "plan"
PLAN_QUEUES = tuple(f"{q}.{PLAN}" for q in PLAIN_QUEUES)
ALL_QUEUES = PLAIN_QUEUES + tuple(f"{q}.{f}" for q in PLAIN_QUEUES for f in FAMILIES) + PLAN_QUEUES


PIN = "@"


def queue_for(
    tier: str, priority: str, hwaccel: str, node: str | None = None, *, planner: bool = False
) -> str:
    base = f"{tier}.{priority}"
    if planner:
        return f"{base}.{PLAN}"
    if node:
        return f"{base}{PIN}{node}"
    return f"{base}.{hwaccel}" if hwaccel in HW_FAMILIES else base


def split_queue(name: str) -> tuple[str, str, str | None]:
    """(tier, priority, family or None) of a queue name; a pinned queue has no family."""
    base = name.partition(PIN)[0]
    parts = base.split(".")
    return parts[0], parts[1] if len(parts) > 1 else "", parts[2] if len(parts) > 2 else None


def slot_queues(capabilities: Iterable[str], live_only: bool, node: str | None = None) -> list[str]:
    """The queues one slot listens on, in strict priority order.

    Within one tier and priority a job pinned to this node comes first, then a proven hardware
    family before the plain queue, so GPU hosts take GPU work first at equal priority, yet no
    job ever outranks a higher tier.
    """
    caps = [f for f in FAMILIES if f in set(capabilities)]
    out: list[str] = []
    for tier in ("live",) if live_only else TIERS:
        for prio in PRIORITIES:
            if node:
                out.append(f"{tier}.{prio}{PIN}{node}")
            out.extend(f"{tier}.{prio}.{f}" for f in caps)
            out.append(f"{tier}.{prio}")
    return out


def planner_queues() -> list[str]:
    """The queues a planner slot listens on, in strict priority order."""
    return list(PLAN_QUEUES)


def queues_in_use(conn: redis.Redis) -> list[str]:
    """Every queue a job may sit in: the fixed ones and the pinned ones made so far."""
    pinned = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in conn.smembers(PINNED_QUEUES))
    return list(ALL_QUEUES) + [q for q in pinned if PIN in q]
