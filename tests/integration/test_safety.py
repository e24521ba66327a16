"""Whoever can write to Redis must not be able to run code on an agent."""

import json
import time

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("serializer", [JSONSerializer, None], ids=["json", "pickle"])
def test_jobs_naming_other_functions_never_run(fleet, tmp_path, serializer):
    conn = redis.Redis(unix_socket_path=str(fleet.state / "redis" / "redis.sock"))
    marker = tmp_path / f"pwned-{serializer is None}"
    q = Queue("default.medium", connection=conn, serializer=serializer)
    job = q.enqueue("os.system", f"touch {marker}", retry=None)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = conn.hget(f"rq:job:{job.id}", "status")
        if status in (b"failed", b"finished"):
            break
        time.sleep(0.2)
    time.sleep(0.5)
    assert not marker.exists()
    assert conn.hget(f"rq:job:{job.id}", "status") == b"failed"
    if serializer is JSONSerializer:  # readable: refused for what it is, never retried
        meta = json.loads(conn.hget(f"rq:job:{job.id}", "meta"))
        assert meta["state"] == "rejected" and meta["error"]["reason"] == "unsafe_job", meta


def test_callbacks_named_in_redis_are_never_imported_or_called(fleet):
    """RQ imports a job's failure callback by the name its hash holds and calls it with the job
    and the Redis connection; an agent must not."""
    from rq import Callback

    conn = redis.Redis(unix_socket_path=str(fleet.state / "redis" / "redis.sock"))
    q = Queue("default.medium", connection=conn, serializer=JSONSerializer)
    job = q.enqueue("os.getcwd", on_failure=Callback("builtins.print"), retry=None)
    assert conn.hget(f"rq:job:{job.id}", "failure_callback_name") == b"builtins.print"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and conn.hget(f"rq:job:{job.id}", "status") != b"failed":
        time.sleep(0.2)
    assert conn.hget(f"rq:job:{job.id}", "status") == b"failed"
    time.sleep(0.5)
    printed = [ln for ln in (fleet.tmp / "up.log").read_text(errors="replace").splitlines() if job.id in ln]
    assert not any(ln.startswith(("Job(", "<Job")) or "ConnectionPool" in ln for ln in printed), printed
