"""Dispatch latency and submit throughput, each beside a same-run baseline.

    .venv/bin/python bench/dispatch.py [--jobs 200] [--submissions 5000] [--concurrency 16]

1. Dispatch latency: POST /jobs on an idle one-slot agent -> FFmpeg started (the run
   supervisor's ``started.json`` timestamp), one job at a time, trivial scenario.
   Baseline: raw RQ enqueue -> job function start on a plain forking RQ worker, same Redis.
2. Submit throughput: POST /jobs with N concurrent clients (no agent running).
   Baseline: raw RQ ``enqueue`` one by one, same Redis.

Everything runs on this machine: a private redis-server on a unix socket, the coordinator and
the agent as subprocesses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import redis
from rq import Queue

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_job import BASELINE_KEY

from ffrtmp.auth import new_key


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sock = str(tmp / "r.sock")
        self.url = f"unix://{self.sock}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.key = new_key()
        self.port = free_port()
        self.mport = free_port()

    def spawn(
        self, argv: list[str], env: dict[str, str] | None = None, log: str = "x"
    ) -> subprocess.Popen[bytes]:
        out = open(self.tmp / f"{log}.log", "wb")  # noqa: SIM115
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.procs.append(p)
        return p

    def redis(self) -> redis.Redis:
        self.spawn(
            [
                "redis-server",
                "--port",
                "0",
                "--unixsocket",
                self.sock,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
            ],
            log="redis",
        )
        conn = redis.Redis(unix_socket_path=self.sock)
        for _ in range(200):
            try:
                conn.ping()
                return conn
            except (redis.ConnectionError, FileNotFoundError):
                time.sleep(0.02)
        raise SystemExit("redis-server did not start")

    def coordinator(self) -> str:
        self.spawn(
            [
                sys.executable,
                "-m",
                "coordinator.main",
                "--port",
                str(self.port),
                "--redis-url",
                self.url,
                "--log-level",
                "warning",
            ],
            env={"FFRTMP_API_KEY": self.key},
            log="coordinator",
        )
        base = f"http://127.0.0.1:{self.port}"
        wait_http(base + "/health")
        return base

    def agent(self) -> subprocess.Popen[bytes]:
        p = self.spawn(
            [
                sys.executable,
                "-m",
                "agent.main",
                "--redis-url",
                self.url,
                "--name",
                "bench",
                "--slots",
                "1",
                "--live-slots",
                "0",
                "--metrics-host",
                "127.0.0.1",
                "--metrics-port",
                str(self.mport),
                "--work-dir",
                str(self.tmp / "agent"),
                "--log-level",
                "warning",
            ],
            log="agent",
        )
        wait_http(f"http://127.0.0.1:{self.mport}/ready", 120)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


async def dispatch_ffrtmp(base: str, key: str, work: Path, n: int) -> list[float]:
    headers = {"Authorization": f"Bearer {key}"}
    spec = {"scenario": "480p-h264", "duration": 0.2, "resolution": "64x64", "fps": 5, "preset": "ultrafast"}
    out = []
    async with aiohttp.ClientSession(headers=headers) as s:
        for _ in range(n):
            t0 = time.time()
            async with s.post(base + "/jobs", json=spec) as r:
                job = await r.json()
            started = work / "runs" / job["id"] / "1" / "started.json"
            while not started.exists():
                await asyncio.sleep(0.001)
            while True:
                try:
                    out.append(json.loads(started.read_text())["time"] - t0)
                    break
                except (ValueError, KeyError):
                    await asyncio.sleep(0.001)
            while True:  # wait until the slot is idle again
                async with s.get(f"{base}/jobs/{job['id']}") as r:
                    if (await r.json())["state"] in ("completed", "failed"):
                        break
                await asyncio.sleep(0.01)
    return out


def dispatch_baseline(url: str, conn: redis.Redis, tmp: Path, n: int) -> list[float]:
    env = {**os.environ, "BENCH_REDIS_URL": url, "PYTHONPATH": str(Path(__file__).resolve().parent)}
    code = (
        "import redis,sys; from rq import Worker, Queue; c=redis.Redis.from_url(sys.argv[1]);"
        "Worker([Queue('bench', connection=c)], connection=c).work()"
    )
    w = subprocess.Popen(
        [sys.executable, "-c", code, url], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    q = Queue("bench", connection=conn)
    out = []
    try:
        time.sleep(1.0)
        for _ in range(n):
            t0 = time.time()
            q.enqueue("baseline_job.mark_start", t0)
            raw = conn.blpop([BASELINE_KEY], timeout=30)
            if raw is None:
                raise SystemExit("baseline worker did not run the job")
            t_enq, t_start = json.loads(raw[1])
            out.append(t_start - t_enq)
            time.sleep(0.02)  # let the worker return to BLPOP, as the ffrtmp loop waits for idle
    finally:
        w.terminate()
        w.wait(10)
    return out


async def submit_ffrtmp(base: str, key: str, n: int, concurrency: int) -> tuple[float, list[float]]:
    spec = {"scenario": "480p-h264", "duration": 1, "queue": "batch", "priority": "low"}
    lat: list[float] = []
    todo = list(range(n))
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}, connector=conn) as s:

        async def worker() -> None:
            while todo:
                todo.pop()
                t0 = time.perf_counter()
                async with s.post(base + "/jobs", json=spec) as r:
                    assert r.status == 201, await r.text()
                    await r.read()
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return n / elapsed, lat


def submit_baseline(conn: redis.Redis, n: int) -> tuple[float, list[float]]:
    q = Queue("bench-submit", connection=conn)
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        t1 = time.perf_counter()
        q.enqueue("baseline_job.mark_start", 0)
        lat.append(time.perf_counter() - t1)
    return n / (time.perf_counter() - t0), lat


def ms(v: float) -> str:
    return f"{v * 1000:.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--submissions", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ffr-bench-"))
    st = Stack(tmp)
    try:
        conn = st.redis()
        base = st.coordinator()

        base_lat = dispatch_baseline(st.url, conn, tmp, args.jobs)
        conn.flushall()
        agent = st.agent()
        ff_lat = asyncio.run(dispatch_ffrtmp(base, st.key, tmp / "agent", args.jobs))
        agent.terminate()
        agent.wait(60)
        conn.flushall()

        b_rate, b_sub = submit_baseline(conn, args.submissions)
        conn.flushall()
        f_rate, f_sub = asyncio.run(submit_ffrtmp(base, st.key, args.submissions, args.concurrency))
        conn.flushall()
    finally:
        st.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"dispatch latency over {args.jobs} jobs (submit -> FFmpeg started / enqueue -> function started)")
    for label, lat in (("ffrtmp", ff_lat), ("raw RQ", base_lat)):
        print(f"  {label:<8} p50 {ms(statistics.median(lat))}  p99 {ms(pct(lat, 99))}  max {ms(max(lat))}")
    print(
        f"  ratio    p50 x{statistics.median(ff_lat) / statistics.median(base_lat):.2f}  "
        f"p99 x{pct(ff_lat, 99) / pct(base_lat, 99):.2f}   (target: ffrtmp p99 <= 50 ms)"
    )
    print(f"submit throughput over {args.submissions} submissions")
    print(
        f"  ffrtmp   {f_rate:7.0f} jobs/s  p50 {ms(statistics.median(f_sub))}  p99 {ms(pct(f_sub, 99))}  "
        f"(HTTP API, {args.concurrency} concurrent clients)"
    )
    print(
        f"  raw RQ   {b_rate:7.0f} jobs/s  p50 {ms(statistics.median(b_sub))}  p99 {ms(pct(b_sub, 99))}  "
        f"(in-process enqueue, one by one)"
    )
    print(f"  ratio    x{f_rate / b_rate:.2f} of raw RQ   (target: >= 1000 jobs/s)")


if __name__ == "__main__":
    main()
