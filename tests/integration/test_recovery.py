"""Recovery with several real agent processes and short heartbeat timings."""

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

from ffrtmp.jobs import get_view
from ffrtmp.model import validate_spec
from ffrtmp.submit import SubmitDefaults, submit
from tests.conftest import agent_argv, free_port, spawn_logged, wait_agent_ready

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
HB = os.environ.get("FFRTMP_TEST_HEARTBEAT", "1s")  # FFRTMP_TEST_HEARTBEAT=30s measures defaults
SCHEDULER = "1s" if HB == "1s" else "10s"  # the recovery loop's default interval is 10 s
TERMINAL = {"completed", "failed", "canceled", "timed_out", "rejected"}


class Cluster:
    def __init__(self, redis_url: str, tmp: Path) -> None:
        self.redis_url = redis_url
        self.tmp = tmp
        self.inputs = tmp / "in"
        self.outputs = tmp / "out"
        self.inputs.mkdir()
        self.outputs.mkdir()
        self.agents: dict[str, tuple[subprocess.Popen, int]] = {}
        self.key = "ffr_recovery_test_key_0123456789"
        self.port = free_port()
        self.coordinator = self._spawn(
            "coordinator",
            [
                str(BIN / "ffrtmp-coordinator"),
                "--port",
                str(self.port),
                "--redis-url",
                redis_url,
                "--heartbeat-interval",
                HB,
                "--scheduler-interval",
                SCHEDULER,
                "--max-retries",
                "2",
            ],
            env={"FFRTMP_API_KEY": self.key},
        )

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        return spawn_logged(self.tmp / f"{name}.log", argv, env)

    def start_agent(self, name: str, slots: int = 1, *extra: str, wait: bool = True) -> subprocess.Popen:
        for _ in range(3):  # a metrics port taken by another process meanwhile: another port
            proc = self._start_agent(name, slots, *extra, wait=wait)
            if proc.poll() is None or "address already in use" not in self._log_tail(name):
                return proc
        return proc

    def _log_tail(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-3000:]

    def _start_agent(self, name: str, slots: int, *extra: str, wait: bool) -> subprocess.Popen:
        port = free_port()
        argv = agent_argv(
            self.redis_url,
            name,
            port,
            self.tmp / f"work-{name}",
            "--slots",
            str(slots),
            "--live-slots",
            "0",
            "--heartbeat-interval",
            HB,
            "--input-root",
            str(self.inputs),
            *(() if "--output-root" in extra else ("--output-root", str(self.outputs))),
            "--drain-timeout",
            "30s",
            *extra,
        )
        proc = self._spawn(name, argv)
        self.agents[name] = (proc, port)
        if wait:
            try:
                wait_agent_ready(port, proc, self.tmp / f"{name}.log", name=name)
            except pytest.fail.Exception:
                if "address already in use" not in self._log_tail(name):
                    raise
        return proc

    def kill_agent(self, name: str) -> None:
        proc, _ = self.agents.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc, _ in self.agents.values():
            proc.terminate()
        for proc, _ in self.agents.values():
            proc.wait(60)
        self.coordinator.terminate()
        self.coordinator.wait(30)


@pytest.fixture()
def cluster(conn, redis_server, tmp_path):
    c = Cluster(redis_server, tmp_path)
    yield c
    c.stop()


def wait_view(conn, job_id, pred, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = get_view(conn, job_id)
        if pred(v):
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out: {get_view(conn, job_id)}")


def ffmpeg_pids(job_id: str) -> list[int]:
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].endswith("ffmpeg") and any(job_id in a for a in cmd):
            out.append(p.info["pid"])
    return out


