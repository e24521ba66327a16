"""The control plane at fleet scale, with a simulated fleet: each simulated node writes what a
real agent and its RQ slots write to Redis (the node record through ``write_heartbeat``, and
per slot RQ's worker hash and its worker-set memberships), so the coordinator reads exactly
what it would read from a real fleet of that size.

    .venv/bin/python bench/fleet_sim.py [--nodes 200,1000,5000] [--slots 4] [--samples 40]

Per fleet size, interleaved sample by sample so noise hits both sides alike:
- ``GET /nodes/{id}`` over HTTP and ``get_node`` in process, against a raw Redis ``GET`` of
  the node's record (the floor);
- ``GET /nodes?limit=100`` (one page) over HTTP;
- ``/metrics`` over HTTP, its size;
- one recovery tick (in process, as the leader, on an idle fleet: nothing expired).
Private redis-server on a unix socket, the coordinator as a subprocess, rate limits off.
Prints p50 per measure and the ratios.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dispatch import Stack

from coordinator.config import CoordinatorConfig
from coordinator.recovery import LEADER_KEY, Recovery
from ffrtmp.auth import KeyRing
from ffrtmp.keys import node_key
from ffrtmp.nodes import get_node, write_heartbeat
from ffrtmp.queues import slot_queues
from ffrtmp.submit import SubmitDefaults

ENCODERS = ["libx264", "libx265", "libvpx-vp9", "libaom-av1", "libsvtav1", "h264_nvenc", "hevc_nvenc"]


def node_record(i: int, slots: int) -> dict:
    """What a real agent's heartbeat carries (agent.main.Agent.record), with plausible values."""
    name = f"sim-{i:05d}"
    caps = ["cpu", "nvenc"] if i % 4 == 0 else ["cpu"]
    return {
        "schema": 2,
        "name": name,
        "version": "0.1.0",
        "boot_id": f"{i:08x}",
        "hostname": name,
        "slots": slots,
        "live_slots": 1,
        "slots_busy": i % (slots + 1),
        "slot_queues": {f"{name}.s{s}": slot_queues(caps, s == 0, name) for s in range(slots)},
        "capabilities": caps,
        "cpu_codecs": ["h264", "h265", "vp9", "av1"],
        "encoders": {e: (not e.endswith("nvenc") or "nvenc" in caps) for e in ENCODERS},
        "encoder_failures": {},
        "gpus": [{"model": "NVIDIA L4", "memory_mib": 23034}] if "nvenc" in caps else [],
        "dri_render_nodes": [],
        "ffmpeg_version": "ffmpeg version 6.1.1-3ubuntu5",
        "cpu_threads": 32,
        "memory_bytes": 128 << 30,
        "load1": 3.2,
        "cpu_percent": 41.0,
        "memory_percent": 22.5,
        "disk_free_ratio": 0.81,
        "disk": [{"path": "/srv/out", "free_bytes": 800 << 30, "full": False, "why": None}],
        "holds": {},
        "running": [],
        "draining": False,
        "metrics_port": 9091,
        "started_at": time.time() - 3600,
    }


def populate(conn, n: int, slots: int) -> list[str]:
    """Write ``n`` nodes and their ``slots`` RQ workers each, as real agents would."""
    names = []
    for i in range(n):
        rec = node_record(i, slots)
        write_heartbeat(conn, rec)
        with conn.pipeline(transaction=False) as pipe:
            for slot, queues in rec["slot_queues"].items():
                key = f"rq:worker:{slot}"
                pipe.hset(
                    key,
                    mapping={
                        "birth": "2026-12-02T07:00:00.000000Z",
                        "last_heart_beat": "2026-12-02T08:00:00.000000Z",
                        "queues": ",".join(queues),
                        "pid": 1000 + i,
                        "hostname": rec["name"],
                        "ip_address": "10.0.0.1",
                        "version": "2.6.0",
                        "python_version": "3.11",
                        "state": "idle",
                    },
                )
                pipe.expire(key, 3600)
                pipe.sadd("rq:workers", key)
                for q in queues:
                    pipe.sadd(f"rq:workers:{q}", key)
            pipe.execute()
        names.append(rec["name"])
    return names


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def http_get(conn: http.client.HTTPConnection, path: str, key: str) -> bytes:
    conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise SystemExit(f"{path}: HTTP {resp.status} {body[:200]!r}")
    return body


def measure(stack: Stack, conn, n: int, slots: int, samples: int) -> dict:
    conn.flushall()
    names = populate(conn, n, slots)
    cfg = CoordinatorConfig(redis_url="", keys=KeyRing([]), defaults=SubmitDefaults(), heartbeat_interval=30)
    rec = Recovery(conn, cfg, node_id="bench")
    # the bench's loop is the leader (the coordinator's own loop would take the lease after
    # the flush, and a tick that is not the leader's does nothing)
    conn.set(LEADER_KEY, "bench", px=3_600_000)
    rec.is_leader = True
    rec.hold_until = 0
    web = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=60)
    web.sock = socket.create_connection(("127.0.0.1", stack.port))
    res: dict[str, list[float]] = {k: [] for k in ("raw", "lib", "http_node", "page", "metrics", "tick")}
    size = 0
    for s in range(samples):
        name = names[(s * 7919) % n]
        res["raw"].append(timed(lambda name=name: conn.get(node_key(name))))
        res["lib"].append(timed(lambda name=name: get_node(conn, name, 90)))
        res["http_node"].append(timed(lambda name=name: http_get(web, f"/nodes/{name}", stack.key)))
        res["page"].append(timed(lambda: http_get(web, "/nodes?limit=100", stack.key)))
        t0 = time.perf_counter()
        size = len(http_get(web, "/metrics", stack.key))
        res["metrics"].append((time.perf_counter() - t0) * 1000)
        res["tick"].append(timed(rec.tick))
    web.close()
    p50 = {k: statistics.median(v) for k, v in res.items()}
    return {"nodes": n, "metrics_bytes": size, **{f"{k}_p50_ms": round(v, 3) for k, v in p50.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="200,1000,5000")
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--samples", type=int, default=40)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ffr-fleet-sim-") as tmp:
        stack = Stack(Path(tmp))
        try:
            conn = stack.redis()
            stack.coordinator_unlimited()
            rows = [measure(stack, conn, int(n), args.slots, args.samples) for n in args.nodes.split(",")]
        finally:
            stack.stop()
    print(
        f"{'nodes':>6} {'raw GET':>8} {'get_node':>9} {'x raw':>6} {'HTTP node':>10} {'page':>8}"
        f" {'/metrics':>9} {'bytes':>8} {'tick':>8}"
    )
    for r in rows:
        print(
            f"{r['nodes']:>6} {r['raw_p50_ms']:>8.3f} {r['lib_p50_ms']:>9.3f}"
            f" {r['lib_p50_ms'] / r['raw_p50_ms']:>6.1f} {r['http_node_p50_ms']:>10.2f}"
            f" {r['page_p50_ms']:>8.2f} {r['metrics_p50_ms']:>9.2f} {r['metrics_bytes']:>8}"
            f" {r['tick_p50_ms']:>8.2f}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
