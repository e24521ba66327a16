"""Redis stopped for a minute mid-run (AOF on, so it comes back with its data): a run that
finished during the outage is recorded when Redis returns (not re-encoded), a run cut by the
outage is requeued with reason redis_outage (never node_lost), slots come back at once, and
every job ends soon after Redis is back."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from ffrtmp.cli.client import Client
from tests.conftest import require
from tests.integration.test_chaos import TERMINAL, Stack

pytestmark = pytest.mark.integration
OUTAGE_S = float(os.environ.get("FFRTMP_TEST_REDIS_OUTAGE", "60"))


def _wait(client: Client, job_id: str, pred, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = client.get(f"/jobs/{job_id}")
        if pred(v):
            return v
        time.sleep(0.1)
    raise AssertionError(client.get(f"/jobs/{job_id}"))


@pytest.mark.timeout(600)
def test_a_redis_outage_loses_no_finished_work_and_blames_no_node(tmp_path):
    require("redis-server")
    stack = Stack(tmp_path)
    stack.start_redis()
    stack.start_coordinator()
    for name in ("a1", "a2"):
        stack.start_agent(name)
    client = Client(f"http://127.0.0.1:{stack.port}", stack.key, retry_initial=0.5, retries=5)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(client.get("/nodes")["nodes"]) < 2:
            time.sleep(0.5)
        live = {"scenario": "live-4k", "resolution": "64x64"}
        short = client.post("/jobs", {**live, "duration": 2.5, "output": "short.ts"})["id"]
        cut = client.post("/jobs", {**live, "duration": 8, "output": "cut.ts"})["id"]
        for j in (short, cut):
            _wait(client, j, lambda v: v["state"] == "running" and (v["progress"] or {}).get("frame"), 90)
        assert stack.redis is not None
        stack.redis.terminate()  # SIGTERM: Redis writes its AOF and exits
        stack.redis.wait(30)
        time.sleep(OUTAGE_S)
        stack.start_redis()
        back = time.monotonic()
        views = {j: _wait(client, j, lambda v: v["state"] in TERMINAL, 120) for j in (short, cut)}
        settled_after = time.monotonic() - back
        v = views[short]
        assert v["state"] == "completed" and v["attempts"] == 1, v  # finished work was kept
        v = views[cut]
        assert v["state"] == "completed", v
        reasons = [h["reason"] for h in v["history"]]
        assert "node_lost" not in reasons and "redis_outage" in reasons, reasons
        assert (stack.outputs / "short.ts").is_file() and (stack.outputs / "cut.ts").is_file()
        # new work runs at once: the slots did not sit in a crash-loop back-off
        t0 = time.monotonic()
        fresh = client.post("/jobs", {**live, "duration": 1, "output": "fresh.ts"})["id"]
        assert _wait(client, fresh, lambda v: v["state"] in TERMINAL, 60)["state"] == "completed"
        fresh_s = time.monotonic() - t0
        conn = redis.Redis(unix_socket_path=stack.sock)
        assert not conn.hget("ffrtmp:stats:requeues", "node_lost")
        print(
            f"redis down {OUTAGE_S:.0f}s: jobs settled {settled_after:.1f}s after it came back; "
            f"a new 1 s job took {fresh_s:.1f}s"
        )
    finally:
        stack.stop()


def _scrape(stack: Stack) -> tuple[float, str]:
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{stack.port}/metrics", headers={"Authorization": f"Bearer {stack.key}"}
    )
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=10) as r:
        return time.monotonic() - t0, r.read().decode()


def test_metrics_answer_at_once_that_a_frozen_redis_is_down(tmp_path):
    """A SIGSTOPped Redis holds every call for the socket timeout (5 s), longer than a scrape
    timeout: the scrape must still answer, within a second, with ffrtmp_redis_up 0."""
    require("redis-server")
    stack = Stack(tmp_path)
    stack.start_redis()
    stack.start_coordinator()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _, text = _scrape(stack)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert "ffrtmp_redis_up 1.0" in text and "rq_jobs{" in text
        assert stack.redis is not None
        stack.redis.send_signal(signal.SIGSTOP)
        try:
            took, text = _scrape(stack)
        finally:
            stack.redis.send_signal(signal.SIGCONT)
        assert "ffrtmp_redis_up 0.0" in text and "ffrtmp_coordinator_build_info" in text and took < 2.5, took
        deadline = time.monotonic() + 30
        while "ffrtmp_redis_up 1.0" not in _scrape(stack)[1]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        stack.stop()
