"""The raw-RQ baseline's job functions: record when one began (dispatch latency), or run an
FFmpeg argv and record when it began and ended (the per-job fixed cost). Kept tiny and
pre-imported by the baseline worker, as ffrtmp's slots pre-import agent.task, so both horses
start warm."""

import json
import os
import subprocess
import time

import redis

BASELINE_KEY = "bench:baseline:start"
_conn = None


def mark_start(t_enqueue: float) -> None:
    global _conn
    if _conn is None:
        _conn = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    _conn.rpush(BASELINE_KEY, json.dumps([t_enqueue, time.time()]))


RUNS_KEY = "bench:baseline:runs"


def run_ffmpeg(argv: list[str]) -> None:
    """Run FFmpeg as a slot would (a child process, output discarded), recording when it ran."""
    global _conn
    if _conn is None:
        _conn = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    t0 = time.time()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, capture_output=True)
    _conn.rpush(RUNS_KEY, json.dumps([t0, time.time()]))
