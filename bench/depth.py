"""Job listing and lookup at queue depth: 1k / 10k / 100k jobs, every filter.

    .venv/bin/python bench/depth.py [--depths 1000,10000,100000] [--samples 60]

Jobs are submitted through ``ffrtmp.submit.submit_many`` (what POST /jobs/batch runs), a
tenth of them with a label and a tenth in the batch tier; none runs (no agent), so every job
is queued and a ``state=running`` filter matches nothing, the case that used to page through
every job. Per depth, interleaved sample by sample over HTTP on one keep-alive connection:
``GET /jobs?limit=50`` unfiltered and with each filter, and ``GET /jobs/{id}`` against a raw
``HGETALL`` of the job's hash (the floor; also ``get_view`` in process). Private redis-server
on a unix socket, the coordinator as a subprocess, rate limits off. Prints p50 and p99.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dispatch import Stack

from ffrtmp.jobs import get_view
from ffrtmp.model import validate_spec
from ffrtmp.rqjob import SafeJob
from ffrtmp.submit import MAX_BATCH, SubmitDefaults, submit_many

QUERIES = {
    "all": "/jobs?limit=50",
    "state=queued": "/jobs?state=queued&limit=50",
    "state=running (none)": "/jobs?state=running&limit=50",
    "queue=batch": "/jobs?queue=batch&limit=50",
    "label": "/jobs?label=show%3Dbench&limit=50",
    "node (none)": "/jobs?node=sim-00001&limit=50",
    "state+queue": "/jobs?state=queued&queue=batch&limit=50",
}


def fill(conn, upto: int, have: int) -> list[str]:
    plain = validate_spec({"scenario": "480p-h264", "duration": 1, "resolution": "64x64"})
    batch = validate_spec({"scenario": "480p-h264", "duration": 1, "queue": "batch"})
    labelled = validate_spec({"scenario": "480p-h264", "duration": 1, "labels": {"show": "bench"}})
    ids = []
    d = SubmitDefaults()
    while have < upto:
        n = min(MAX_BATCH, upto - have)
        specs = [
            batch if (have + i) % 10 == 3 else labelled if (have + i) % 10 == 7 else plain for i in range(n)
        ]
        ids += [v["id"] for v in submit_many(conn, specs, d)]
        have += n
    return ids


def get(web: http.client.HTTPConnection, path: str, key: str) -> float:
    t0 = time.perf_counter()
    web.request("GET", path, headers={"Authorization": f"Bearer {key}"})
    resp = web.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise SystemExit(f"{path}: HTTP {resp.status} {body[:200]!r}")
    return (time.perf_counter() - t0) * 1000


def pct(v: list[float], p: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, int(p * len(s)))]


def measure(stack: Stack, conn, ids: list[str], samples: int) -> dict:
    web = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=60)
    res: dict[str, list[float]] = {k: [] for k in [*QUERIES, "GET /jobs/{id}", "raw HGETALL", "get_view"]}
    for s in range(samples):
        jid = ids[(s * 7919) % len(ids)]
        for name, path in QUERIES.items():
            res[name].append(get(web, path, stack.key))
        res["GET /jobs/{id}"].append(get(web, f"/jobs/{jid}", stack.key))
        t0 = time.perf_counter()
        conn.hgetall(SafeJob.key_for(jid))
        res["raw HGETALL"].append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        get_view(conn, jid)
        res["get_view"].append((time.perf_counter() - t0) * 1000)
    web.close()
    return {k: (round(statistics.median(v), 3), round(pct(v, 0.99), 3)) for k, v in res.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", default="1000,10000,100000")
    ap.add_argument("--samples", type=int, default=60)
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="ffr-depth-") as tmp:
        stack = Stack(Path(tmp))
        try:
            conn = stack.redis()
            stack.coordinator_unlimited()
            ids: list[str] = []
            for depth in depths:
                ids += fill(conn, depth, len(ids))
                rows[depth] = measure(stack, conn, ids, args.samples)
        finally:
            stack.stop()
    names = list(next(iter(rows.values())))
    print(f"{'p50 / p99 ms':<22}" + "".join(f"{d:>20,}" for d in depths))
    for name in names:
        print(f"{name:<22}" + "".join(f"{rows[d][name][0]:>10.2f} {rows[d][name][1]:>9.2f}" for d in depths))
    for d in depths:
        floor = rows[d]["raw HGETALL"][0]
        print(
            f"{d:>7,} jobs: GET /jobs/{{id}} x{rows[d]['GET /jobs/{id}'][0] / floor:.1f}, "
            f"get_view x{rows[d]['get_view'][0] / floor:.1f} of a raw HGETALL"
        )
    print(json.dumps({str(d): r for d, r in rows.items()}))


if __name__ == "__main__":
    main()
