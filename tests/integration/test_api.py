"""The API over real HTTP against `ffrtmp up` (real coordinator, agent, redis-server, ffmpeg)."""

import json
import re
import time
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


def test_a_job_pinned_to_a_node_that_is_not_up_is_refused_naming_the_field(fleet):
    status, body = call(fleet, "POST", "/jobs", body={"scenario": "480p-h264", "node": "no-such-node"})
    assert status == 422 and body["error"]["field"] == "node" and "not up" in body["error"]["message"]


def test_a_callback_url_is_refused_where_no_webhook_secret_signs_deliveries(fleet):
    status, body = call(
        fleet, "POST", "/jobs", body={"scenario": "480p-h264", "callback_url": "https://h.example/x"}
    )
    assert (
        status == 422
        and body["error"]["field"] == "callback_url"
        and "no webhooks" in body["error"]["message"]
    )


def test_health_and_ready_are_open_everything_else_needs_a_key(fleet):
    assert call(fleet, "GET", "/health", key=None)[0] == 200
    # load balancers check readiness with no key: the answer says up or down, nothing more
    assert call(fleet, "GET", "/ready", key=None) == (200, {"ready": True})
    for method, path in [
        ("GET", "/jobs"),
        ("POST", "/jobs"),
        ("GET", "/nodes"),
        ("GET", "/queues"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
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


def _post(fleet, path, body, headers=None):
    req = urllib.request.Request(fleet.url + path, data=json.dumps(body).encode(), method="POST")
    req.add_header("Authorization", f"Bearer {fleet.api_key}")
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def submitted_count(fleet):
    """Jobs ever submitted (the job index only grows on submit; the queues shrink as the
    fleet's agent takes jobs, so they cannot say whether a refused request queued any)."""
    return redis_conn(fleet).zcard("ffrtmp:jobs")


def test_an_idempotency_key_makes_one_job_however_often_and_concurrently_it_is_sent(fleet):
    from concurrent.futures import ThreadPoolExecutor

    body = {"scenario": "480p-h264", "duration": 1, "resolution": "64x64", "labels": {"t": "idem"}}
    with ThreadPoolExecutor(8) as pool:
        key = {"Idempotency-Key": "race-1"}
        answers = list(pool.map(lambda _: _post(fleet, "/jobs", body, key), range(8)))
    assert sorted(a[0] for a in answers) == [200] * 7 + [201], [a[0] for a in answers]
    assert len({a[1]["id"] for a in answers}) == 1
    assert all(a[2].get("Idempotent-Replayed") == "true" for a in answers if a[0] == 200)
    status, again, _ = _post(fleet, "/jobs", body, {"Idempotency-Key": "race-1"})
    assert status == 200 and again["id"] == answers[0][1]["id"]
    status, err, _ = _post(fleet, "/jobs", {**body, "duration": 2}, {"Idempotency-Key": "race-1"})
    assert status == 409 and err["error"]["field"] == "Idempotency-Key"
    for bad in ("has space", "x" * 129, "é"):
        status, err, _ = _post(fleet, "/jobs", body, {"Idempotency-Key": bad})
        assert status == 400 and err["error"]["field"] == "Idempotency-Key", bad


def test_a_batch_is_queued_whole_in_order_or_not_at_all(fleet):
    tiny = {"scenario": "480p-h264", "duration": 1, "resolution": "64x64"}
    specs = [{**tiny, "labels": {"n": str(i)}} for i in range(3)]
    status, body, _ = _post(fleet, "/jobs/batch", {"jobs": specs})
    assert status == 201 and [j["labels"]["n"] for j in body["jobs"]] == ["0", "1", "2"], body
    assert all(j["state"] == "queued" for j in body["jobs"])
    assert all(call(fleet, "GET", f"/jobs/{j['id']}")[0] == 200 for j in body["jobs"])
    before = submitted_count(fleet)
    for bad, field in [
        ({"jobs": [tiny, {**tiny, "scenario": "nope"}, tiny]}, "jobs[1].scenario"),
        ({"jobs": [{**tiny, "node": "no-such-node"}, tiny]}, "jobs[0].node"),
        ({"jobs": [tiny, {**tiny, "input": "../etc/passwd"}]}, "jobs[1].input"),
        ({"jobs": []}, "jobs"),
        ({"jobs": [tiny] * 1001}, "jobs"),
        ({"jobs": [tiny], "extra": 1}, "jobs"),
        ([tiny], "jobs"),
    ]:
        status, err, _ = _post(fleet, "/jobs/batch", bad)
        assert status == 422 and err["error"]["field"] == field, (field, err)
    assert submitted_count(fleet) == before  # nothing of a refused batch was queued
    status, first, _ = _post(fleet, "/jobs/batch", {"jobs": specs}, {"Idempotency-Key": "batch-1"})
    assert status == 201
    status, again, headers = _post(fleet, "/jobs/batch", {"jobs": specs}, {"Idempotency-Key": "batch-1"})
    assert status == 200 and headers["Idempotent-Replayed"] == "true"
    assert [j["id"] for j in again["jobs"]] == [j["id"] for j in first["jobs"]]
    status, err, _ = _post(fleet, "/jobs/batch", {"jobs": specs[:2]}, {"Idempotency-Key": "batch-1"})
    assert status == 409 and err["error"]["field"] == "Idempotency-Key"


def test_the_cli_submits_a_file_of_specs_in_batches(fleet, tmp_path):
    good = tmp_path / "specs.jsonl"
    good.write_text(
        "# one spec per line; the options fill in what a line leaves out\n"
        + "".join(json.dumps({"scenario": "480p-h264", "labels": {"n": str(i)}}) + "\n" for i in range(4))
    )
    res = fleet.cli("jobs", "submit", "--from-file", str(good), "--duration", "1", "--resolution", "64x64")
    assert res.returncode == 0 and "submitted 4 jobs" in res.stdout, res.stderr
    ids = res.stdout.split()[:4]
    views = [call(fleet, "GET", f"/jobs/{i}")[1] for i in ids]
    assert [v["labels"]["n"] for v in views] == ["0", "1", "2", "3"]
    assert all(v["spec"]["resolution"] == "64x64" and v["spec"]["duration"] == 1 for v in views)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"scenario": "480p-h264"}\n{"scenario": "nope"}\n')
    before = submitted_count(fleet)
    res = fleet.cli("jobs", "submit", "--from-file", str(bad))
    assert res.returncode == 2 and "job 2 of the file" in res.stderr and "Traceback" not in res.stderr
    assert submitted_count(fleet) == before
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"scenario": "480p-h264"}\nnot json\n')
    res = fleet.cli("jobs", "submit", "--from-file", str(broken))
    assert res.returncode == 2 and "line 2" in res.stderr and "Traceback" not in res.stderr


