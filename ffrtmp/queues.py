"""Queue names and routing.

Nine plain RQ queues ``<tier>.<priority>`` in strict order, plus capability-qualified twins
``<tier>.<priority>.<family>`` for jobs that name a hardware encoder family.
"""

from __future__ import annotations

from collections.abc import Iterable

from .presets import HW_FAMILIES

TIERS = ("live", "default", "batch")
PRIORITIES = ("high", "medium", "low")
PLAIN_QUEUES = tuple(f"{t}.{p}" for t in TIERS for p in PRIORITIES)
FAMILIES = tuple(HW_FAMILIES)
ALL_QUEUES = PLAIN_QUEUES + tuple(f"{q}.{f}" for q in PLAIN_QUEUES for f in FAMILIES)


def queue_for(tier: str, priority: str, hwaccel: str) -> str:
    base = f"{tier}.{priority}"
    return f"{base}.{hwaccel}" if hwaccel in HW_FAMILIES else base


def split_queue(name: str) -> tuple[str, str, str | None]:
    parts = name.split(".")
    return parts[0], parts[1], parts[2] if len(parts) > 2 else None


def slot_queues(capabilities: Iterable[str], live_only: bool) -> list[str]:
    """The queues one slot listens on, in strict priority order.

    Within one tier and priority a proven hardware family comes before the plain queue, so GPU
    hosts take GPU work first at equal priority, yet a GPU job never outranks a higher tier.
    """
    caps = [f for f in FAMILIES if f in set(capabilities)]
    out: list[str] = []
    for tier in ("live",) if live_only else TIERS:
        for prio in PRIORITIES:
            out.extend(f"{tier}.{prio}.{f}" for f in caps)
            out.append(f"{tier}.{prio}")
    return out
