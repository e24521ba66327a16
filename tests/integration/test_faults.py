"""Faults injected from outside, proven from the process table and the outputs: a frozen agent
that comes back, a SIGKILLed run supervisor, an agent killed while it starts its slots, FFmpeg
killed by a signal, a truncated input, a full output disk, and a Redis outage."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import psutil
import pytest

from ffrtmp.durations import parse_duration
from ffrtmp.jobs import get_view
from ffrtmp.model import validate_spec
from ffrtmp.submit import SubmitDefaults, submit
from tests.conftest import ffprobe, make_clip
from tests.integration.test_recovery import HB, TERMINAL, Cluster, ffmpeg_pids, wait_view

pytestmark = pytest.mark.integration
HB_S = parse_duration(HB)


@pytest.fixture()
def cluster(conn, redis_server, tmp_path):
    c = Cluster(redis_server, tmp_path)
    yield c
    c.stop()


def running_ffmpeg(job_id: str) -> list[int]:
    """FFmpeg processes of this job that are running now (a stopped process does nothing)."""
    out = []
    for pid in ffmpeg_pids(job_id):
        try:
            if psutil.Process(pid).status() not in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE):
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def steps(v: dict) -> list[tuple]:
    return [(h["from"], h["to"], h["reason"]) for h in v["history"]]


def live_job(conn, output: str, duration: float, **over) -> str:
    spec = validate_spec(
        {"scenario": "live-4k", "duration": duration, "resolution": "64x64", "output": output, **over}
    )
    return submit(conn, spec, SubmitDefaults(max_attempts=3))["id"]


def running_with_frames(v: dict) -> bool:
    return v["state"] == "running" and (v["progress"] or {}).get("frame", 0) > 0


def test_a_frozen_agent_that_comes_back_never_runs_its_job_twice(cluster, conn):
    """SIGSTOP the whole process tree past the heartbeat timeout (a paused VM), let its jobs
    move to another agent, SIGCONT: the woken runs are killed at once and write nothing."""
    cluster.start_agent("z1", 2)
    duration = max(10.0, 6 * HB_S)
    jobs = [live_job(conn, f"frozen{i}.ts", duration) for i in range(2)]
    for j in jobs:
        wait_view(conn, j, running_with_frames)
    cluster.start_agent("z2", 2)
    proc, _ = cluster.agents["z1"]
    frozen = tree(proc.pid)
    for p in frozen:
        with contextlib.suppress(psutil.NoSuchProcess):  # one that was just exiting
            p.suspend()
    old = {j: set(ffmpeg_pids(j)) for j in jobs}
    assert all(old.values())
    overlap, resumed_at, gone_after = [], None, {}
    deadline = time.monotonic() + 120 + 30 * HB_S
    while time.monotonic() < deadline:
        views = {j: get_view(conn, j) for j in jobs}
        for j in jobs:
            pids = running_ffmpeg(j)
            if len(pids) > 1:
                overlap.append((j, pids))
        if resumed_at is None and all(running_with_frames(v) and v["node"] == "z2" for v in views.values()):
            for p in frozen:
                with contextlib.suppress(psutil.NoSuchProcess):  # reaped since (a zombie then)
                    p.resume()
            resumed_at = time.monotonic()
        if resumed_at is not None:
            for j in jobs:
                if j not in gone_after and not (old[j] & set(ffmpeg_pids(j))):
                    gone_after[j] = time.monotonic() - resumed_at
        if len(gone_after) == len(jobs) and all(v["state"] in TERMINAL for v in views.values()):
            break
        time.sleep(0.02)
    assert resumed_at is not None, [get_view(conn, j) for j in jobs]
    assert not overlap, overlap
    assert len(gone_after) == len(jobs) and max(gone_after.values()) < 5, gone_after
    time.sleep(max(3.0, 3 * HB_S))  # the woken agent's workers and horses have had their say
    for j in jobs:
        v = get_view(conn, j)
        assert v["state"] == "completed" and v["node"] == "z2" and v["attempts"] == 2, v
        assert abs(v["result"]["duration_s"] - duration) < 1.5, v["result"]
        to, why = [s[1] for s in steps(v)], [s[2] for s in steps(v)]
        assert to.count("completed") == 1 and why.count("started") == 2, steps(v)
        assert conn.llen(f"rq:queue:{v['rq_queue']}") == 0 and not conn.exists(f"ffrtmp:job:{j}:lease")
    assert not list(cluster.outputs.glob(".frozen*"))
    print(f"frozen runs gone {max(gone_after.values()):.3f}s after SIGCONT")


def test_a_sigkilled_run_supervisor_takes_its_ffmpeg_along_before_the_retry(cluster, conn):
    cluster.start_agent("k1")
    job_id = live_job(conn, "sup.ts", 6)
    wait_view(conn, job_id, running_with_frames)
    (old,) = ffmpeg_pids(job_id)
    supervisor = psutil.Process(old).parent()
    assert supervisor is not None and "ffmpeg" not in supervisor.name()
    seen: dict[int, list[float]] = {old: [time.monotonic()] * 2}
    supervisor.kill()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        now = time.monotonic()
        for pid in ffmpeg_pids(job_id):
            seen.setdefault(pid, [now, now])[1] = now
        if get_view(conn, job_id)["state"] in TERMINAL:
            break
        time.sleep(0.02)
    v = get_view(conn, job_id)
    assert v["state"] == "completed" and v["attempts"] == 2, v
    assert ("running", "retrying", "runner_died") in steps(v)
    later = [pid for pid in seen if pid != old]
    assert later and all(seen[old][1] < seen[p][0] for p in later), seen  # gone before the retry


def test_an_agent_killed_with_its_run_on_the_last_attempt_leaves_no_partial_output(cluster, conn):
    """The agent (slots, horses) and the run's supervisor are SIGKILLed together on a job's last
    attempt: nobody is left to discard the half-written output and no later attempt will. The
    restarted agent's sweep removes it once the job has failed; the published name never appears."""
    cluster.start_agent("p1")
    job_id = live_job(conn, "lastpart.ts", 60, max_attempts=1)
    wait_view(conn, job_id, running_with_frames)
    (pid,) = ffmpeg_pids(job_id)
    supervisor = psutil.Process(pid).parent()
    assert supervisor is not None
    parts = list(cluster.outputs.glob(".lastpart*.part*"))
    assert parts, list(cluster.outputs.iterdir())
    proc, _ = cluster.agents.pop("p1")
    for p in [*tree(proc.pid), supervisor]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait(10)
    v = wait_view(conn, job_id, lambda v: v["state"] in TERMINAL, timeout=60 + 30 * HB_S)
    assert v["state"] == "failed" and v["attempts"] == 1, v
    assert parts[0].exists()  # nothing of ours is alive on that node to remove it yet
    cluster.start_agent("p1")
    deadline = time.monotonic() + 60 + 10 * HB_S
    while parts[0].exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not list(cluster.outputs.glob(".lastpart*")) and not (cluster.outputs / "lastpart.ts").exists()


