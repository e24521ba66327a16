"""Node records: what each agent proved it can do, and whether it is alive."""

from __future__ import annotations

import bisect
import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from .keys import BOOTS_TTL_S, NODE_SUMMARY, NODE_TTL_S, NODES_INDEX, boots_key, drain_key, node_key
from .lifecycle import ask_running_on, leases_on
from .redisconn import text

__all__ = [
    "NODE_STATES",
    "FleetSummary",
    "NodeFilter",
    "drain_key",
    "fleet_summary",
    "get_node",
    "node_state",
    "page_nodes",
    "set_draining",
    "write_heartbeat",
]

FLAP_WINDOW_S = 30 * 60
FLAP_STARTS = 3  # starts within the window that make a node "flapping"
NODE_STATES = ("alive", "draining", "dead", "stopped")  # what node_state answers
NODE_SCAN_LIMIT = 5000  # node records one listing request may read, whatever its filter keeps


def write_heartbeat(conn: redis.Redis, record: dict[str, Any]) -> None:
    now = time.time()
    record = {**record, "last_heartbeat": now}
    name = record["name"]
    with conn.pipeline() as pipe:
        pipe.set(node_key(name), json.dumps(record, separators=(",", ":")), ex=NODE_TTL_S)
        pipe.zadd(NODES_INDEX, {name: now})
        pipe.hset(NODE_SUMMARY, name, json.dumps(_summary_of(record, now), separators=(",", ":")))
        if record.get("boot_id"):  # each agent process start is remembered for a day
            pipe.zadd(boots_key(name), {record["boot_id"]: now}, nx=True)
            pipe.zremrangebyscore(boots_key(name), "-inf", now - BOOTS_TTL_S)
            pipe.expire(boots_key(name), BOOTS_TTL_S)
        pipe.execute()


def _summary_of(record: dict[str, Any], now: float) -> list[Any]:
    slots, busy = record.get("slots", 0), record.get("slots_busy", 0)
    return [now, slots, busy, bool(record.get("draining")), bool(record.get("stopped"))]


@dataclass
class FleetSummary:
    """The fleet gauges: nodes per state, slots on live nodes, and the nodes that are down
    (missed their heartbeats) with how long ago they last beat."""

    states: dict[str, int]
    slots_total: int = 0
    slots_busy: int = 0
    down: list[tuple[str, float]] = field(default_factory=list)


# The fleet gauges computed inside Redis: one call, a few bytes back, whatever the fleet's
# size (decoding 5,000 entries in Python took 80 ms; this takes a few). Entries are untrusted:
# one that does not decode is reported as missing and its node's record is read instead.
_FLEET_SUMMARY = """
local now, timeout = tonumber(ARGV[1]), tonumber(ARGV[2])
local entries = redis.call('HGETALL', KEYS[2])
local alive, draining, dead, stopped, total, busy, counted = 0, 0, 0, 0, 0, 0, 0
local down, bad = {}, {}
local function count(v)
  v = tonumber(v)
  if v == nil or v < 0 or v >= 1048576 then return 0 end
  return math.floor(v)
end
for i = 1, #entries, 2 do
  local name = entries[i]
  local ok, e = pcall(cjson.decode, entries[i + 1])
  local t = ok and type(e) == 'table' and #e == 5 and tonumber(e[1])
  if not t then
    bad[name] = true
  else
    counted = counted + 1
    local age = now - t
    if e[5] == true then
      stopped = stopped + 1
    elseif age > timeout then
      dead = dead + 1
      down[#down + 1] = name
      down[#down + 1] = tostring(age)
    else
      if e[4] == true then draining = draining + 1 else alive = alive + 1 end
      local slots = count(e[2])
      total = total + slots
      busy = busy + math.min(count(e[3]), slots)
    end
  end
end
-- nodes in the heartbeat index without a readable entry (agents older than the summary):
-- looked for only when the two disagree, which a fleet of one version never does
local missing = {}
if redis.call('ZCARD', KEYS[1]) ~= counted then
  local names = redis.call('ZRANGE', KEYS[1], 0, -1)
  local has = {}
  for i = 1, #entries, 2 do has[entries[i]] = not bad[entries[i]] end
  for _, name in ipairs(names) do
    if not has[name] then missing[#missing + 1] = name end
  end
end
return {{alive, draining, dead, stopped, total, busy}, down, missing}
"""


