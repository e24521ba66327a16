"""Webhooks against real HTTP receivers and a real coordinator: signed, retried after a 503,
never sent again after a success, a 4xx is final, an inside address is never contacted, and
what became of each delivery is in the job's view."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections import Counter

import pytest

from coordinator.webhooks import verify
from ffrtmp import keys, lifecycle
from ffrtmp.jobs import get_view
from ffrtmp.lifecycle import Ending
from ffrtmp.nodes import write_heartbeat
from tests.conftest import BIN, free_port, spawn_logged
from tests.integration.test_lifecycle import _pop_and_claim, _submit

pytestmark = pytest.mark.integration
SECRET = "whsec-test-0123456789"


class _Receiver(http.server.BaseHTTPRequestHandler):
    got: list[tuple[str, dict[str, str], bytes]]
    answers: dict[str, list[int]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.got.append((self.path.split("?")[0], dict(self.headers), body))
        plan = self.answers.get(self.path.split("?")[0], [200])
        status = plan.pop(0) if len(plan) > 1 else plan[0]
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_a: object) -> None:
        pass


def _receiver(host: str, answers: dict[str, list[int]]):
    got: list = []
    handler = type("R", (_Receiver,), {"got": got, "answers": answers})
    srv = http.server.ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, got


def _wait(what, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return value


def test_deliveries_are_signed_retried_on_5xx_final_on_4xx_and_never_sent_inside(
    conn, redis_server, tmp_path
):
    srv, got = _receiver("127.0.0.1", {"/fleet": [503, 200], "/gone": [410]})
    inside, inside_got = _receiver("127.0.0.2", {})  # loopback too, not opened to webhooks
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    port = free_port()
    coord = spawn_logged(
        tmp_path / "coordinator.log",
        [
            str(BIN / "ffrtmp-coordinator"),
            *("--port", str(port), "--redis-url", redis_server, "--scheduler-interval", "1s"),
            *("--webhook-secret", SECRET, "--webhook-url", f"{base}/fleet"),
            # the fleet's URLs may be anywhere on loopback, a job's callback only on 127.0.0.1
            *("--allow-webhook-network", "127.0.0.0/8", "--allow-callback-network", "127.0.0.1/32"),
            *("--webhook-retry-base", "0.5s"),
        ],
        {"FFRTMP_API_KEY": "ffr_webhook_test_key_0123456789"},
    )
    try:
        _wait(lambda: conn.get(keys.WEBHOOKS_CURSOR))  # the first scan happened
        done = _submit(conn, callback_url=f"{base}/job?token=s3cr3t")
        lease, _ = _pop_and_claim(conn, done)
        lifecycle.finish(conn, lease, Ending("completed", "ffmpeg_exit_0", "ok"))
        gone = _submit(conn, callback_url=f"{base}/gone")
        lifecycle.cancel(conn, gone, "test")
        walled = _submit(conn, callback_url=f"http://127.0.0.2:{inside.server_address[1]}/inside")
        lifecycle.cancel(conn, walled, "test")

        def settled(jid: str, n: int) -> list[dict]:
            hooks = get_view(conn, jid)["webhooks"]
            return (
                hooks
                if len(hooks) == n
                and all(h["status"] != "pending" and h["status"] != "retrying" for h in hooks)
                else []
            )

        by_url = {h["url"]: h for h in _wait(lambda: settled(done, 2))}
        assert by_url[f"{base}/fleet"]["status"] == "delivered"
        job_hook = next(h for u, h in by_url.items() if u.startswith(f"{base}/job"))
        assert (
            job_hook["status"] == "delivered"
            and job_hook["attempts"] == 1
            and "s3cr3t" not in job_hook["url"]
        )
        gone_hooks = {h["url"]: h for h in _wait(lambda: settled(gone, 2))}
        assert (
            gone_hooks[f"{base}/gone"]["status"] == "failed"
            and gone_hooks[f"{base}/gone"]["last_status"] == "410"
        )
        walled_hooks = [h for h in _wait(lambda: settled(walled, 2)) if "inside" in h["url"]]
        assert (
            walled_hooks[0]["status"] == "failed"
            and walled_hooks[0]["last_status"] == "destination_not_allowed"
        )
        time.sleep(4)  # several more passes: nothing is sent again
        assert inside_got == []
        # three jobs' ends to /fleet, sent side by side: whichever came first got the 503 and
        # was sent once more, then never again; the others once
        per_delivery = Counter(g[1]["X-Ffrtmp-Delivery"] for g in got if g[0] == "/fleet")
        assert sorted(per_delivery.values()) == [1, 1, 2]
        fleet_done = [g for g in got if g[0] == "/fleet" and json.loads(g[2])["job"]["id"] == done]
        assert len([g for g in got if g[0] == "/gone"]) == 1  # a 4xx is final
        for _, headers, body in got:
            assert verify(SECRET, headers["X-Ffrtmp-Signature"], body, time.time())
            assert not verify("another-secret", headers["X-Ffrtmp-Signature"], body, time.time())
            assert not verify(SECRET, headers["X-Ffrtmp-Signature"], body + b" ", time.time())
            assert not verify(SECRET, headers["X-Ffrtmp-Signature"], body, time.time() + 3600)  # a replay
            assert b"s3cr3t" not in body
        event = json.loads(fleet_done[-1][2])
        assert event["event"] == "job.completed" and event["job"]["state"] == "completed"
        assert fleet_done[-1][1]["X-Ffrtmp-Event"] == "job.completed"
    finally:
        coord.terminate()
        coord.wait(20)
        srv.shutdown()
        inside.shutdown()


def test_node_down_is_sent_once_and_a_broken_delivery_holds_up_nothing(conn, redis_server, tmp_path):
    srv, got = _receiver("127.0.0.1", {})
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    coord = spawn_logged(
        tmp_path / "coordinator.log",
        [
            str(BIN / "ffrtmp-coordinator"),
            *("--port", str(free_port()), "--redis-url", redis_server, "--scheduler-interval", "1s"),
            *("--webhook-secret", SECRET, "--webhook-url", f"{base}/fleet"),
            *("--allow-webhook-network", "127.0.0.1/32", "--heartbeat-interval", "1s"),
        ],
        {"FFRTMP_API_KEY": "ffr_webhook_test_key_0123456789"},
    )
    try:
        _wait(lambda: conn.get(keys.WEBHOOKS_CURSOR))
        # a delivery record that is not one, due before everything else
        conn.hset(keys.delivery_key("broken"), mapping={"url": "x"})
        conn.zadd(keys.WEBHOOKS_DUE, {"broken": 0, b"\xff\xfe": 0})  # and an id that is not UTF-8
        conn.xadd(keys.EVENTS, {"job": "jnosuchjob", "state": "canceled", "at": "x"})  # unreadable
        write_heartbeat(conn, {"name": "gone-1", "slots": 2, "slots_busy": 0})  # then never again
        jobs = [_submit(conn) for _ in range(30)]
        for jid in jobs:  # ends written by the lifecycle: every one becomes a delivery
            lifecycle.cancel(conn, jid, "test")

        def events() -> list[dict]:
            return [json.loads(b) for p, _, b in got if p == "/fleet"]

        _wait(lambda: len([e for e in events() if e["event"] == "job.canceled"]) == 30)
        _wait(lambda: [e for e in events() if e["event"] == "node.down"])
        time.sleep(4)  # more passes and node checks: nothing again
        downs = [e for e in events() if e["event"] == "node.down"]
        assert len(downs) == 1 and downs[0]["node"]["name"] == "gone-1"
        assert sorted(e["job"]["id"] for e in events() if e["event"] == "job.canceled") == sorted(jobs)
        assert not conn.exists(keys.delivery_key("broken"))
        assert conn.zscore(keys.WEBHOOKS_DUE, "broken") is None and conn.zcard(keys.WEBHOOKS_DUE) == 0
        write_heartbeat(conn, {"name": "gone-1", "slots": 2, "slots_busy": 0})  # back, then down again
        _wait(lambda: not conn.hexists(keys.WEBHOOKS_NODES_DOWN, "gone-1"))
        _wait(lambda: len([e for e in events() if e["event"] == "node.down"]) == 2)
    finally:
        coord.terminate()
        coord.wait(20)
        srv.shutdown()


def test_each_end_is_told_once_with_its_own_content_and_two_leaders_tell_an_outage_once(conn):
    """Ended, retried and ended again before a scan: one delivery, for the end the job is in
    (the first end is gone: its content cannot be told). Two coordinators scanning side by
    side (a lease handover) make one node.down between them, not two."""
    from coordinator.webhooks import WebhookConfig, Webhooks

    cfg = WebhookConfig(SECRET, ["https://hooks.example.com/x"])
    a, b = Webhooks(conn, cfg, heartbeat_timeout_s=5), Webhooks(conn, cfg, heartbeat_timeout_s=5)
    assert a.scan() == 0  # the first scan: from now on
    jid = _submit(conn)
    lifecycle.cancel(conn, jid, "first")
    lifecycle.retry(conn, jid, "test")
    lifecycle.cancel(conn, jid, "second")
    assert a.scan() == 1 and b.scan() == 0
    (hook,) = get_view(conn, jid)["webhooks"]
    body = json.loads(conn.hget(keys.delivery_key(hook["delivery"]), "body"))
    assert "second" in body["job"]["error"]["message"]
    write_heartbeat(conn, {"name": "n-down", "slots": 1})
    conn.zadd(keys.NODES_INDEX, {"n-down": time.time() - 60})
    blob = json.loads(conn.get(keys.node_key("n-down")))
    conn.set(keys.node_key("n-down"), json.dumps({**blob, "last_heartbeat": time.time() - 60}))
    conn.hset(keys.NODE_SUMMARY, "n-down", json.dumps([time.time() - 60, 1, 0, False, False]))
    a._nodes_checked = b._nodes_checked = 0.0
    assert a.scan() + b.scan() == 1
