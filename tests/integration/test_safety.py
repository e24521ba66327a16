"""Whoever can write to Redis must not be able to run code on an agent."""

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
    # the agent is still healthy and still runs real work
    res = fleet.cli("jobs", "submit", "--scenario", "480p-h264", "--duration", "1", "--wait", timeout=120)
    assert res.returncode == 0, res.stderr
