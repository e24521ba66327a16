"""Submission throughput, ffrtmp beside raw RQ in the same run, interleaved in blocks so that
noise hits both alike.

    .venv/bin/python bench/submit.py [--rounds 5] [--single 400] [--concurrency 16] [--batch 1000]

1. Single submissions: ``--single`` POST /jobs per round with ``--concurrency`` clients, against
   ``--single`` raw RQ ``Queue.enqueue`` calls one after another on one connection.
2. Batches: one POST /jobs/batch of ``--batch`` specs per round, against raw RQ
   ``Queue.enqueue_many`` of as many jobs in one pipeline.

Private redis-server (unix socket), the coordinator as a subprocess, no agent (the jobs stay
queued). Rate limits are off for the run: they are a policy, not a cost of the code path (the
default per-key budget, 200/s, would cap case 1; bulk clients use the batch endpoint). Prints
the rate of each side per round, the ratio, and the median ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from rq import Queue

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dispatch import Stack

SPEC = {"scenario": "480p-h264", "duration": 1, "resolution": "64x64"}


async def single_ffrtmp(base: str, key: str, n: int, concurrency: int) -> float:
    headers = {"Authorization": f"Bearer {key}"}
    todo = iter(range(n))
    async with aiohttp.ClientSession(headers=headers) as s:

        async def client() -> None:
            for _ in todo:
                async with s.post(base + "/jobs", json=SPEC) as r:
                    assert r.status == 201, await r.text()

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return n / (time.perf_counter() - t0)


def single_raw(q: Queue, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        q.enqueue("baseline_job.mark_start", SPEC)
    return n / (time.perf_counter() - t0)


async def batch_ffrtmp(base: str, key: str, n: int) -> float:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
        t0 = time.perf_counter()
        async with s.post(base + "/jobs/batch", json={"jobs": [SPEC] * n}) as r:
            assert r.status == 201, await r.text()
            await r.read()
        return n / (time.perf_counter() - t0)


def batch_raw(q: Queue, n: int) -> float:
    t0 = time.perf_counter()
    with q.connection.pipeline() as pipe:
        jobs = [Queue.prepare_data("baseline_job.mark_start", args=(SPEC,)) for _ in range(n)]
        q.enqueue_many(jobs, pipeline=pipe)
        pipe.execute()
    return n / (time.perf_counter() - t0)


def report(name: str, rows: list[tuple[float, float]]) -> None:
    print(f"\n{name}")
    print("| round | ffrtmp jobs/s | raw RQ jobs/s | ratio |")
    print("|---|---|---|---|")
    for i, (ours, raw) in enumerate(rows, 1):
        print(f"| {i} | {ours:,.0f} | {raw:,.0f} | x{ours / raw:.2f} |")
    print(f"median ratio x{statistics.median(o / r for o, r in rows):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--single", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ffr-bench-submit-") as d:
        stack = Stack(Path(d))
        try:
            conn = stack.redis()
            base = stack.coordinator_unlimited()
            q = Queue("bench", connection=conn)
            single: list[tuple[float, float]] = []
            batch: list[tuple[float, float]] = []
            for r in range(args.rounds):
                sides = ["ours", "raw"] if r % 2 == 0 else ["raw", "ours"]  # who goes first alternates
                got: dict[str, tuple[float, float]] = {}
                for side in sides:
                    if side == "ours":
                        s1 = asyncio.run(single_ffrtmp(base, stack.key, args.single, args.concurrency))
                        got[side] = (s1, asyncio.run(batch_ffrtmp(base, stack.key, args.batch)))
                    else:
                        got[side] = (single_raw(q, args.single), batch_raw(q, args.batch))
                single.append((got["ours"][0], got["raw"][0]))
                batch.append((got["ours"][1], got["raw"][1]))
                conn.flushdb()
            print(f"load average {os.getloadavg()[0]:.2f} (1 min) at the end, {os.cpu_count()} CPUs")
            report(f"single submissions ({args.single} per round, {args.concurrency} clients)", single)
            report(f"batches ({args.batch} jobs per request)", batch)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