def test_a_sigkilled_agents_job_runs_again_elsewhere_never_twice_at_once(cluster, conn):
    cluster.start_agent("a1")
    from ffrtmp.durations import parse_duration

    # long enough to still be running when its orphan deadline (2 heartbeats) passes
    duration = max(12.0, 4 * parse_duration(HB))
    spec = validate_spec(
        {"scenario": "live-4k", "duration": duration, "resolution": "64x64", "output": "lost.ts"}
    )
    job_id = submit(conn, spec, SubmitDefaults(max_attempts=3))["id"]
    wait_view(conn, job_id, lambda v: v["state"] == "running" and (v["progress"] or {}).get("frame", 0) > 0)
    cluster.start_agent("a2")
    killed_at = time.monotonic()
    cluster.kill_agent("a1")
    # the orphaned run stops itself before the job is requeued: never two FFmpegs for one job
    overlap = []
    while time.monotonic() - killed_at < 300:
        v = get_view(conn, job_id)
        pids = ffmpeg_pids(job_id)
        if len(pids) > 1:
            overlap.append(pids)
        if v["state"] == "running" and v["node"] == "a2":
            break
        time.sleep(0.05)
    moved_after = time.monotonic() - killed_at
    assert not overlap
    v = wait_view(conn, job_id, lambda v: v["state"] in TERMINAL, timeout=300)
    assert v["state"] == "completed" and v["node"] == "a2" and v["attempts"] == 2, v
    steps = [(h["from"], h["to"], h["reason"]) for h in v["history"]]
    assert steps == [
        (None, "queued", "submitted"),
        ("queued", "running", "started"),
        ("running", "retrying", "node_lost"),
        ("retrying", "queued", "requeued"),
        ("queued", "running", "started"),
        ("running", "completed", "ffmpeg_exit_0"),
    ], steps
    (a1_exit,) = (cluster.tmp / "work-a1" / "runs" / job_id).glob("1-*/exit.json")
    a1_run = json.loads(a1_exit.read_text())
    assert a1_run["orphaned"] is True
    assert (cluster.outputs / "lost.ts").is_file()
    assert not list(cluster.outputs.glob(".lost.*"))  # the orphan's temp file was not published
    assert conn.hget("ffrtmp:stats:requeues", "node_lost") == b"1"
    print(f"heartbeat {HB}: SIGKILL -> running on a2 after {moved_after:.1f}s")


