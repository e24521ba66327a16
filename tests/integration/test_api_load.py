"""The coordinator never blocks its event loop on Redis, every listing is bounded, and one
route table feeds the router, the auth check and the OpenAPI document."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from coordinator.openapi import openapi_spec
from coordinator.routes import ROUTES, role_needed
from ffrtmp.jobs import LIST_SCAN_LIMIT
from ffrtmp.model import validate_spec
from ffrtmp.submit import SubmitDefaults, submit
from tests.conftest import free_port, spawn_logged

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
KEY = "ffr_load_test_key_0123456789abcdef"


def _get(port: int, path: str, timeout: float = 60) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def test_health_stays_fast_while_twenty_unmatched_listings_run(conn, redis_server, tmp_path):
    spec = validate_spec({"scenario": "480p-h264", "duration": 1})
    jobs = 2 * LIST_SCAN_LIMIT + 500  # more than one request may look at
    for _ in range(jobs):
        submit(conn, spec, SubmitDefaults())
    port = free_port()
    proc = spawn_logged(
        tmp_path / "coordinator.log",
        [str(BIN / "ffrtmp-coordinator"), "--port", str(port), "--redis-url", redis_server],
        env={"FFRTMP_API_KEY": KEY},
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _get(port, "/health", 2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        results: list[tuple[int, dict]] = []

        def lister() -> None:
            # every job is queued on default: the queued index is read and nothing matches
            results.append(_get(port, "/jobs?limit=500&state=queued&queue=batch"))

        threads = [threading.Thread(target=lister) for _ in range(20)]
        for t in threads:
            t.start()
        worst = 0.0
        while any(t.is_alive() for t in threads):
            t0 = time.monotonic()
            assert _get(port, "/health", 30)[0] == 200
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.02)
        for t in threads:
            t.join()
        assert len(results) == 20
        for status, body in results:
            # nothing matched within the bounded scan: an empty page and where to go on from
            assert status == 200 and body["jobs"] == [] and body["next_cursor"] == str(LIST_SCAN_LIMIT)
        # a node's own index: a node that ran nothing answers an empty last page at once
        assert _get(port, "/jobs?node=no-such-node")[1] == {"jobs": [], "next_cursor": None}
        assert worst < 2.0, f"/health took {worst:.3f}s while 20 listings ran"
        print(f"/health worst {worst * 1000:.0f} ms during 20 concurrent unmatched listings of {jobs} jobs")
    finally:
        proc.terminate()
        proc.wait(30)


def test_one_route_table_feeds_router_auth_and_openapi():
    from coordinator.app import build_app
    from coordinator.config import CoordinatorConfig
    from ffrtmp.auth import KeyRing

    app = build_app(
        CoordinatorConfig(redis_url="", keys=KeyRing([]), defaults=SubmitDefaults(), run_recovery=False),
        conn=None,  # type: ignore[arg-type]
    )
    registered = {
        (r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD" and r.resource
    }
    table = {(r.method, r.path) for r in ROUTES}
    assert registered == table
    spec = openapi_spec()
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert documented == {(r.method, r.path) for r in ROUTES if not r.console}  # HTML is not the API
    assert {r.path for r in ROUTES if r.console} >= {"/ui/login", "/ui/jobs/{id}"}
    for r in (r for r in ROUTES if not r.console):
        op = spec["paths"][r.path][r.method.lower()]
        assert op["summary"] == r.summary and op["operationId"] == r.operation_id
        assert (op.get("security") == []) is (r.role is None) is (role_needed(r.method, r.path) is None)
    assert role_needed("GET", "/not/a/route") == "viewer"
