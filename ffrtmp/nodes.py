"""Node records: what each agent proved it can do, and whether it is alive."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from .keys import BOOTS_TTL_S, NODE_TTL_S, NODES_INDEX, boots_key, drain_key, node_key

__all__ = ["drain_key", "get_node", "list_nodes", "node_state", "write_heartbeat"]

FLAP_WINDOW_S = 30 * 60
FLAP_STARTS = 3  # starts within the window that make a node "flapping"


def write_heartbeat(conn: redis.Redis, record: dict[str, Any]) -> None:
    now = time.time()
    record = {**record, "last_heartbeat": now}
    name = record["name"]
    with conn.pipeline() as pipe:
        pipe.set(node_key(name), json.dumps(record, separators=(",", ":")), ex=NODE_TTL_S)
        pipe.zadd(NODES_INDEX, {name: now})
        if record.get("boot_id"):  # each agent process start is remembered for a day
            pipe.zadd(boots_key(name), {record["boot_id"]: now}, nx=True)
            pipe.zremrangebyscore(boots_key(name), "-inf", now - BOOTS_TTL_S)
            pipe.expire(boots_key(name), BOOTS_TTL_S)
        pipe.execute()


def node_state(record: dict[str, Any], now: float, heartbeat_timeout_s: float, draining: bool) -> str:
    if record.get("stopped"):
        return "stopped"
    if now - float(record.get("last_heartbeat", 0)) > heartbeat_timeout_s:
        return "dead"
    if draining or record.get("draining"):
        return "draining"
    return "alive"


def list_nodes(conn: redis.Redis, heartbeat_timeout_s: float) -> list[dict[str, Any]]:
    names = [n.decode() if isinstance(n, bytes) else n for n in conn.zrange(NODES_INDEX, 0, -1)]
    if not names:
        return []
    now = time.time()
    with conn.pipeline() as pipe:
        for n in names:
            pipe.get(node_key(n))
            pipe.exists(drain_key(n))
            pipe.zcount(boots_key(n), now - FLAP_WINDOW_S, "+inf")
        raw = pipe.execute()
    out = []
    for i, _name in enumerate(names):
        blob, draining, starts = raw[3 * i], raw[3 * i + 1], raw[3 * i + 2]
        if blob is None:
            continue
        rec = json.loads(blob)
        rec["state"] = node_state(rec, now, heartbeat_timeout_s, bool(draining))
        rec["heartbeat_age_s"] = round(now - float(rec.get("last_heartbeat", 0)), 3)
        rec["starts_30m"] = int(starts)
        rec["flapping"] = int(starts) >= FLAP_STARTS
        out.append(rec)
    return out


def get_node(conn: redis.Redis, name: str, heartbeat_timeout_s: float) -> dict[str, Any] | None:
    for rec in list_nodes(conn, heartbeat_timeout_s):
        if rec["name"] == name:
            return rec
    return None