def test_malformed_requests_get_a_json_4xx_never_a_500(fleet):
    deep = ("[" * 1000) + ("]" * 1000)
    for raw, status in (
        (f'{{"scenario": {deep}}}'.encode(), 400),
        (b'{"scenario": "480p-h264", "duration": ' + b"9" * 5000 + b"}", 400),
        (b'{"scenario": "\\ud800"}', 422),
    ):
        got, body = call(fleet, "POST", "/jobs", raw=raw)
        assert got == status and "error" in body, (raw[:40], got, body)
    job = call(fleet, "POST", "/jobs", body={"scenario": "480p-h264", "duration": 1, "resolution": "64x64"})[
        1
    ]
    conn = redis_conn(fleet)
    for path in (f"/jobs/{job['id']}:x", f"/jobs/{job['id']}:x/cancel", "/jobs/j%0a", "/nodes/a%20b"):
        method = "POST" if path.endswith("cancel") else "GET"
        got, body = call(fleet, method, path)
        assert got == 404 and body["error"]["code"] == "not_found", (path, got, body)
    assert not [k for k in conn.keys("*") if f"{job['id']}:x".encode() in k]  # no alias wrote a key
    req = urllib.request.Request(fleet.url + "/jobs", method="TRACE")
    req.add_header("Authorization", f"Bearer {fleet.api_key}")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 405 and "GET" in exc.value.headers.get("Allow", ""), dict(exc.value.headers)


def test_queue_and_node_filters_read_their_own_indexes(fleet):
    tiny = {"scenario": "480p-h264", "duration": 1, "resolution": "64x64"}
    labelled = {**tiny, "queue": "batch", "labels": {"show": "ep 1", "team": "news"}}
    _, body, _ = _post(fleet, "/jobs/batch", {"jobs": [labelled, {**tiny, "labels": {"show": "ep 2"}}]})
    batch_job, default_job = (j["id"] for j in body["jobs"])
    for query, present, absent in [
        ("queue=batch", batch_job, default_job),
        ("queue=batch.medium", batch_job, default_job),
        ("queue=default", default_job, batch_job),
        ("label=show%3Dep+1", batch_job, default_job),
        ("label=show%3Dep+2&queue=default", default_job, batch_job),
        ("label=team%3Dnews&queue=default", None, batch_job),
    ]:
        ids = [j["id"] for j in call(fleet, "GET", f"/jobs?{query}&limit=500")[1]["jobs"]]
        assert (present is None or present in ids) and absent not in ids, query
    r = redis_conn(fleet)
    assert r.zscore("ffrtmp:jobs:label:team=news", batch_job)
    for bad in ("label=noequals", "label=1bad%3Dx", "label=k%3D" + "v" * 129):
        status, err = call(fleet, "GET", f"/jobs?{bad}")
        assert status == 422 and err["error"]["field"] == "label", bad
    assert r.zscore("ffrtmp:jobs:queue:batch", batch_job)
    assert r.zscore("ffrtmp:jobs:queue:batch.medium", batch_job)
    node = call(fleet, "GET", "/nodes")[1]["nodes"][0]["name"]
    deadline = time.monotonic() + 120
    done = lambda: call(fleet, "GET", f"/jobs/{default_job}")[1]["state"] == "completed"  # noqa: E731
    while time.monotonic() < deadline and not done():
        time.sleep(0.5)
    ids = [j["id"] for j in call(fleet, "GET", f"/jobs?node={node}&limit=500")[1]["jobs"]]
    assert default_job in ids and r.zscore(f"ffrtmp:jobs:node:{node}", default_job)
    assert call(fleet, "GET", "/jobs?node=no-such-node")[1] == {"jobs": [], "next_cursor": None}