def _slot_processes(node: str) -> list[psutil.Process]:
    """Slot workers of ``node``, found by their environment (not by their command line)."""
    out = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("FFRTMP_SLOT_NAME", "").startswith(f"{node}.s"):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def test_an_agent_killed_while_it_starts_its_slots_leaves_no_slot_behind(cluster, conn):
    for i in range(6):
        proc = cluster.start_agent("q1", 2, wait=False)
        started = time.monotonic()
        while time.monotonic() - started < 120 and proc.poll() is None:
            if i % 2 == 0 and psutil.Process(proc.pid).children():  # the very moment a slot exists
                break
            if i % 2 == 1 and time.monotonic() - started > 0.3 * i:  # within its first second or so
                break
            time.sleep(0.001)
        proc.kill()
        proc.wait(10)
        cluster.agents.pop("q1")
    deadline = time.monotonic() + 10
    while _slot_processes("q1") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _slot_processes("q1")
    job_id = submit(conn, validate_spec({"scenario": "480p-h264", "duration": 1}), SubmitDefaults())["id"]
    time.sleep(2)
    assert get_view(conn, job_id)["state"] == "queued"  # nobody took it: no slot survived


def test_ffmpeg_killed_from_outside_is_a_platform_failure_and_retried(cluster, conn):
    cluster.start_agent("o1")
    job_id = live_job(conn, "oom.ts", 5)
    wait_view(conn, job_id, running_with_frames)
    (pid,) = ffmpeg_pids(job_id)
    os.kill(pid, signal.SIGKILL)  # what the OOM killer does
    v = wait_view(conn, job_id, lambda v: v["state"] in TERMINAL, timeout=90)
    assert v["state"] == "completed" and v["attempts"] == 2, v
    killed = [h for h in v["history"] if h["reason"] == "ffmpeg_killed"]
    assert killed and killed[0]["to"] == "retrying"
    logs = conn.hget(f"ffrtmp:job:{job_id}:logs", "1")
    assert logs is not None


