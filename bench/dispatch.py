"""Dispatch latency and the per-job fixed cost, each beside a raw-RQ baseline in the same
run, interleaved in blocks (ffrtmp, baseline, ffrtmp, ...) so that noise hits both alike.

    .venv/bin/python bench/dispatch.py [--rounds 5] [--jobs 20] [--burst 20]

1. Dispatch latency: POST /jobs on an idle one-slot agent -> FFmpeg started (the run
   supervisor's ``started.json`` timestamp), one job at a time, a tiny encode.
   Baseline: raw RQ enqueue -> job function start on a plain forking RQ worker, same Redis.
2. Fixed cost: ``--burst`` tiny jobs queued at once on the one slot; the gap from one FFmpeg's
   exit to the next one's start (exit.json -> started.json), and jobs/s. Baseline: the same
   FFmpeg argv (taken from ffrtmp's own run) in a raw RQ job on the plain worker.

Everything runs on this machine: a private redis-server on a unix socket, the coordinator,
the agent and the baseline worker as subprocesses. Submit throughput is bench/submit.py.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import redis
from rq import Queue

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_job import BASELINE_KEY, RUNS_KEY

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

    def coordinator_unlimited(self) -> str:
        """The coordinator with rate limits off: they are a policy, not a cost of the code path."""
        return self.coordinator("--rate-limit-key", "off", "--rate-limit-address", "off")

    def coordinator(self, *extra: str) -> str:
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
                *extra,
            ],
            env={"FFRTMP_API_KEY": self.key},
            log="coordinator",
        )
        base = f"http://127.0.0.1:{self.port}"
        wait_http(base + "/health")
        return base

    def agent(self, *extra: str) -> subprocess.Popen[bytes]:
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
                *extra,
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


TINY = {"scenario": "480p-h264", "duration": 0.2, "resolution": "64x64", "fps": 5, "preset": "ultrafast"}


def run_dirs(work: Path, job_id: str) -> list[Path]:
    return sorted((work / "runs" / job_id).glob("*"))


def read_time(path: Path) -> float | None:
    try:
        return float(json.loads(path.read_text())["time"])
    except (OSError, ValueError, KeyError):
        return None


async def wait_state(s: aiohttp.ClientSession, base: str, job_id: str) -> dict:
    while True:
        async with s.get(f"{base}/jobs/{job_id}") as r:
            view = await r.json()
        if view["state"] in ("completed", "failed", "rejected"):
            return view
        await asyncio.sleep(0.01)


async def dispatch_ffrtmp(s: aiohttp.ClientSession, base: str, work: Path, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.time()
        async with s.post(base + "/jobs", json=TINY) as r:
            job = await r.json()
        while True:
            dirs = run_dirs(work, job["id"])
            started = read_time(dirs[0] / "started.json") if dirs else None
            if started is not None:
                out.append(started - t0)
                break
            await asyncio.sleep(0.001)
        await wait_state(s, base, job["id"])  # the slot is idle again
        await asyncio.sleep(0.05)
    return out


async def burst_ffrtmp(s: aiohttp.ClientSession, base: str, work: Path, n: int) -> tuple[list[float], float]:
    async with s.post(base + "/jobs/batch", json={"jobs": [TINY] * n}) as r:
        ids = [j["id"] for j in (await r.json())["jobs"]]
    for jid in ids:
        await wait_state(s, base, jid)
    runs, views = [], []
    for jid in ids:
        d = run_dirs(work, jid)[0]
        runs.append((read_time(d / "started.json") or 0.0, read_time(d / "exit.json") or 0.0))
        async with s.get(f"{base}/jobs/{jid}") as r:
            views.append((d, await r.json()))
    STAGES.extend(stage_times(views))
    return gaps(runs, "ffrtmp")


STAGES: list[dict[str, float]] = []


def iso(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def stage_times(views: list[tuple[Path, dict]]) -> list[dict[str, float]]:
    """Where the time between one FFmpeg's exit and the next one's start goes, from the run
    directories' own timestamps and the job records (the claim is ``started_at``)."""
    runs = sorted(views, key=lambda v: iso(v[1]["started_at"]))
    out = []
    for (d0, v0), (d1, v1) in itertools.pairwise(runs):
        exited, claim = read_time(d0 / "exit.json") or 0, iso(v1["started_at"])
        asked = (d1 / "cmd.json").stat().st_mtime
        sup, ff = read_time(d1 / "supervisor.json") or 0, read_time(d1 / "started.json") or 0
        out.append(
            {
                "exit -> next claimed": claim - exited,
                "claimed -> supervisor asked (horse, plan, started)": asked - claim,
                "asked -> supervisor running": sup - asked,
                "supervisor -> FFmpeg started": ff - sup,
                "(exit -> ended: verify, publish, finish)": iso(v0["ended_at"]) - exited,
            }
        )
    return out


def gaps(runs: list[tuple[float, float]], who: str) -> tuple[list[float], float]:
    """Exit -> next start gaps, and jobs per second over the burst."""
    runs.sort()
    between = [runs[i + 1][0] - runs[i][1] for i in range(len(runs) - 1)]
    RUN_S.setdefault(who, []).extend(end - start for start, end in runs)
    return between, len(runs) / (runs[-1][1] - runs[0][0])


RUN_S: dict[str, list[float]] = {}  # FFmpeg start -> exit in the bursts, by who ran them