def fleet_summary(conn: redis.Redis, heartbeat_timeout_s: float) -> FleetSummary:
    """The fleet gauges in one Redis call (a script over the heartbeat index and the summary
    hash), never the node records; only a node with no readable summary entry (an agent older
    than the summary) has its record read."""
    (alive, draining, dead, stopped, total, busy), down, missing = conn.register_script(_FLEET_SUMMARY)(
        keys=[NODES_INDEX, NODE_SUMMARY], args=[time.time(), heartbeat_timeout_s]
    )
    out = FleetSummary({"alive": alive, "draining": draining, "dead": dead, "stopped": stopped}, total, busy)
    out.down = [(text(down[i]), round(float(down[i + 1]), 3)) for i in range(0, len(down), 2)]
    for rec in _read_nodes(conn, [text(m) for m in missing], heartbeat_timeout_s) if missing else []:
        slots, busy = _int(rec.get("slots")), _int(rec.get("slots_busy"))
        draining, stopped = rec["state"] == "draining", rec["state"] == "stopped"
        _count(out, rec["name"], rec["heartbeat_age_s"], slots, busy, draining, stopped, heartbeat_timeout_s)
    return out


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 20 else 0


def _count(
    out: FleetSummary,
    name: str,
    age: float,
    slots: int,
    busy: int,
    draining: bool,
    stopped: bool,
    heartbeat_timeout_s: float,
) -> None:
    state = (
        "stopped" if stopped else "dead" if age > heartbeat_timeout_s else "draining" if draining else "alive"
    )
    out.states[state] += 1
    if state == "dead":
        out.down.append((name, round(age, 3)))
    elif state != "stopped":
        out.slots_total += slots
        out.slots_busy += min(busy, slots)


def set_draining(conn: redis.Redis, name: str, draining: bool, who: str) -> None:
    """Drain a node (it takes no new job; what runs finishes) or let it take jobs again."""
    if draining:
        conn.set(drain_key(name), who)
    else:
        conn.delete(drain_key(name))


def node_state(record: dict[str, Any], now: float, heartbeat_timeout_s: float, draining: bool) -> str:
    if record.get("stopped"):
        return "stopped"
    if now - float(record.get("last_heartbeat", 0)) > heartbeat_timeout_s:
        return "dead"
    if draining or record.get("draining"):
        return "draining"
    return "alive"


def _node_record(
    blob: Any, draining: Any, starts: Any, now: float, heartbeat_timeout_s: float
) -> dict[str, Any] | None:
    """A node record as read from Redis (untrusted: a broken blob is no node), with its state."""
    if blob is None:
        return None
    try:
        rec = json.loads(blob)
    except ValueError:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
        return None
    try:
        age = now - float(rec.get("last_heartbeat", 0))
    except (TypeError, ValueError):
        rec["last_heartbeat"], age = 0.0, now
    rec.setdefault("schema", 1)  # agents before the schema field wrote version 1
    rec["state"] = node_state(rec, now, heartbeat_timeout_s, bool(draining))
    rec["heartbeat_age_s"] = round(age, 3)
    rec["starts_30m"] = int(starts)
    rec["flapping"] = int(starts) >= FLAP_STARTS
    return rec


def _ask_node(pipe: Any, name: str, now: float) -> None:
    """Queue the three reads ``_node_record`` takes: the record, the drain flag, recent starts."""
    pipe.get(node_key(name))
    pipe.exists(drain_key(name))
    pipe.zcount(boots_key(name), now - FLAP_WINDOW_S, "+inf")


