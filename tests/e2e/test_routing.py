"""Priority order and capability routing on a real agent."""

import itertools
import json
import time

import pytest

from tests.conftest import LocalFleet
from tests.e2e.test_cli import submit, wait_state, wait_terminal

pytestmark = pytest.mark.e2e
SMALL = ["--scenario", "480p-h264", "--duration", "1", "--resolution", "320x240"]


def test_live_high_jumps_ahead_of_earlier_batch_low_and_fifo_holds(tmp_path):
    f = LocalFleet(tmp_path, slots=1)
    try:
        # the blocker holds the only slot until every other job is queued (however slow the
        # submissions are on a busy machine); then it is canceled and the slot picks by priority
        blocker = submit(
            f, "--scenario", "live-4k", "--duration", "600", "--resolution", "320x240", "--queue", "default"
        )
        wait_state(f, blocker, "running")
        batch = [submit(f, *SMALL, "--queue", "batch", "--priority", "low") for _ in range(3)]
        live = submit(f, *SMALL, "--queue", "live", "--priority", "high")
        assert all(f.cli_json("jobs", "status", j)["state"] == "queued" for j in [live, *batch])
        f.cli("jobs", "cancel", blocker, check=True)
        order = [blocker, live, *batch]
        jobs = {j: wait_terminal(f, j) for j in order}
        assert jobs[blocker]["state"] == "canceled"
        assert all(jobs[j]["state"] == "completed" for j in order[1:]), jobs
        started = [jobs[j]["started_at"] for j in order]
        assert started == sorted(started), list(zip(order, started, strict=True))
        # one slot: each job started only after the previous one ended
        for a, b in itertools.pairwise(order):
            assert jobs[a]["ended_at"] <= jobs[b]["started_at"]
    finally:
        f.stop()


def test_nvenc_job_waits_for_a_capable_agent_and_blocks_no_cpu_work(fleet):
    node = fleet.cli_json("nodes", "list")["nodes"][0]
    if "nvenc" in node["capabilities"]:
        pytest.skip("this host proved NVENC; the routing test needs an agent without it")
    queues = [q for qs in node["slot_queues"].values() for q in qs]
    assert queues and not any(q.endswith(".nvenc") for q in queues)
    gpu = submit(fleet, *SMALL, "--hwaccel", "nvenc")
    cpu = submit(fleet, *SMALL)
    assert wait_terminal(fleet, cpu)["state"] == "completed"
    time.sleep(1)
    job = fleet.cli_json("jobs", "status", gpu)
    assert job["state"] == "queued" and job["rq_queue"] == "default.medium.nvenc" and job["attempts"] == 0
    q = {x["name"]: x for x in fleet.cli_json("queues")["queues"]}
    assert q["default.medium.nvenc"]["queued"] == 1
    assert json.loads(json.dumps(fleet.cli_json("jobs", "cancel", gpu)))["outcome"] == "canceled"