def test_a_truncated_input_is_not_reported_completed(cluster, conn):
    cluster.start_agent("t1")
    clip = make_clip(cluster.inputs / "whole.mp4", seconds=30, size="160x120")
    data = clip.read_bytes()
    (cluster.inputs / "cut.mp4").write_bytes(data[: len(data) * 3 // 10])  # moov kept (faststart)
    spec = validate_spec({"scenario": "480p-h264", "input": "cut.mp4", "resolution": "160x120"})
    job_id = submit(conn, spec, SubmitDefaults())["id"]
    v = wait_view(conn, job_id, lambda v: v["state"] in TERMINAL, timeout=120)
    assert v["state"] == "failed" and v["error"]["reason"] in ("output_incomplete", "ffmpeg_error"), v
    if v["error"]["reason"] == "output_incomplete":
        assert "expected 30" in v["error"]["message"], v["error"]
    assert v["attempts"] == 1 and not list(cluster.outputs.iterdir())


def _ready(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_full_output_disk_stops_the_node_and_the_job_runs_elsewhere(cluster, conn, tmp_path):
    full = tmp_path / "small"
    full.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(full)], capture_output=True)
    if res.returncode != 0:
        pytest.fail(f"this test mounts a small tmpfs and needs root: {res.stderr.decode().strip()}")
    try:
        cluster.start_agent("e1", 1, "--output-root", str(full), "--min-free-space", "1")
        spec = validate_spec(
            {
                "scenario": "720p-h264",
                "duration": 20,
                "bitrate": "20M",
                "output": "big.mp4",
                "preset": "ultrafast",
            }
        )
        job_id = submit(conn, spec, SubmitDefaults(max_attempts=3))["id"]
        v = wait_view(
            conn, job_id, lambda v: any(h["reason"] == "output_disk_full" for h in v["history"]), timeout=120
        )
        _, port = cluster.agents["e1"]
        deadline = time.monotonic() + 10 + 3 * HB_S
        while _ready(port)[0] != 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        status, body = _ready(port)
        assert status == 503 and any("disk full" in p and str(full) in p for p in body["problems"]), body
        node = json.loads(conn.get("ffrtmp:node:e1"))
        assert any(d["full"] and d["path"] == str(full) for d in node["disk"]), node["disk"]
        assert "disk_full" in node["holds"]
        time.sleep(2 + 2 * HB_S)
        assert get_view(conn, job_id)["state"] == "queued"  # the full node took it no more
        cluster.start_agent("e2")  # its output root has room
        v = wait_view(conn, job_id, lambda v: v["state"] in TERMINAL, timeout=180)
        assert v["state"] == "completed" and v["node"] == "e2", v
        assert not any(h["to"] == "failed" for h in v["history"])
        assert not list(full.iterdir())  # no partial output left on the full disk
        subprocess.run(["mount", "-o", "remount,size=200m", str(full)], check=True)
        deadline = time.monotonic() + 10 + 3 * HB_S
        while _ready(port)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _ready(port)[0] == 200, _ready(port)
    finally:
        cluster.stop()
        cluster.agents.clear()
        subprocess.run(["umount", "-l", str(full)], check=False)


def test_ffprobe_agrees_with_a_completed_frozen_job(cluster, conn):
    """The output of a job whose attempt ran through a short freeze (within the timeout) is
    whole: the freeze shorter than the orphan deadline changes nothing."""
    cluster.start_agent("w1")
    job_id = live_job(conn, "pause.ts", 4)
    wait_view(conn, job_id, running_with_frames)
    proc, _ = cluster.agents["w1"]
    frozen = tree(proc.pid)
    for p in frozen:
        with contextlib.suppress(psutil.NoSuchProcess):  # one that was just exiting
            p.suspend()
    time.sleep(min(1.0, HB_S))
    for p in frozen:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.resume()
    v = wait_view(conn, job_id, lambda v: v["state"] in TERMINAL, timeout=60)
    assert v["state"] == "completed" and v["attempts"] == 1, v
    info = ffprobe(cluster.outputs / "pause.ts")
    assert abs(float(info["format"]["duration"]) - 4) < 1.5


def test_an_input_that_changes_during_the_run_fails_input_changed(cluster, conn):
    cluster.start_agent("i1")
    make_clip(cluster.inputs / "moving.mp4", seconds=6, size="160x120")
    spec = validate_spec(
        {"scenario": "live-4k", "input": "moving.mp4", "resolution": "64x64", "output": "moving.ts"}
    )
    job_id = submit(conn, spec, SubmitDefaults())["id"]
    wait_view(conn, job_id, running_with_frames)
    with open(cluster.inputs / "moving.mp4", "ab") as fh:  # someone rewrites the file being read
        fh.write(b"\0" * 1024)
    v = wait_view(conn, job_id, lambda v: v["state"] in TERMINAL, timeout=60)
    assert v["state"] == "failed" and v["error"]["reason"] == "input_changed" and v["attempts"] == 1, v
    assert not (cluster.outputs / "moving.ts").exists() and not list(cluster.outputs.glob(".moving.*"))


def test_platform_retries_back_off_instead_of_burning_every_attempt_at_once(cluster, conn):
    """Every attempt's FFmpeg killed from outside (a host that OOM-kills it each time): each is
    a platform failure, and the next attempt waits 2 s, then 4 s (fleet-wide, not only on the
    node that failed), so three attempts are spread out instead of burnt at once; the job ends
    failed with the reason and nothing is left running."""
    from datetime import datetime

    cluster.start_agent("b1")
    cluster.start_agent("b2")  # the node that did not fail would otherwise take it at once
    job_id = live_job(conn, "again.ts", 30)
    for attempt in (1, 2, 3):
        wait_view(conn, job_id, lambda v, n=attempt: running_with_frames(v) and v["attempts"] == n)
        for pid in ffmpeg_pids(job_id):
            os.kill(pid, signal.SIGKILL)
    v = wait_view(conn, job_id, lambda v: v["state"] in TERMINAL, timeout=90)
    assert v["state"] == "failed" and v["error"]["reason"] == "ffmpeg_killed" and v["attempts"] == 3, v
    times = {
        (h["to"], h["attempt"]): datetime.fromisoformat(h["time"]).timestamp()
        for h in v["history"]
        if h["to"] in ("retrying", "running")
    }
    waits = [times[("running", n + 1)] - times[("retrying", n)] for n in (1, 2)]
    assert waits[0] >= 1.9 and waits[1] >= 3.9, waits
    assert not ffmpeg_pids(job_id)