def _read_nodes(conn: redis.Redis, names: list[str], heartbeat_timeout_s: float) -> list[dict[str, Any]]:
    now = time.time()
    with conn.pipeline(transaction=False) as pipe:
        for n in names:
            _ask_node(pipe, n, now)
        raw = pipe.execute()
    out = []
    for i in range(len(names)):
        rec = _node_record(raw[3 * i], raw[3 * i + 1], raw[3 * i + 2], now, heartbeat_timeout_s)
        if rec is not None:
            out.append(rec)
    return out


@dataclass(frozen=True)
class NodeFilter:
    state: str | None = None
    draining: bool | None = None
    encoder: str | None = None  # an encoder the node proved (libx264, h264_nvenc, …)

    def __call__(self, rec: dict[str, Any]) -> bool:
        if self.state is not None and rec["state"] != self.state:
            return False
        if self.draining is not None and (rec["state"] == "draining") != self.draining:
            return False
        encoders = rec.get("encoders")
        return self.encoder is None or (isinstance(encoders, dict) and encoders.get(self.encoder) is True)


def page_nodes(
    conn: redis.Redis,
    heartbeat_timeout_s: float,
    *,
    keep: NodeFilter | None = None,
    after: str = "",
    limit: int = 500,
) -> tuple[list[dict[str, Any]], str | None]:
    """Nodes by name after ``after``, ``limit`` at most, that ``keep`` accepts; returns the page
    and the cursor to go on from (None at the end). Only the records of the names looked at
    are read, ``limit`` at a time, and no more than ``NODE_SCAN_LIMIT`` of them per request."""
    names = sorted(n.decode() if isinstance(n, bytes) else n for n in conn.zrange(NODES_INDEX, 0, -1))
    pos = bisect.bisect_right(names, after) if after else 0
    out: list[dict[str, Any]] = []
    budget = NODE_SCAN_LIMIT
    while pos < len(names) and len(out) < limit and budget > 0:
        chunk = names[pos : pos + min(max(limit - len(out), 100), budget)]
        budget -= len(chunk)
        found = {r["name"]: r for r in _read_nodes(conn, chunk, heartbeat_timeout_s)}
        for name in chunk:
            pos += 1
            rec = found.get(name)
            if rec is not None and (keep is None or keep(rec)):
                out.append(rec)
                if len(out) == limit:
                    break
    return out, (names[pos - 1] if pos < len(names) else None)


def get_node(conn: redis.Redis, name: str, heartbeat_timeout_s: float) -> dict[str, Any] | None:
    """One node by name: its record and the jobs the lifecycle has running there, in one round
    trip (two while a job runs there) whatever the size of the fleet."""
    now = time.time()
    with conn.pipeline(transaction=False) as pipe:
        _ask_node(pipe, name, now)
        ask_running_on(pipe, name)
        blob, draining, starts, running = pipe.execute()
    rec = _node_record(blob, draining, starts, now, heartbeat_timeout_s)
    if rec is None or rec["name"] != name:
        return None
    rec["running"] = _with_lifecycle_runs(
        conn, name, rec.get("running"), running, rec.get("state") in ("alive", "draining")
    )
    return rec


def _with_lifecycle_runs(
    conn: redis.Redis, name: str, reported: Any, running: list[Any], beating: bool = True
) -> list[dict[str, Any]]:
    """What the agent's last heartbeat saw running, plus the jobs the lifecycle has claimed on
    the node that the heartbeat (one interval old) does not show yet: a drain that waits on
    ``running`` never reads "nothing" while a job it was given is starting. The last heartbeat
    of a node that stopped beating is old news: of what it reported, only the jobs the
    lifecycle still has on the node are listed (recovery requeues the others)."""
    leases = leases_on(conn, name, running)
    runs = [r for r in reported if isinstance(r, dict)] if isinstance(reported, list) else []
    if not beating:
        held = {lease.job_id for lease in leases}
        runs = [r for r in runs if r.get("job") in held]
    seen = {r.get("job") for r in runs}
    for lease in leases:
        if lease.job_id not in seen:
            runs.append(
                {
                    "job": lease.job_id,
                    "attempt": lease.attempt,
                    "ffmpeg_pid": None,
                    "run_dir": None,
                    "starting": True,
                }
            )
    return runs
