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
    deadline = time.monotonic() + 60  # a Python start on an oversubscribed machine takes seconds
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((tmp_path / "coord.log").read_text(errors="replace")[-2000:]) from None
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
    from coordinator.config import CoordinatorConfig
    from coordinator.recovery import Recovery
    from ffrtmp.auth import KeyRing
    from ffrtmp.jobs import get_view
    from ffrtmp.keys import PENDING
    from ffrtmp.model import validate_spec
    from ffrtmp.rqjob import rq_queue
    from ffrtmp.submit import SubmitDefaults, submit

    cfg = CoordinatorConfig(redis_url="", keys=KeyRing([]), defaults=SubmitDefaults(), heartbeat_interval=1)
    rec = Recovery(conn, cfg, node_id="test")
    spec = validate_spec({"scenario": "480p-h264"})
    lost, waiting, started = (submit(conn, spec, SubmitDefaults())["id"] for _ in range(3))
    qkey = rq_queue("default.medium", conn).key
    conn.lrem(qkey, 0, lost)  # popped by a worker that was SIGKILLed before it registered the job
    conn.lrem(qkey, 0, started)
    conn.hset(f"rq:job:{started}", "status", "started")  # popped by a live worker that started it
    conn.set(f"ffrtmp:job:{started}:lease", "1|e|n|s")  # ... under its lease
    now = time.time() + 60  # all three are past the grace period
    assert rec.sweep_lost(now) == []  # first sight: only suspected
    assert rec.sweep_lost(now + 1) == []  # not yet confirmed
    assert rec.sweep_lost(now + 6) == [lost]
    assert [x.decode() for x in conn.lrange(qkey, 0, -1)] == [lost, waiting]  # at the front, once
    assert get_view(conn, lost)["history"][-1]["reason"] == "lost_in_dequeue"
    assert conn.zscore(PENDING, started) is not None  # claimed, not yet started: still watched
    assert rec.sweep_lost(now + 20) == [] and rec.sweep_lost(now + 40) == []  # never twice
    assert conn.lrange(qkey, 0, -1).count(lost.encode()) == 1


def test_nodes_are_listed_in_pages_by_name_and_filtered(coordinator, conn):
    url, keys = coordinator
    names = [f"n{i:02d}" for i in range(7)]
    for i, name in enumerate(names):
        enc = {"libx264": True, "h264_nvenc": i % 3 == 0}
        write_heartbeat(conn, {"name": name, "slots": 2, "encoders": enc})
    conn.set("ffrtmp:node:n05:drain", "1")
    conn.set(
        "ffrtmp:node:n06",
        json.dumps(
            {"name": "n06", "slots": 2, "encoders": {"h264_nvenc": True}, "last_heartbeat": time.time() - 600}
        ),
    )
    seen, cursor = [], ""
    while cursor is not None:
        status, page = req(url + f"/nodes?limit=3&cursor={cursor}", keys["viewer"])
        assert status == 200 and len(page["nodes"]) <= 3, page
        seen += [n["name"] for n in page["nodes"]]
        cursor = page["next_cursor"]
    assert seen == names

    def names_for(query):
        return [n["name"] for n in req(url + f"/nodes?{query}", keys["viewer"])[1]["nodes"]]

    assert names_for("state=dead") == ["n06"]
    assert names_for("draining=true") == ["n05"]
    assert names_for("encoder=h264_nvenc") == ["n00", "n03", "n06"]
    assert names_for("encoder=h264_nvenc&state=alive&limit=1") == ["n00"]
    for bad, field in [
        ("state=zombie", "state"),
        ("draining=yes", "draining"),
        ("limit=0", "limit"),
        ("cursor=../x", "cursor"),
        ("encoder=a%20b", "encoder"),
    ]:
        status, body = req(url + f"/nodes?{bad}", keys["viewer"])
        assert status == 422 and body["error"]["field"] == field, (bad, body)


def test_counters_start_at_zero_for_every_reason_and_count_queued_cancels(coordinator, conn):
    """The first requeue of a reason must be visible to increase(): every requeue reason and the
    common ends are exported at 0 before they ever occur; a cancel of a queued job is a finished
    job; a counter field Redis holds garbage in is left out, not a failed scrape."""
    url, keys = coordinator

    def metrics() -> str:
        r = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {keys['viewer']}"})
        with urllib.request.urlopen(r, timeout=10) as resp:
            return resp.read().decode()

    text = metrics()
    for reason in ("input_stalled", "node_lost", "output_disk_full", "redis_outage"):
        assert f'ffrtmp_job_requeues_total{{reason="{reason}"}} 0.0' in text, reason
    canceled = (
        'ffrtmp_jobs_finished_total{outcome="canceled",priority="medium",reason="canceled",tier="default"}'
    )
    assert f"{canceled} 0.0" in text
    _, job = req(url + "/jobs", keys["operator"], "POST", {"scenario": "480p-h264"})
    assert req(url + f"/jobs/{job['id']}/cancel", keys["operator"], "POST", {})[1]["outcome"] == "canceled"
    conn.hset("ffrtmp:stats:requeues", mapping={b"\xff\xfe": 1, "odd": "not-a-number"})
    text = metrics()
    assert f"{canceled} 1.0" in text and "ffrtmp_redis_up 1.0" in text
