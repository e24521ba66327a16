"""What a rolling upgrade does to an agent, with real processes: drain and wait, a handover
restart under a running job (the new agent adopts the FFmpeg, whose PID never changes), a
restart while drained that is still ready, and canary jobs pinned to one node."""

import json
import os
import signal
import subprocess
import time

import pytest
from rq.registry import StartedJobRegistry

from ffrtmp.jobs import cancel
from ffrtmp.model import SubmissionError, validate_spec
from ffrtmp.queues import queues_in_use
from ffrtmp.submit import SubmitDefaults, submit
from tests.integration.test_recovery import BIN, TERMINAL, Cluster, ffmpeg_pids, wait_view

pytestmark = pytest.mark.integration


@pytest.fixture()
def cluster(conn, redis_server, tmp_path):
    c = Cluster(redis_server, tmp_path)
    yield c
    c.stop()


def run_cli(cluster, *args, timeout=120):
    env = {**os.environ, "FFRTMP_URL": f"http://127.0.0.1:{cluster.port}", "FFRTMP_API_KEY": cluster.key}
    argv = [str(BIN / "ffrtmp"), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)


def ready(port):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as resp:
        return json.loads(resp.read())


def live_job(conn, out, duration=12):
    spec = validate_spec({"scenario": "live-4k", "duration": duration, "resolution": "64x64", "output": out})
    job_id = submit(conn, spec, SubmitDefaults(max_attempts=3))["id"]
    wait_view(conn, job_id, lambda v: v["state"] == "running" and (v["progress"] or {}).get("frame", 0) > 0)
    return job_id


def test_handover_restart_leaves_the_run_to_the_next_agent(cluster, conn):
    # a 3 s heartbeat: the next agent must adopt within the orphan deadline (2 intervals + 1 s),
    # and a Python start on an oversubscribed machine can take longer than the 1 s test default's
    slow = ("--heartbeat-interval", "3s")
    proc = cluster.start_agent("h1", 1, *slow)
    job_id = live_job(conn, "handed.ts")
    pids = ffmpeg_pids(job_id)
    assert len(pids) == 1
    t0 = time.monotonic()
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(20) == 0
    stopped_in = time.monotonic() - t0
    assert stopped_in < 15, stopped_in  # it did not wait for the job (drain timeout is 30 s)
    cluster.agents.pop("h1")
    assert ffmpeg_pids(job_id) == pids
    cluster.start_agent("h1", 1, *slow)
    assert ffmpeg_pids(job_id) == pids  # adopted, not restarted
    v = wait_view(conn, job_id, lambda v: v["state"] in TERMINAL, timeout=60)
    assert v["state"] == "completed" and v["attempts"] == 1 and v["node"] == "h1", v
    assert [h["to"] for h in v["history"]] == ["queued", "running", "completed"]
    assert v["result"]["duration_s"] > 11 and (cluster.outputs / "handed.ts").is_file()
    assert "handing over" in (cluster.tmp / "h1.log").read_text()
    assert StartedJobRegistry(v["rq_queue"], connection=conn).get_job_ids(cleanup=False) == []


def test_drain_wait_reports_what_runs_and_a_drained_restart_stays_ready(cluster, conn):
    proc = cluster.start_agent("w1")
    job_id = live_job(conn, "drained.ts", duration=8)
    res = run_cli(cluster, "nodes", "drain", "w1", "--wait", "--timeout", "1s", "--interval", "0.2s")
    assert res.returncode == 3, res.stdout + res.stderr  # the job still runs: not drained
    assert job_id in res.stderr and job_id in res.stdout and "Traceback" not in res.stderr
    res = run_cli(cluster, "nodes", "drain", "w1", "--wait", "--timeout", "90s", "--interval", "0.5s")
    assert res.returncode == 0 and "w1: drained" in res.stdout, res.stdout + res.stderr
    assert wait_view(conn, job_id, lambda v: v["state"] in TERMINAL)["state"] == "completed"
    # a restart while drained: the agent is ready (the drain is a hold, not a fault) and takes nothing
    proc.send_signal(signal.SIGUSR1)
    proc.wait(20)
    cluster.agents.pop("w1")
    cluster.start_agent("w1")
    _, port = cluster.agents["w1"]
    r = ready(port)
    assert r["ready"] and r["draining"] and r["problems"] == [], r
    spec = validate_spec({"scenario": "480p-h264", "duration": 1, "resolution": "64x64"})
    later = submit(conn, spec, SubmitDefaults())
    time.sleep(3)
    assert wait_view(conn, later["id"], lambda v: True)["state"] == "queued"
    assert run_cli(cluster, "nodes", "undrain", "w1").returncode == 0
    v = wait_view(conn, later["id"], lambda v: v["state"] in TERMINAL, timeout=60)
    assert v["state"] == "completed" and v["node"] == "w1"
    assert ready(port)["draining"] is False


def test_a_job_pinned_to_a_node_runs_there_only(cluster, conn):
    cluster.start_agent("p1")
    cluster.start_agent("p2")
    d = SubmitDefaults()
    pinned = validate_spec({"scenario": "480p-h264", "duration": 1, "resolution": "64x64", "node": "p2"})
    ids = [submit(conn, pinned, d)["id"] for _ in range(4)]
    views = [wait_view(conn, j, lambda v: v["state"] in TERMINAL, timeout=90) for j in ids]
    assert [(v["state"], v["node"]) for v in views] == [("completed", "p2")] * 4
    assert views[0]["rq_queue"] == "default.medium@p2"
    assert "default.medium@p2" in queues_in_use(conn)
    for bad, why in (("nope", "is not up"), ("bad name!", "node must be")):
        with pytest.raises(SubmissionError) as exc:
            submit(conn, validate_spec({"scenario": "480p-h264", "duration": 1, "node": bad}), d)
        assert exc.value.field == "node" and why in exc.value.message
    with pytest.raises(SubmissionError) as exc:
        submit(conn, validate_spec({"scenario": "480p-h264", "hwaccel": "nvenc", "node": "p1"}), d)
    assert exc.value.field == "node" and "nvenc" in exc.value.message
    # through the CLI, as the rolling update's canary is submitted
    res = run_cli(
        cluster,
        "jobs",
        "submit",
        "-s",
        "480p-h264",
        "--duration",
        "1",
        "--resolution",
        "64x64",
        "--node",
        "p1",
        "--wait",
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_recovery_requeues_a_pinned_job_whose_node_was_lost(cluster, conn):
    cluster.start_agent("k1")
    spec = validate_spec({"scenario": "live-4k", "duration": 30, "resolution": "64x64", "node": "k1"})
    job_id = submit(conn, spec, SubmitDefaults(max_attempts=3))["id"]
    wait_view(conn, job_id, lambda v: v["state"] == "running" and (v["progress"] or {}).get("frame", 0) > 0)
    for pid in ffmpeg_pids(job_id):
        os.kill(pid, signal.SIGSTOP)  # the whole node goes quiet
    proc, _ = cluster.agents.pop("k1")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    for pid in ffmpeg_pids(job_id):
        os.kill(pid, signal.SIGKILL)
    # the pinned queue is swept like the fixed ones: the attempt is abandoned, the job waits for k1
    v = wait_view(conn, job_id, lambda v: v["state"] == "retrying" or v["state"] == "queued", timeout=60)
    assert any(h.get("reason") in ("node_lost", "attempt_lost") for h in v["history"]), v["history"]
    cancel(conn, job_id)
    assert wait_view(conn, job_id, lambda v: v["state"] in TERMINAL)["state"] == "canceled"
