"""Per-job CPU and memory limits, enforced by the kernel in each run's own cgroup, seen from
outside: the process table, the cgroup files and the job's outcome."""

import contextlib
import glob
import json
import os
import time

import psutil
import pytest

from agent import cgroups
from tests.e2e.test_cli import submit, wait_state, wait_terminal

pytestmark = pytest.mark.e2e

LAYOUT = cgroups.layout()  # this test process runs as the fleet's agent does (same user, same host)
needs_cgroups = pytest.mark.skipif(LAYOUT is None, reason="no cgroup subtree to enforce limits here")


def _started(fleet, jid, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in glob.glob(str(fleet.state / "agent" / "runs" / jid / "*" / "started.json")):
            with open(path) as fh:
                return json.load(fh), os.path.dirname(path)
        time.sleep(0.1)
    raise AssertionError(f"job {jid} never started FFmpeg")


def _run_cgroup_of(pid: int) -> list[str]:
    """The run cgroups a process is in, as /proc names them (not as we recorded them)."""
    with open(f"/proc/{pid}/cgroup") as fh:
        return [line.strip() for line in fh if f"/{cgroups.RUN_PREFIX}" in line]


def _quota(dirs: list[str]) -> str:
    for d in dirs:
        for name in ("cpu.max", "cpu.cfs_quota_us"):
            if os.path.exists(os.path.join(d, name)):
                with open(os.path.join(d, name)) as fh:
                    return fh.read().strip()
    raise AssertionError(f"no CPU quota file in {dirs}")


def _throttled(dirs: list[str]) -> int:
    for d in dirs:
        with contextlib.suppress(OSError), open(os.path.join(d, "cpu.stat")) as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key == "nr_throttled":
                    return int(value)
    return 0


@pytest.mark.skipif(LAYOUT is not None, reason="this host can enforce limits (tested below)")
def test_limits_where_no_cgroup_can_enforce_them_are_rejected_not_ignored(fleet):
    jid = submit(fleet, "--scenario", "480p-h264", "--duration", "1", "--max-memory-mb", "512")
    job = wait_terminal(fleet, jid)
    assert job["state"] == "rejected" and job["error"]["reason"] == "limits_unenforceable", job
    assert job["attempts"] == 1 and not (fleet.state / "agent" / "runs" / jid).exists()


@needs_cgroups
def test_a_job_over_its_memory_limit_is_oom_killed_in_its_own_cgroup_and_says_so(fleet):
    jid = submit(fleet, "--scenario", "4k-h265", "--duration", "20", "--max-memory-mb", "64")
    job = wait_terminal(fleet, jid, timeout=300)
    assert job["state"] == "failed" and job["error"]["reason"] == "memory_limit_exceeded", job
    assert job["attempts"] == 1, job  # the job's own limit: not retried
    st, run = _started(fleet, jid)
    with open(os.path.join(run, "exit.json")) as fh:
        ended = json.load(fh)
    assert ended["signal"] == 9 and ended["oom_killed"] is True, ended
    with open(os.path.join(run, "cmd.json")) as fh:
        dirs = json.load(fh)["cgroup_dirs"]
    assert dirs and not any(os.path.exists(d) for d in dirs), dirs  # removed after the run
    assert not psutil.pid_exists(st["ffmpeg_pid"]) or psutil.Process(st["ffmpeg_pid"]).status() == "zombie"


@needs_cgroups
def test_a_job_limited_to_half_a_core_gets_the_quota_and_uses_about_half_a_core(fleet):
    jid = submit(fleet, "--scenario", "1080p-h264", "--duration", "120", "--max-cpu-percent", "50")
    try:
        wait_state(fleet, jid, "running", timeout=120)
        st, run = _started(fleet, jid)
        with open(os.path.join(run, "cmd.json")) as fh:
            dirs = json.load(fh)["cgroup_dirs"]
        assert _quota(dirs) in ("50000 100000", "50000"), _quota(dirs)
        ffmpeg = psutil.Process(st["ffmpeg_pid"])
        assert _run_cgroup_of(ffmpeg.pid), "FFmpeg is not in its run's cgroup"
        time.sleep(1.0)  # past its start-up
        t0, c0 = time.monotonic(), sum(ffmpeg.cpu_times()[:2])
        time.sleep(4.0)
        used = (sum(ffmpeg.cpu_times()[:2]) - c0) / (time.monotonic() - t0)
        # x264 at 1080p takes every core it is given (two here); the quota holds it near 0.5
        assert used <= 0.65, f"FFmpeg used {used:.2f} cores under a 50 % quota"
        assert _throttled(dirs) > 0, "the kernel never throttled the run"
    finally:
        fleet.cli("jobs", "cancel", jid)
    job = wait_terminal(fleet, jid)
    assert job["state"] == "canceled", job
