"""The Redis ACLs the redis role deploys, proven with a real redis-server, coordinator and agent:
the job lifecycle (complete, cancel, retry, a killed FFmpeg, drain, an agent killed and adopted,
an agent lost and its job requeued elsewhere, a pinned idempotent submit, a workload failure)
runs with no command refused (ACL LOG empty), and the agent's user cannot delete or rewrite what
only the coordinator owns: the queues, the job index, idempotency keys, rate-limit counters,
the recovery lease, pinned-queue registrations, nor run anything dangerous."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import redis
import yaml

from tests.conftest import agent_argv, ffprobe, free_port, make_clip, spawn_logged, wait_agent_ready

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"completed", "failed", "canceled", "timed_out", "rejected"}
PASSWORDS = {"coordinator": "coordinator-test-pass-0123456789", "agent": "agent-test-pass-0123456789"}


def role_rules() -> dict[str, str]:
    """The rules exactly as the role's defaults give them."""
    defaults = yaml.safe_load((ROOT / "roles/ffrtmp_redis/defaults/main.yml").read_text())
    return {
        "coordinator": defaults["ffrtmp_redis_coordinator_acl_rules"],
        "agent": defaults["ffrtmp_redis_agent_acl_rules"],
    }


class AclStack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        rules = role_rules()
        acl = tmp / "users.acl"
        acl.write_text(
            "user default on nopass ~* &* +@all\n"  # the test's own inspection connection
            + "".join(f"user {u} on >{PASSWORDS[u]} {rules[u]}\n" for u in ("coordinator", "agent"))
        )
        self.redis = spawn_logged(
            tmp / "redis.log",
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--aclfile",
                str(acl),
                "--save",
                "",
                "--dir",
                str(tmp),
            ],
        )
        self.admin = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                self.admin.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        self.key = "ffr_acl_test_key_0123456789abcdef"
        self.api_port = free_port()
        self.coordinator = spawn_logged(
            tmp / "coordinator.log",
            [
                str(BIN / "ffrtmp-coordinator"),
                "--port",
                str(self.api_port),
                "--redis-url",
                self.url("coordinator"),
                "--heartbeat-interval",
                "1s",
                "--scheduler-interval",
                "1s",
                "--max-retries",
                "2",
            ],
            env={"FFRTMP_API_KEY": self.key},
        )
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.inputs = tmp / "in"
        self.inputs.mkdir()

    def url(self, user: str) -> str:
        return f"redis://{user}:{PASSWORDS[user]}@127.0.0.1:{self.port}/0"

    def start_agent(self, name: str) -> subprocess.Popen[bytes]:
        metrics = free_port()
        log = self.tmp / f"agent-{name}.log"
        proc = spawn_logged(
            log,
            [
                *agent_argv(self.url("agent"), name, metrics, self.tmp / f"work-{name}", "--slots", "2"),
                "--heartbeat-interval",
                "1s",
                "--input-root",
                str(self.inputs),
            ],
        )
        wait_agent_ready(metrics, proc, log)
        self.agents[name] = proc
        return proc

    def api(self, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> dict:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={
                "Authorization": f"Bearer {self.key}",
                "Content-Type": "application/json",
                **(headers or {}),
            },
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:
                return json.loads(e.read())
            except urllib.error.URLError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def wait(self, job: str, pred, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            v = self.api("GET", f"/jobs/{job}")
            if pred(v) or time.monotonic() > deadline:
                return v
            time.sleep(0.3)

    def running(self, job: str) -> dict:
        return self.wait(
            job, lambda v: v["state"] == "running" and (v.get("progress") or {}).get("frame", 0) > 0
        )

    def done(self, job: str, timeout: float = 180) -> dict:
        return self.wait(job, lambda v: v["state"] in TERMINAL, timeout)

    def submit(self, **spec) -> str:
        body = self.api("POST", "/jobs", {"resolution": "64x64", **spec})
        assert "id" in body, body
        return body["id"]

    def stop(self) -> None:
        for p in [*self.agents.values(), self.coordinator]:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.redis.terminate()
        self.redis.wait(10)


def ffmpeg_of(job: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info["name"] == "ffmpeg" and any(job in a for a in p.info["cmdline"] or []):
            out.append(p)
    return out


@pytest.fixture()
def stack(tmp_path):
    s = AclStack(tmp_path)
    yield s
    s.stop()


def test_the_lifecycle_runs_under_the_role_acls_and_the_agent_cannot_touch_what_it_does_not_own(stack):
    stack.start_agent("a1")
    assert stack.done(stack.submit(scenario="480p-h264", duration=1))["state"] == "completed"
    live = stack.submit(scenario="live-4k", duration=30, output="l.ts")
    stack.running(live)
    stack.api("POST", f"/jobs/{live}/cancel")
    assert stack.done(live)["state"] == "canceled"
    stack.api("POST", f"/jobs/{live}/retry")
    assert stack.done(live)["state"] == "completed"
    killed = stack.submit(scenario="live-4k", duration=6, output="k.ts")
    stack.running(killed)
    for p in ffmpeg_of(killed):
        p.kill()
    assert stack.done(killed)["state"] == "completed"
    stack.api("POST", "/nodes/a1/drain")
    time.sleep(2)
    stack.api("POST", "/nodes/a1/undrain")
    adopted = stack.submit(scenario="live-4k", duration=10, output="m.ts")
    stack.running(adopted)
    stack.agents["a1"].send_signal(signal.SIGKILL)
    stack.agents["a1"].wait(10)
    stack.start_agent("a1")
    v = stack.done(adopted)
    # adopted on attempt 1, or, when the restart outlasted the orphan deadline on a loaded
    # machine, retried: either way through the agent's user (the ACL log is checked below)
    assert v["state"] == "completed", v
    lost = stack.submit(scenario="live-4k", duration=20, output="n.ts")
    stack.running(lost)
    root = psutil.Process(stack.agents["a1"].pid)
    for p in [root, *root.children(recursive=True), *ffmpeg_of(lost)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    stack.start_agent("a2")
    v = stack.done(lost, timeout=240)
    assert v["state"] == "completed" and v["node"] == "a2", v
    pinned = stack.api(
        "POST",
        "/jobs",
        {"scenario": "480p-h264", "duration": 1, "resolution": "64x64", "node": "a2"},
        headers={"Idempotency-Key": "acl-test"},
    )["id"]
    assert stack.done(pinned)["state"] == "completed"
    make_clip(stack.inputs / "bad.mp4", seconds=1, size="64x64")
    (stack.inputs / "bad.mp4").write_bytes((stack.inputs / "bad.mp4").read_bytes()[:800])
    assert stack.done(stack.submit(scenario="480p-h264", input="bad.mp4"))["state"] == "failed"
    short = stack.submit(scenario="live-4k", duration=60, timeout=3, output="t.ts")
    assert stack.done(short)["state"] == "timed_out"
    time.sleep(3)  # heartbeats, recovery ticks and stats after the last job

    assert stack.admin.acl_log() == [], stack.admin.acl_log()[:5]
    ends = {f[b"job"].decode() for _, f in stack.admin.xrange("ffrtmp:events")}
    assert {pinned, short, live} <= ends  # written by the agents' user

    agent = redis.Redis.from_url(stack.url("agent"))
    refused = [
        ["DEL", "rq:queue:default.medium"],
        ["UNLINK", "rq:queue:live.high"],
        ["RENAME", "rq:queue:default.medium", "rq:queue:x"],
        ["ZREM", "ffrtmp:jobs", pinned],
        ["DEL", "ffrtmp:jobs"],
        ["ZREM", "ffrtmp:jobs:queue:default", pinned],  # the listing indexes: add only
        ["DEL", "ffrtmp:jobs:labels"],
        ["SET", "ffrtmp:idempotency:" + "0" * 64, "x"],
        ["DEL", "ffrtmp:ratelimit:x"],
        ["SET", "ffrtmp:recovery:leader", "me"],
        ["SADD", "ffrtmp:queues:pinned", "x"],
        ["DEL", "ffrtmp:events"],  # the ends webhooks are made from: append only
        ["XTRIM", "ffrtmp:events", "MAXLEN", "0"],
        ["XDEL", "ffrtmp:events", "0-1"],
        ["SADD", "rq:queues", "rq:queue:x"],
        ["SET", "other:key", "x"],
        ["FLUSHALL"],
        ["CONFIG", "GET", "dir"],
        ["KEYS", "*"],
        ["CLIENT", "KILL", "TYPE", "normal"],
        ["EVAL", "return redis.call('del', KEYS[1])", "1", "rq:queue:default.medium"],
    ]
    for cmd in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            agent.execute_command(*cmd)
    assert agent.execute_command("LLEN", "rq:queue:default.medium") == 0  # what a worker needs
    coordinator = redis.Redis.from_url(stack.url("coordinator"))
    for cmd in (["FLUSHALL"], ["CONFIG", "GET", "dir"], ["SET", "other:key", "x"]):
        with pytest.raises(redis.exceptions.NoPermissionError):
            coordinator.execute_command(*cmd)
    assert os.path.exists(stack.tmp / "redis.log")


def test_a_segmented_job_plans_and_joins_under_the_agent_acl(stack):
    """The planner slot enqueues the segments with the agent's own Redis user; the source's
    keyframes (every 10 s) are too sparse for 2 s segments, so the cuts fall on frames."""
    stack.start_agent("a1")
    make_clip(stack.inputs / "six.mp4", 6, "320x240", 25)
    job = stack.submit(scenario="480p-h264", input="six.mp4", segmented=True, segment_seconds=2)
    view = stack.done(job)
    assert view["state"] == "completed", view
    assert view["segments"]["count"] >= 3, view["segments"]
    out = ffprobe(view["result"]["output"])
    assert round(float(out["format"]["duration"]), 1) == 6.0
