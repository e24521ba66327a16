"""Segmented encoding: the wall time of one long encode on one agent against the same encode
segmented across 2 and 4 agents, interleaved in rounds (single, 2 agents, 4 agents, single, ...)
so that noise hits all three alike; with the join's share (last segment done -> output
published) and the plan's (submit -> first segment running).

    .venv/bin/python bench/segmented.py [--rounds 2] [--seconds 60] [--size 1280x720]

One machine: Redis, a coordinator and four agents of one transcoding slot each (the fleet of
tests/integration/stack.py), sharing the cores; the agent count is set by draining agents. On
one machine the agents compete for the same cores (x264 already uses several threads), so the
speed-up measured here is a floor; docs/benchmarks.md states the model for separate hosts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ffrtmp import media
from ffrtmp.cli.client import Client
from tests.integration.stack import Stack

AGENTS = ("b1", "b2", "b3", "b4")
TERMINAL = {"completed", "failed", "canceled", "timed_out", "rejected"}


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def wait(client: Client, job_id: str) -> dict:
    while True:
        view = client.get(f"/jobs/{job_id}")
        if view["state"] in TERMINAL:
            return view
        time.sleep(0.2)


def use_agents(client: Client, n: int) -> None:
    for i, name in enumerate(AGENTS):
        client.post(f"/nodes/{name}/{'undrain' if i < n else 'drain'}")
    time.sleep(3)  # the drained agents' slots stop, the others' start


def run_one(client: Client, spec: dict, n: int) -> dict:
    use_agents(client, n)
    t0 = time.time()
    job = client.post("/jobs", spec)
    view = wait(client, job["id"])
    wall = time.time() - t0
    if view["state"] != "completed":
        raise SystemExit(f"job {job['id']} ended {view['state']}: {view.get('error')}")
    out = {"wall": wall, "join": 0.0, "plan": 0.0, "segments": 0}
    if view.get("segments"):
        kids = [client.get(f"/jobs/{c}") for c in view["segments"]["children"]]
        out["segments"] = len(kids)
        out["join"] = ts(view["ended_at"]) - max(ts(k["ended_at"]) for k in kids)
        out["plan"] = min(ts(k["started_at"]) for k in kids) - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--segment-seconds", type=float, default=10)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ffr-bench-seg-"))
    stack = Stack(tmp)
    stack.start_redis()
    stack.start_coordinator()
    for name in AGENTS:
        stack.start_agent(name, "--slots", "1", "--live-slots", "0")
    client = Client(f"http://127.0.0.1:{stack.port}", stack.key, retry_initial=0.5, retries=8)
    try:
        while len(client.get("/nodes").get("nodes", [])) < len(AGENTS):
            time.sleep(0.5)
        media.make_clip(stack.inputs / "long.mp4", args.seconds, args.size, 30)
        base = {"scenario": "720p-h264", "resolution": args.size, "input": "long.mp4", "overwrite": True}
        seg = {**base, "segmented": True, "segment_seconds": args.segment_seconds}
        results: dict[str, list[dict]] = {"1 agent": [], "2 agents": [], "4 agents": []}
        for r in range(args.rounds):
            results["1 agent"].append(run_one(client, {**base, "output": "single.mp4"}, 1))
            results["2 agents"].append(run_one(client, {**seg, "output": "seg2.mp4"}, 2))
            results["4 agents"].append(run_one(client, {**seg, "output": "seg4.mp4"}, 4))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]['wall']:.1f}s" for k, v in results.items()))
        single = statistics.median(x["wall"] for x in results["1 agent"])
        print(f"\n{args.seconds:g} s {args.size} clip, 720p-h264 veryfast, {args.rounds} rounds (medians)")
        print(f"{'fleet':<10}{'wall s':>8}{'speed-up':>10}{'segments':>10}{'plan s':>8}{'join s':>8}")
        for name, rows in results.items():
            wall = statistics.median(x["wall"] for x in rows)
            plan = statistics.median(x["plan"] for x in rows)
            join = statistics.median(x["join"] for x in rows)
            segs = rows[-1]["segments"]
            print(f"{name:<10}{wall:>8.1f}{single / wall:>9.2f}x{segs:>10}{plan:>8.2f}{join:>8.2f}")
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
