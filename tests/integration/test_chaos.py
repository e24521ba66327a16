"""Chaos: 3 agents and 60 mixed jobs while agents are SIGKILLed and restarted, frozen whole
(SIGSTOP, a paused VM) and resumed, and run supervisors are SIGKILLed, at random; the
coordinator is restarted once and Redis (AOF) once. Bounded to a few minutes with 1 s
heartbeats. Proven at the end from Redis and from the run records on disk: every job is
terminal, none is missing, no job ever ran twice at once (a frozen run does not run; it must be
gone within moments of waking), and no workload failure was retried."""

import contextlib
import itertools
import json
import os
import random
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import redis

from ffrtmp.cli.client import Client
from tests.conftest import ffprobe, make_clip, require, video_stream
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
TERMINAL = {"completed", "failed", "canceled", "timed_out", "rejected"}
# what a job may end failed with, having run out of attempts, when none of it was its fault
PLATFORM_REASONS = {
    "node_lost",
    "attempt_lost",
    "lost_ownership",
    "runner_died",
    "horse_died",
    "redis_outage",
    "ffmpeg_killed",
    "agent_error",
}
WAKE_SLACK_S = 1.0  # a frozen run must be gone this soon after SIGCONT
SEED = int(os.environ.get("FFRTMP_CHAOS_SEED", "20261123"))
CHAOS_SECONDS = float(os.environ.get("FFRTMP_CHAOS_SECONDS", "75"))
JOBS = int(os.environ.get("FFRTMP_CHAOS_JOBS", "60"))  # bench/soak.sh raises all three
MEAN_GAP_S = 0.7 * (CHAOS_SECONDS / 75) * (60 / JOBS)  # spread the submissions over the chaos


def chaos(stack: Stack, stop: threading.Event, events: list[str]) -> None:
    rng = random.Random(SEED)
    t0 = time.monotonic()
    did_coordinator = did_redis = did_long_freeze = False
    while not stop.is_set() and time.monotonic() - t0 < CHAOS_SECONDS:
        stop.wait(rng.uniform(4, 8))
        elapsed = time.monotonic() - t0
        if not did_coordinator and elapsed > 15:
            stack.restart_coordinator()
            events.append(f"{elapsed:.0f}s coordinator restarted")
            did_coordinator = True
            continue
        if not did_redis and elapsed > 35:
            stack.restart_redis()
            events.append(f"{elapsed:.0f}s redis restarted")
            did_redis = True
            continue
        name = rng.choice(sorted(stack.agents))
        fault = rng.choice(["kill", "kill", "freeze", "supervisor"])
        if not did_long_freeze and elapsed > 45:
            fault, did_long_freeze = "long-freeze", True
        if fault in ("freeze", "long-freeze"):
            frozen = stack.freeze_agent(name)
            # 12 s: past the execution TTL, so the frozen agent's jobs move on without it
            down = 12.0 if fault == "long-freeze" else rng.choice([0.5, 2.0, 12.0])
            stop.wait(down)
            for p in frozen:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.resume()
            stack.frozen.append((name, time.time() - down, time.time()))
            events.append(f"{elapsed:.0f}s {name} frozen for {down}s")
            continue
        if fault == "supervisor":
            pid = stack.kill_a_supervisor(name)
            events.append(f"{elapsed:.0f}s {name} run supervisor {pid} SIGKILLed")
            continue
        stack.kill_agent(name)
        down = rng.choice([0.2, 1.0, 2.0, 7.0])  # 7 s: past the orphan deadline, so the job moves
        stop.wait(down)
        stack.start_agent(name)
        events.append(f"{elapsed:.0f}s {name} SIGKILLed, back after {down}s")


def run_records(tmp: Path) -> dict[str, list[tuple[float, float, str]]]:
    """(start, end, agent) of every FFmpeg run, from every agent's run directories."""
    runs: dict[str, list[tuple[float, float, str]]] = {}
    for started in tmp.glob("work-*/runs/*/*/started.json"):
        exit_file = started.parent / "exit.json"
        begin = json.loads(started.read_text())["time"]
        end = json.loads(exit_file.read_text())["time"] if exit_file.exists() else float("inf")
        job = started.parent.parent.name
        runs.setdefault(job, []).append((begin, end, started.parts[-5].removeprefix("work-")))
    return runs


def running_time(
    run: tuple[float, float, str], frozen: list[tuple[str, float, float]]
) -> list[tuple[float, float]]:
    """The intervals in which a run was running: its record minus the freezes of its agent
    (a stopped process runs nothing), each freeze ending ``WAKE_SLACK_S`` after SIGCONT."""
    spans = [(run[0], run[1])]
    for agent, t_stop, t_cont in frozen:
        if agent != run[2]:
            continue
        out = []
        for a, b in spans:
            lo, hi = max(a, t_stop), min(b, t_cont + WAKE_SLACK_S)
            if lo >= hi:
                out.append((a, b))
                continue
            out.extend(x for x in ((a, lo), (hi, b)) if x[0] < x[1])
        spans = out
    return spans