def test_node_lost_with_no_attempts_left_fails_with_reason(cluster, conn):
    cluster.start_agent("b1")
    spec = validate_spec({"scenario": "live-4k", "duration": 20, "resolution": "64x64", "max_attempts": 1})
    job_id = submit(conn, spec, SubmitDefaults())["id"]
    wait_view(conn, job_id, lambda v: v["state"] == "running")
    cluster.kill_agent("b1")
    v = wait_view(conn, job_id, lambda v: v["state"] in TERMINAL, timeout=300)
    assert v["state"] == "failed" and v["error"]["reason"] == "node_lost" and v["attempts"] == 1, v
    assert [h["to"] for h in v["history"]][-1] == "failed"
    deadline = time.monotonic() + 15
    while ffmpeg_pids(job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ffmpeg_pids(job_id)


def cli(cluster, *args):
    env = {**os.environ, "FFRTMP_URL": f"http://127.0.0.1:{cluster.port}", "FFRTMP_API_KEY": cluster.key}
    res = subprocess.run([str(BIN / "ffrtmp"), *args], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_drain_takes_no_new_jobs_lets_running_ones_finish_and_undrain_resumes(cluster, conn):
    cluster.start_agent("d1", slots=2)
    d = SubmitDefaults()
    running = submit(conn, validate_spec({"scenario": "live-4k", "duration": 5, "resolution": "64x64"}), d)[
        "id"
    ]
    wait_view(conn, running, lambda v: v["state"] == "running")
    assert "drain requested" in cli(cluster, "nodes", "drain", "d1")
    node = json.loads(cli(cluster, "--output", "json", "nodes", "describe", "d1"))
    assert node["state"] == "draining"
    time.sleep(1.5)  # the agent polls its drain flag every second
    later = submit(conn, validate_spec({"scenario": "480p-h264", "duration": 1, "resolution": "64x64"}), d)[
        "id"
    ]
    assert wait_view(conn, running, lambda v: v["state"] in TERMINAL)["state"] == "completed"
    time.sleep(2)
    assert get_view(conn, later)["state"] == "queued"  # nothing was taken while drained
    _, port = cluster.agents["d1"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as resp:
        ready = json.loads(resp.read())
    assert ready["ready"] and ready["draining"]  # a drain is the operator's hold, not a fault
    cli(cluster, "nodes", "undrain", "d1")
    v = wait_view(conn, later, lambda v: v["state"] in TERMINAL, timeout=60)
    assert v["state"] == "completed" and v["node"] == "d1"
    assert json.loads(cli(cluster, "--output", "json", "nodes", "describe", "d1"))["state"] == "alive"


def test_cancel_four_running_jobs_on_one_agent_leaves_no_ffmpeg(cluster, conn):
    from ffrtmp.jobs import cancel

    cluster.start_agent("c4", slots=4)
    d = SubmitDefaults(cancel_grace_s=30)
    ids = [
        submit(
            conn,
            validate_spec(
                {"scenario": "live-4k", "duration": 600, "resolution": "64x64", "output": f"c{i}.ts"}
            ),
            d,
        )["id"]
        for i in range(4)
    ]
    for j in ids:
        wait_view(conn, j, lambda v: v["state"] == "running" and (v["progress"] or {}).get("frame", 0) > 0)
    assert all(ffmpeg_pids(j) for j in ids)
    t0 = time.monotonic()
    assert {cancel(conn, j, "test")[0] for j in ids} == {"requested"}
    views = [wait_view(conn, j, lambda v: v["state"] in TERMINAL, timeout=40) for j in ids]
    elapsed = time.monotonic() - t0
    assert all(v["state"] == "canceled" and v["attempts"] == 1 for v in views), views
    assert elapsed <= 30 + 5
    assert not any(ffmpeg_pids(j) for j in ids)
    assert not list(cluster.outputs.glob(".c*.part.ts")) and not list(cluster.outputs.glob("c*.ts"))
    assert conn.hget("ffrtmp:stats:cancels", "graceful") == b"4"
    time.sleep(2)
    assert all(get_view(conn, j)["state"] == "canceled" for j in ids)  # never retried


def test_timeout_ends_timed_out_without_retry_and_leaves_no_ffmpeg(cluster, conn):
    cluster.start_agent("t1")
    spec = validate_spec({"scenario": "live-4k", "duration": 600, "resolution": "64x64", "timeout": 3})
    job_id = submit(conn, spec, SubmitDefaults(max_attempts=3))["id"]
    v = wait_view(conn, job_id, lambda v: v["state"] in TERMINAL, timeout=60)
    assert v["state"] == "timed_out" and v["error"]["reason"] == "timed_out" and v["attempts"] == 1, v
    assert "graceful" in v["error"]["message"]
    assert not ffmpeg_pids(job_id)
    time.sleep(2)
    assert get_view(conn, job_id)["attempts"] == 1


def test_an_attempt_whose_lease_is_voided_stops_and_writes_nothing(cluster, conn):
    from ffrtmp.keys import lease_key

    cluster.start_agent("f1")
    spec = validate_spec({"scenario": "live-4k", "duration": 8, "resolution": "64x64", "output": "fenced.ts"})
    job_id = submit(conn, spec, SubmitDefaults(max_attempts=3))["id"]
    wait_view(conn, job_id, lambda v: v["state"] == "running" and (v["progress"] or {}).get("frame", 0) > 0)
    before = get_view(conn, job_id)
    conn.delete(lease_key(job_id))  # what recovery does when it gives up on an attempt
    deadline = time.monotonic() + 10
    while ffmpeg_pids(job_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not ffmpeg_pids(job_id)
    time.sleep(1)
    after = get_view(conn, job_id)
    assert (
        after["history"] == before["history"] and after["error"] is None
    )  # the fenced attempt wrote nothing
    assert not list(cluster.outputs.glob(".fenced.*")) and not (cluster.outputs / "fenced.ts").exists()
    # its RQ execution stops heartbeating, so recovery requeues the job and attempt 2 completes it
    v = wait_view(conn, job_id, lambda v: v["state"] in TERMINAL, timeout=90)
    assert v["state"] == "completed" and v["attempts"] == 2, v
    assert (cluster.outputs / "fenced.ts").is_file()


def test_agent_sigkilled_and_restarted_readopts_its_running_job(cluster, conn):
    cluster.start_agent("r1")
    spec = validate_spec({"scenario": "live-4k", "duration": 8, "resolution": "64x64", "output": "kept.ts"})
    job_id = submit(conn, spec, SubmitDefaults(max_attempts=3))["id"]
    wait_view(conn, job_id, lambda v: v["state"] == "running" and (v["progress"] or {}).get("frame", 0) > 0)
    pids = ffmpeg_pids(job_id)
    assert len(pids) == 1
    cluster.kill_agent("r1")
    assert ffmpeg_pids(job_id) == pids  # the workload belongs to the OS, not to the agent
    cluster.start_agent("r1")  # same name and work dir, well within the heartbeat timeout
    v = wait_view(conn, job_id, lambda v: v["state"] in TERMINAL, timeout=60)
    assert v["state"] == "completed" and v["attempts"] == 1 and v["node"] == "r1", v
    assert [h["to"] for h in v["history"]] == ["queued", "running", "completed"]
    assert v["result"]["duration_s"] > 7 and (cluster.outputs / "kept.ts").is_file()
    assert not list(cluster.outputs.glob(".kept.*"))
    log = (cluster.tmp / "r1.log").read_text()
    assert "adopted run of job " + job_id in log
    from rq.registry import StartedJobRegistry

    assert StartedJobRegistry(v["rq_queue"], connection=conn).get_job_ids(cleanup=False) == []


def test_a_dead_node_rejoins_cleanly_and_a_flapping_one_shows(cluster, conn):
    cluster.start_agent("n1")

    def node():
        return json.loads(cli(cluster, "--output", "json", "nodes", "describe", "n1"))

    assert node()["state"] == "alive" and node()["flapping"] is False
    cluster.kill_agent("n1")
    deadline = time.monotonic() + 20
    while node()["state"] != "dead" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert node()["state"] == "dead"  # heartbeat 1 s: dead after 3 s
    cluster.start_agent("n1")
    assert node()["state"] == "alive" and node()["starts_30m"] == 2
    job_id = submit(
        conn, validate_spec({"scenario": "480p-h264", "duration": 1, "resolution": "64x64"}), SubmitDefaults()
    )["id"]
    assert wait_view(conn, job_id, lambda v: v["state"] in TERMINAL)["state"] == "completed"
    cluster.kill_agent("n1")
    cluster.start_agent("n1")
    n = node()
    assert n["starts_30m"] == 3 and n["flapping"] is True
    assert "FLAPPING" in cli(cluster, "nodes", "list")


def test_retention_of_finished_and_failed_jobs(cluster, conn):
    cluster.start_agent("k1")
    (cluster.inputs / "bad.mp4").write_bytes(b"nope" * 100)
    ok = submit(
        conn, validate_spec({"scenario": "480p-h264", "duration": 1, "resolution": "64x64"}), SubmitDefaults()
    )["id"]
    bad = submit(conn, validate_spec({"scenario": "480p-h264", "input": "bad.mp4"}), SubmitDefaults())["id"]
    for j in (ok, bad):
        wait_view(conn, j, lambda v: v["state"] in TERMINAL)
    week, month = 7 * 24 * 3600, 30 * 24 * 3600
    assert week - 60 < conn.ttl(f"rq:job:{ok}") <= week
    assert week - 60 < conn.ttl(f"ffrtmp:job:{ok}:history") <= week
    assert month - 60 < conn.ttl(f"rq:job:{bad}") <= month
    assert month - 60 < conn.ttl(f"ffrtmp:job:{bad}:history") <= month


def test_a_redis_stall_does_not_make_workers_quit_or_lose_the_job(cluster, conn, redis_server):
    cluster.start_agent("s1")
    sock = redis_server.removeprefix("unix://")
    server = next(p for p in psutil.process_iter(["cmdline"]) if sock in " ".join(p.info["cmdline"] or []))
    spec = validate_spec({"scenario": "live-4k", "duration": 6, "resolution": "64x64"})
    job_id = submit(conn, spec, SubmitDefaults())["id"]
    wait_view(conn, job_id, lambda v: v["state"] == "running" and (v["progress"] or {}).get("frame", 0) > 0)
    proc, _ = cluster.agents["s1"]
    slots = psutil.Process(proc.pid).children()
    server.suspend()  # SIGSTOP: every Redis call now hangs
    time.sleep(2.5)
    server.resume()
    v = wait_view(conn, job_id, lambda v: v["state"] in TERMINAL, timeout=60)
    assert v["state"] == "completed" and v["attempts"] == 1, v
    assert [c.pid for c in psutil.Process(proc.pid).children()] == [c.pid for c in slots]  # no slot quit