def dispatch_baseline(conn: redis.Redis, n: int) -> list[float]:
    q = Queue("bench", connection=conn)
    out = []
    for _ in range(n):
        q.enqueue("baseline_job.mark_start", time.time())
        raw = conn.blpop([BASELINE_KEY], timeout=30)
        if raw is None:
            raise SystemExit("baseline worker did not run the job")
        t_enq, t_start = json.loads(raw[1])
        out.append(t_start - t_enq)
        time.sleep(0.05)  # let the worker return to BLPOP, as the ffrtmp loop waits for idle
    return out


def burst_baseline(conn: redis.Redis, argv: list[str], n: int) -> tuple[list[float], float]:
    conn.delete(RUNS_KEY)
    q = Queue("bench", connection=conn)
    with conn.pipeline() as pipe:
        for _ in range(n):
            q.enqueue("baseline_job.run_ffmpeg", argv, pipeline=pipe)
        pipe.execute()
    deadline = time.monotonic() + 300
    while conn.llen(RUNS_KEY) < n:
        if time.monotonic() > deadline:
            raise SystemExit("baseline burst did not finish")
        time.sleep(0.05)
    return gaps([tuple(json.loads(r)) for r in conn.lrange(RUNS_KEY, 0, -1)], "raw")


def baseline_worker(st: Stack) -> subprocess.Popen[bytes]:
    env = {"BENCH_REDIS_URL": st.url, "PYTHONPATH": str(Path(__file__).resolve().parent)}
    code = (
        "import redis,sys; import baseline_job; from rq import Worker, Queue;"
        "c=redis.Redis.from_url(sys.argv[1]); Worker([Queue('bench', connection=c)], connection=c).work()"
    )
    return st.spawn([sys.executable, "-c", code, st.url], env=env, log="baseline")


def tiny_argv(work: Path, job_id: str, tmp: Path) -> list[str]:
    """ffrtmp's own FFmpeg argv for the tiny job, writing to a scratch file instead."""
    argv = json.loads((run_dirs(work, job_id)[0] / "cmd.json").read_text())["argv"]
    return [*argv[:-1], f"file:{tmp / 'baseline.mp4'}"]


def ms(v: float) -> str:
    return f"{v * 1000:.1f} ms"


def summary(name: str, ff: list[float], raw: list[float]) -> None:
    print(f"{name}")
    for label, lat in (("ffrtmp", ff), ("raw RQ", raw)):
        print(f"  {label:<8} p50 {ms(statistics.median(lat))}  p99 {ms(pct(lat, 99))}  max {ms(max(lat))}")
    p50, p99 = statistics.median(ff) / statistics.median(raw), pct(ff, 99) / pct(raw, 99)
    print(f"  ratio    p50 x{p50:.2f}  p99 x{p99:.2f}")


async def rounds(st: Stack, base: str, conn: redis.Redis, args: argparse.Namespace) -> dict[str, list]:
    work = st.tmp / "agent"
    res: dict[str, list] = {k: [] for k in ("ff_lat", "raw_lat", "ff_gap", "raw_gap", "ff_rate", "raw_rate")}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {st.key}"}) as s:
        async with s.post(base + "/jobs", json=TINY) as r:
            first = (await r.json())["id"]
        await wait_state(s, base, first)
        argv = tiny_argv(work, first, st.tmp)
        for _ in range(args.rounds):
            res["ff_lat"] += await dispatch_ffrtmp(s, base, work, args.jobs)
            res["raw_lat"] += dispatch_baseline(conn, args.jobs)
            gap, rate = await burst_ffrtmp(s, base, work, args.burst)
            res["ff_gap"] += gap
            res["ff_rate"].append(rate)
            gap, rate = burst_baseline(conn, argv, args.burst)
            res["raw_gap"] += gap
            res["raw_rate"].append(rate)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=20, help="dispatch-latency jobs per block")
    ap.add_argument("--burst", type=int, default=20, help="jobs per fixed-cost block")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ffr-bench-"))
    st = Stack(tmp)
    try:
        conn = st.redis()
        base = st.coordinator_unlimited()
        st.agent()
        baseline_worker(st)
        res = asyncio.run(rounds(st, base, conn, args))
    finally:
        st.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()[0]
    summary(
        f"dispatch latency, submit -> FFmpeg started ({len(res['ff_lat'])} jobs each)",
        res["ff_lat"],
        res["raw_lat"],
    )
    summary("fixed cost, FFmpeg exit -> next FFmpeg started on the same slot", res["ff_gap"], res["raw_gap"])
    ff_rate, raw_rate = statistics.median(res["ff_rate"]), statistics.median(res["raw_rate"])
    print(f"tiny-job throughput: ffrtmp {ff_rate:.2f}/s, raw RQ {raw_rate:.2f}/s, x{ff_rate / raw_rate:.2f}")
    if len(RUN_S) == 2:
        ff_run, raw_run = statistics.median(RUN_S["ffrtmp"]), statistics.median(RUN_S["raw"])
        print(f"FFmpeg start -> exit in the bursts: ffrtmp p50 {ms(ff_run)}, raw RQ {ms(raw_run)}")
    print("ffrtmp's exit -> next start, by stage (p50 ms, from the run directories and job records)")
    for stage in STAGES[0] if STAGES else {}:
        print(f"  {stage:<52} {statistics.median(x[stage] for x in STAGES) * 1000:7.1f}")
    print(f"load average (1 min) at the end: {load:.2f}")


if __name__ == "__main__":
    main()
