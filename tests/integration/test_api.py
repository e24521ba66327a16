"""The API over real HTTP against `ffrtmp up` (real coordinator, agent, redis-server, ffmpeg)."""

import json
import re
import urllib.error
import urllib.request

import pytest
import redis

from tests.unit.test_model import HOSTILE

pytestmark = pytest.mark.integration


def call(fleet, method, path, body=None, key="default", raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(fleet.url + path, data=data, method=method)
    if key == "default":
        key = fleet.api_key
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def redis_conn(fleet):
    return redis.Redis(unix_socket_path=str(fleet.state / "redis" / "redis.sock"))


def enqueued_count(fleet):
    c = redis_conn(fleet)
    return c.zcard("ffrtmp:jobs"), sum(c.llen(k) for k in c.keys("rq:queue:*"))


def test_health_is_open_everything_else_needs_a_key(fleet):
    assert call(fleet, "GET", "/health", key=None)[0] == 200
    for method, path in [
        ("GET", "/jobs"),
        ("POST", "/jobs"),
        ("GET", "/nodes"),
        ("GET", "/queues"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/ready"),
        ("GET", "/jobs/jx"),
        ("POST", "/jobs/jx/cancel"),
    ]:
        status, body = call(fleet, method, path, body={"scenario": "720p-h264"}, key=None)
        assert status == 401 and body["error"]["code"] == "unauthorized", (method, path)
        status, body = call(fleet, method, path, body={"scenario": "720p-h264"}, key="ffr_wrong")
        assert status == 401, (method, path)


@pytest.mark.parametrize(("body", "field"), HOSTILE)
def test_hostile_submissions_get_422_and_nothing_is_enqueued(fleet, body, field):
    before = enqueued_count(fleet)
    status, resp = call(fleet, "POST", "/jobs", body)
    assert status == 422, resp
    assert resp["error"]["field"] == field and resp["error"]["message"]
    assert enqueued_count(fleet) == before


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1,2]", b"null", b'"str"', b"\xff\xfe"])
def test_malformed_bodies(fleet, raw):
    before = enqueued_count(fleet)
    status, resp = call(fleet, "POST", "/jobs", raw=raw)
    assert status in (400, 422) and "error" in resp
    assert enqueued_count(fleet) == before


def test_oversized_body_is_refused(fleet):
    status, resp = call(fleet, "POST", "/jobs", raw=b'{"scenario": "' + b"a" * 100_000 + b'"}')
    assert status == 413 and resp["error"]["code"] == "body_too_large"


def test_query_parameters_are_validated(fleet):
    assert call(fleet, "GET", "/jobs?state=bogus")[1]["error"]["field"] == "state"
    assert call(fleet, "GET", "/jobs?limit=0")[1]["error"]["field"] == "limit"
    assert call(fleet, "GET", "/jobs?queue=urgent")[1]["error"]["field"] == "queue"
    assert call(fleet, "GET", "/jobs/doesnotexist")[0] == 404


def test_openapi_is_valid_openapi3_and_names_every_route(fleet):
    status, spec = call(fleet, "GET", "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    for path in [
        "/jobs",
        "/jobs/{id}",
        "/jobs/{id}/logs",
        "/jobs/{id}/cancel",
        "/nodes",
        "/nodes/{id}",
        "/queues",
        "/health",
        "/ready",
        "/metrics",
    ]:
        assert path in spec["paths"], path
    assert "JobSpec" in spec["components"]["schemas"]
    assert set(spec["components"]["schemas"]["JobSpec"]["properties"]) >= {"scenario", "queue", "priority"}
    from openapi_spec_validator import validate

    validate(spec)


def test_submit_get_list_logs_and_pagination(fleet):
    ids = []
    for _ in range(3):
        status, job = call(
            fleet,
            "POST",
            "/jobs",
            {
                "scenario": "480p-h264",
                "duration": 1,
                "resolution": "320x240",
                "queue": "batch",
                "priority": "low",
                "labels": {"suite": "api"},
            },
        )
        assert status == 201 and job["state"] in ("queued", "running")
        ids.append(job["id"])
    status, page1 = call(fleet, "GET", "/jobs?limit=2")
    assert status == 200 and len(page1["jobs"]) == 2 and page1["next_cursor"]
    status, page2 = call(fleet, "GET", f"/jobs?limit=2&cursor={page1['next_cursor']}")
    seen = [j["id"] for j in page1["jobs"] + page2["jobs"]]
    assert len(seen) == len(set(seen)) and set(ids) <= set(seen)
    from tests.e2e.test_cli import wait_terminal

    for jid in ids:
        job = wait_terminal(fleet, jid)
        assert job["state"] == "completed", job
        for key in (
            "id",
            "state",
            "scenario",
            "queue",
            "priority",
            "node",
            "attempts",
            "progress",
            "history",
            "error",
            "created_at",
            "started_at",
            "ended_at",
            "output",
        ):
            assert key in job
        assert [h["to"] for h in job["history"]] == ["queued", "running", "completed"]
    status, done = call(fleet, "GET", "/jobs?state=completed&queue=batch")
    assert {j["id"] for j in done["jobs"]} >= set(ids)
    status, logs = call(fleet, "GET", f"/jobs/{ids[0]}/logs")
    assert status == 200 and "1" in logs["attempts"]


def test_nodes_and_queues(fleet):
    status, nodes = call(fleet, "GET", "/nodes")
    assert status == 200 and len(nodes["nodes"]) == 1
    node = nodes["nodes"][0]
    assert node["state"] == "alive" and node["encoders"]["libx264"] is True
    assert node["ffmpeg_version"].startswith("ffmpeg version")
    status, one = call(fleet, "GET", f"/nodes/{node['name']}")
    assert status == 200 and one["name"] == node["name"]
    assert call(fleet, "GET", "/nodes/nope")[0] == 404
    status, queues = call(fleet, "GET", "/queues")
    names = [q["name"] for q in queues["queues"]]
    assert names[:9] == [
        "live.high",
        "live.medium",
        "live.low",
        "default.high",
        "default.medium",
        "default.low",
        "batch.high",
        "batch.medium",
        "batch.low",
    ]


def test_metrics_exposition(fleet):
    assert call(fleet, "POST", "/jobs", {"scenario": "480p-h264", "duration": 1})[0] == 201
    req = urllib.request.Request(fleet.url + "/metrics", headers={"Authorization": f"Bearer {fleet.api_key}"})
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    for name in (
        "rq_jobs{",
        "ffrtmp_nodes{",
        "ffrtmp_queue_oldest_job_age_seconds{",
        "ffrtmp_jobs_submitted_total{",
        "ffrtmp_coordinator_build_info{",
    ):
        assert name in text, name
    agent = (
        urllib.request.urlopen(f"http://127.0.0.1:{fleet.metrics_port}/metrics", timeout=10).read().decode()
    )
    assert re.search(r'^ffrtmp_agent_slots\{node="[^"]+"\} 2\.0$', agent, re.M)
    assert re.search(
        r'^ffrtmp_agent_encoder_up\{encoder="libx264",family="cpu",node="[^"]+"\} 1\.0$', agent, re.M
    )
    ready = json.loads(
        urllib.request.urlopen(f"http://127.0.0.1:{fleet.metrics_port}/ready", timeout=10).read()
    )
    assert ready["ready"] is True
