"""The raw-RQ baseline's job function: record when it began. Kept tiny and pre-imported by
the baseline worker, as ffrtmp's slots pre-import agent.task, so both horses start warm."""

import json
import os
import time

import redis

BASELINE_KEY = "bench:baseline:start"
_conn = None


def mark_start(t_enqueue: float) -> None:
    global _conn
    if _conn is None:
        _conn = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    _conn.rpush(BASELINE_KEY, json.dumps([t_enqueue, time.time()]))
