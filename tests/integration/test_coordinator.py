"""The coordinator process on its own: flags, key file, roles, node liveness, the leader lease."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ffrtmp.auth import key_line, new_key
from ffrtmp.nodes import write_heartbeat
from tests.conftest import free_port

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def req(url, key, method="GET", body=None):
    r = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(r, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture()
def coordinator(conn, redis_server, tmp_path):
    keys = {role: new_key() for role in ("viewer", "operator", "admin")}
    keyfile = tmp_path / "keys"
    keyfile.write_text("# test keys\n" + "\n".join(key_line(f"k-{r}", r, k) for r, k in keys.items()) + "\n")
    port = free_port()
    log = open(tmp_path / "coord.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(BIN / "ffrtmp-coordinator"),
            "--port",
            str(port),
            "--redis-url",
            redis_server,
            "--api-keys-file",
            str(keyfile),
            "--max-retries",
            "5",
            "--scheduler-interval",
            "1s",
            "--heartbeat-interval",
            "2s",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin"},
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    yield url, keys
    proc.terminate()
    proc.wait(10)
    log.close()


def test_roles_from_the_key_file(coordinator):
    url, keys = coordinator
    body = {"scenario": "480p-h264", "duration": 1}
    status, err = req(url + "/jobs", keys["viewer"], "POST", body)
    assert status == 403 and err["error"]["code"] == "forbidden"
    assert req(url + "/jobs", keys["viewer"])[0] == 200
    assert req(url + "/jobs", keys["operator"], "POST", body)[0] == 201
    assert req(url + "/jobs", keys["admin"], "POST", body)[0] == 201


def test_max_retries_sets_the_default_attempts(coordinator):
    url, keys = coordinator
    status, job = req(url + "/jobs", keys["operator"], "POST", {"scenario": "480p-h264"})
    assert status == 201 and job["max_attempts"] == 6  # --max-retries 5: five requeues, six attempts
    status, job = req(url + "/jobs", keys["operator"], "POST", {"scenario": "480p-h264", "max_attempts": 2})
    assert job["max_attempts"] == 2


def test_heartbeat_interval_sets_when_a_node_is_dead(coordinator, conn):
    url, keys = coordinator
    write_heartbeat(conn, {"name": "fresh", "slots": 2})
    write_heartbeat(conn, {"name": "stale", "slots": 2})
    conn.set(
        "ffrtmp:node:stale", json.dumps({"name": "stale", "slots": 2, "last_heartbeat": time.time() - 7})
    )
    nodes = {n["name"]: n for n in req(url + "/nodes", keys["viewer"])[1]["nodes"]}
    # --heartbeat-interval 2s: dead after 3 missed = 6 s
    assert nodes["fresh"]["state"] == "alive" and nodes["stale"]["state"] == "dead"


def test_scheduler_interval_runs_the_recovery_loop_under_a_leader_lease(coordinator, conn):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not conn.get("ffrtmp:recovery:leader"):
        time.sleep(0.1)
    holder = conn.get("ffrtmp:recovery:leader")
    assert holder
    ttl = conn.pttl("ffrtmp:recovery:leader")
    assert 0 < ttl <= 5000  # lease = max(3 x 1 s, 5 s), renewed every tick
    time.sleep(1.5)
    assert conn.get("ffrtmp:recovery:leader") == holder and conn.pttl("ffrtmp:recovery:leader") > 3000


def test_bad_flags_and_key_files_fail_with_one_clear_line(tmp_path, redis_server):
    bad = tmp_path / "bad"
    bad.write_text("ops root sha256:nothex\n")
    for args, word in [
        (["--api-keys-file", str(bad)], "line 1"),
        (["--api-keys-file", str(tmp_path / "missing")], "cannot read"),
        ([], "no API keys"),
        (["--api-keys-file", str(bad), "--scheduler-interval", "soon"], "duration"),
    ]:
        res = subprocess.run(
            [str(BIN / "ffrtmp-coordinator"), "--redis-url", redis_server, *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": "/usr/bin:/bin"},
        )
        assert res.returncode == 2 and word in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_a_job_popped_by_a_worker_that_died_is_requeued_once_and_only_once(conn):
    from coordinator.app import CoordinatorConfig
    from coordinator.recovery import Recovery
    from ffrtmp.auth import KeyRing
    from ffrtmp.jobs import PENDING, SubmitDefaults, get_view, submit
    from ffrtmp.model import validate_spec
    from ffrtmp.rqjob import rq_queue

    cfg = CoordinatorConfig(redis_url="", keys=KeyRing([]), defaults=SubmitDefaults(), heartbeat_interval=1)
    rec = Recovery(conn, cfg, node_id="test")
    spec = validate_spec({"scenario": "480p-h264"})
    lost, waiting, started = (submit(conn, spec, SubmitDefaults())["id"] for _ in range(3))
    qkey = rq_queue("default.medium", conn).key
    conn.lrem(qkey, 0, lost)  # popped by a worker that was SIGKILLed before it registered the job
    conn.lrem(qkey, 0, started)
    conn.hset(f"rq:job:{started}", "status", "started")  # popped by a live worker that started it
    now = time.time() + 60  # all three are past the grace period
    assert rec.sweep_lost(now) == []  # first sight: only suspected
    assert rec.sweep_lost(now + 1) == []  # not yet confirmed
    assert rec.sweep_lost(now + 6) == [lost]
    assert [x.decode() for x in conn.lrange(qkey, 0, -1)] == [lost, waiting]  # at the front, once
    assert get_view(conn, lost)["history"][-1]["reason"] == "lost_in_dequeue"
    assert conn.zscore(PENDING, started) is None  # started jobs leave the pending index
    assert rec.sweep_lost(now + 20) == [] and rec.sweep_lost(now + 40) == []  # never twice
    assert conn.lrange(qkey, 0, -1).count(lost.encode()) == 1


def test_an_attempt_that_ended_before_its_worker_died_is_never_run_again(conn):
    """Real Redis and RQ: a worker (or its horse) dies between the attempt writing its outcome
    and telling RQ. RQ alone would call the job abandoned and requeue it (a retry left): a
    completed job would run again, a workload failure would be retried. The recovery loop and
    the worker record what the attempt said instead; an attempt that said nothing is requeued."""
    from agent.worker import FleetWorker
    from coordinator.app import CoordinatorConfig
    from coordinator.recovery import Recovery
    from ffrtmp.auth import KeyRing
    from ffrtmp.jobs import SubmitDefaults, get_view, history_entry, history_key, submit
    from ffrtmp.model import validate_spec
    from ffrtmp.rqjob import SERIALIZER, SafeJob, fetch_job, rq_queue

    cfg = CoordinatorConfig(redis_url="", keys=KeyRing([]), defaults=SubmitDefaults(), heartbeat_interval=1)
    rec = Recovery(conn, cfg, node_id="test")
    q = rq_queue("default.medium", conn)
    dead = FleetWorker(
        [q], name="dead.s0", connection=conn, job_class=SafeJob, serializer=SERIALIZER, prepare_for_work=False
    )

    def start_attempt(outcome: str | None, reason: str = ""):
        job_id = submit(conn, validate_spec({"scenario": "480p-h264"}), SubmitDefaults())["id"]
        conn.lrem(q.key, 0, job_id)  # dequeued by the worker that is about to die
        job = fetch_job(conn, job_id)
        execution = dead.prepare_execution(job)
        dead.prepare_job_execution(job)
        job.meta.update(attempt=1, node="dead", slot="s0")
        conn.rpush(history_key(job_id), history_entry("queued", "running", "started", "dead", 1))
        if outcome:  # what Attempt.end writes, and the last thing the attempt did
            job.meta.update(outcome=outcome, error=None if outcome == "completed" else {"reason": reason})
            conn.rpush(history_key(job_id), history_entry("running", outcome, reason, "dead", 1))
        job.save_meta()
        return job_id, job, execution

    done, _, _ = start_attempt("completed", "ffmpeg_exit_0")
    broken, _, _ = start_attempt("failed", "ffmpeg_error")
    silent, _, _ = start_attempt(None)
    horse_done, horse_job, horse_exec = start_attempt("completed", "ffmpeg_exit_0")

    # the worker lives, its horse died: RQ reports a failure ("work-horse terminated")
    dead.handle_job_failure(
        horse_job, q, exc_string="Work-horse terminated unexpectedly", execution=horse_exec
    )
    assert fetch_job(conn, horse_done).get_status() == "finished"
    # the worker died too: its executions expire (here: made to), and the recovery loop runs
    started = q.started_job_registry.key
    conn.zadd(started, {m: time.time() - 1 for m in conn.zrange(started, 0, -1)})
    assert rec.tick() > 0

    v = get_view(conn, done)
    assert v["state"] == "completed" and fetch_job(conn, done).get_status() == "finished"
    assert v["history"][-1]["to"] == "completed"
    v = get_view(conn, broken)
    assert v["state"] == "failed" and v["error"]["reason"] == "ffmpeg_error"
    assert [h["reason"] for h in v["history"]] == ["submitted", "started", "ffmpeg_error"], v["history"]
    v = get_view(conn, silent)
    assert v["state"] == "queued" and v["history"][-2]["reason"] == "node_lost"
    queued = [x.decode() for x in conn.lrange(q.key, 0, -1)]
    assert queued == [silent]  # only the attempt that never ended runs again
    assert conn.zcard(started) == 0