@pytest.mark.timeout(900 + 4 * CHAOS_SECONDS + 4 * JOBS)
def test_chaos(tmp_path):
    require("redis-server")
    stack = Stack(tmp_path)
    stack.start_redis()
    stack.start_coordinator()
    for name in ("a1", "a2", "a3"):
        stack.start_agent(name)
    make_clip(stack.inputs / "clip.mp4", seconds=2, size="320x240")
    (stack.inputs / "corrupt.mp4").write_bytes(b"\x00not media\x00" * 64)
    client = Client(f"http://127.0.0.1:{stack.port}", stack.key, retry_initial=0.5, retries=5)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(client.get("/nodes")["nodes"]) < 3:
        time.sleep(0.5)

    rng = random.Random(SEED + 1)
    share = {"transcode": 30, "live": 12, "batch": 8, "corrupt": 10}  # per 60 jobs
    kinds = [k for k, n in share.items() for _ in range(round(n * JOBS / 60))][:JOBS]
    kinds += ["transcode"] * (JOBS - len(kinds))
    rng.shuffle(kinds)
    submitted: dict[str, str] = {}
    stop = threading.Event()
    events: list[str] = []
    agitator = threading.Thread(target=chaos, args=(stack, stop, events), daemon=True)
    agitator.start()
    try:
        for i, kind in enumerate(kinds):
            body = {
                "transcode": {
                    "scenario": "480p-h264",
                    "input": "clip.mp4",
                    "resolution": "160x120",
                    "output": f"t{i}.mp4",
                    "priority": rng.choice(["high", "medium", "low"]),
                },
                "live": {
                    "scenario": "live-4k",
                    "duration": 3,
                    "resolution": "64x64",
                    "queue": "live",
                    "output": f"l{i}.ts",
                },
                "batch": {
                    "scenario": "720p-h264",
                    "duration": 2,
                    "resolution": "160x90",
                    "queue": "batch",
                    "output": f"b{i}.mp4",
                },
                "corrupt": {"scenario": "480p-h264", "input": "corrupt.mp4", "output": f"c{i}.mp4"},
            }[kind]
            submitted[client.post("/jobs", body)["id"]] = kind
            time.sleep(rng.uniform(0.3, 1.7) * MEAN_GAP_S)
        agitator.join(CHAOS_SECONDS + 30)
    finally:
        stop.set()
    for name, proc in stack.agents.items():  # every agent up for the end
        if proc.poll() is not None:
            stack.start_agent(name)

    conn = redis.Redis(unix_socket_path=stack.sock)
    views: dict[str, dict] = {}
    deadline = time.monotonic() + 240 + 3 * JOBS
    while time.monotonic() < deadline:
        views = {j: client.get(f"/jobs/{j}") for j in submitted}
        if all(v["state"] in TERMINAL for v in views.values()):
            break
        time.sleep(1)
    try:
        summary = (
            "\n".join(events)
            + "\n"
            + json.dumps({k: sum(1 for v in views.values() if v["state"] == k) for k in TERMINAL})
        )
        assert len(views) == JOBS and all(v["state"] in TERMINAL for v in views.values()), summary
        assert conn.zcard("ffrtmp:jobs") == JOBS  # none missing, none duplicated
        assert any("redis restarted" in e for e in events) and any("coordinator" in e for e in events)
        assert sum("SIGKILLed" in e or "frozen" in e for e in events) >= 4, summary
        for job_id, kind in submitted.items():
            v = views[job_id]
            history = v["history"]
            workload_failures = [h for h in history if h["to"] == "failed" and h["reason"] == "ffmpeg_error"]
            if kind == "corrupt":
                assert v["state"] == "failed" and v["error"]["reason"] == "ffmpeg_error", (summary, v)
                assert len(workload_failures) == 1 and history[-1] is workload_failures[0], (summary, v)
            else:
                assert not workload_failures, (summary, kind, v)
                assert v["state"] == "completed" or v["error"]["reason"] in PLATFORM_REASONS, (summary, v)
        # no job ever ran twice at once: the run records on disk say so
        for job_id, runs in run_records(tmp_path).items():
            spans = sorted((a, b, r[2]) for r in runs for a, b in running_time(r, stack.frozen))
            for (s1, e1, w1), (s2, e2, w2) in itertools.pairwise(spans):
                assert e1 <= s2, f"{job_id}: {w1} [{s1:.2f}, {e1:.2f}] overlaps {w2} [{s2:.2f}, {e2:.2f}]"
        completed = [j for j, v in views.items() if v["state"] == "completed"]
        assert len(completed) >= 2 * JOBS // 3, summary
        for j in completed[:10]:
            assert video_stream(ffprobe(views[j]["output"]))["codec_name"] == "h264"
        assert not list(stack.outputs.glob(".*.part*")), list(stack.outputs.glob(".*"))
        print(summary)
    finally:
        stack.stop()
    time.sleep(1)
    leftover = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]
    assert not leftover
