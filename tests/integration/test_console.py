"""The web console in a real headless Chromium against a real coordinator and agent: log in,
watch a running job's progress move without a reload, cancel it, see it canceled; a viewer
sees no buttons and no secrets; the session cookie's flags and the CSRF check, over plain
HTTP. Screenshots of every page land in dist/test-artifacts/console/."""

from __future__ import annotations

import http.cookiejar
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import redis

from ffrtmp.auth import key_line, new_key
from tests.browser import Browser
from tests.conftest import BIN, ROOT, agent_argv, free_port, spawn_logged, wait_agent_ready

pytestmark = pytest.mark.integration
SHOTS = ROOT / "dist" / "test-artifacts" / "console"
MAIN_TEXT = "document.querySelector('main').innerText"
PROGRESS = "document.querySelector('progress')"


@pytest.fixture(scope="module")
def site(redis_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    # the session's Redis may hold other tests' queued jobs; the one slot must see only ours
    redis.Redis.from_url(redis_server).flushall()
    keys = {role: new_key() for role in ("viewer", "operator", "admin")}
    (tmp / "keys").write_text("".join(key_line(f"k-{r}", r, k) + "\n" for r, k in keys.items()))
    port = free_port()
    coord = spawn_logged(
        tmp / "coordinator.log",
        [
            str(BIN / "ffrtmp-coordinator"),
            *("--port", str(port), "--redis-url", redis_server, "--api-keys-file", str(tmp / "keys")),
            *("--heartbeat-interval", "2s", "--scheduler-interval", "1s"),
        ],
    )
    mport = free_port()
    agent = spawn_logged(
        tmp / "agent.log",
        agent_argv(
            redis_server,
            "web-1",
            mport,
            tmp / "work",
            "--slots",
            "1",
            "--live-slots",
            "0",
            "--heartbeat-interval",
            "2s",
        ),
    )
    wait_agent_ready(mport, agent, tmp / "agent.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            assert time.monotonic() < deadline, (tmp / "coordinator.log").read_text()[-2000:]
            time.sleep(0.1)
    yield url, keys, tmp
    for p in (agent, coord):
        p.terminate()
        p.wait(30)


def api(url: str, key: str, method: str = "GET", body: dict | None = None) -> dict:
    req = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait_running(url: str, key: str, job_id: str, logs: Path) -> None:
    """Until the agent runs the job (its log in the failure when it never does)."""
    deadline = time.monotonic() + 120
    while (view := api(url + f"/jobs/{job_id}", key))["state"] != "running":
        if time.monotonic() > deadline:
            tails = "".join(p.read_text()[-3000:] for p in sorted(logs.glob("*.log")))
            raise AssertionError(f"job never ran: {view}\n{tails}")
        time.sleep(0.2)


def login(b: Browser, url: str, key: str) -> None:
    b.send("Network.clearBrowserCookies")
    b.open(url + "/ui/login")
    b.eval(f"document.getElementById('key').value = {json.dumps(key)}")
    b.eval("document.querySelector('form.login').submit()")
    b.wait_for("location.pathname === '/ui/fleet'")
    b.wait_for("document.readyState === 'complete'")


def test_an_operator_watches_a_job_move_and_cancels_it_and_a_viewer_gets_no_buttons(site, tmp_path):
    url, keys, logs = site
    job = api(
        url + "/jobs",
        keys["operator"],
        "POST",
        {"scenario": "live-4k", "duration": 40, "resolution": "64x64", "output": "console.ts"},
    )
    # an address literal: refused by the URL policy at once, with no DNS lookup to wait for
    secret = "http://user:hunter2@192.0.2.10/master.mp4?token=abc123"
    leaky = api(url + "/jobs", keys["operator"], "POST", {"scenario": "480p-h264", "input": secret})
    b = Browser(tmp_path)
    try:
        b.open(url + "/ui/fleet")  # no session: the login form
        b.wait_for("location.pathname === '/ui/login'")
        b.screenshot(SHOTS / "login.png")
        login(b, url, keys["operator"])
        b.wait_for(MAIN_TEXT + ".includes('web-1')")
        b.screenshot(SHOTS / "fleet.png")
        cookies = {c["name"]: c for c in b.send("Network.getCookies")["cookies"]}
        c = cookies["ffrtmp_session"]
        assert c["httpOnly"] and c["sameSite"] == "Strict" and keys["operator"] not in c["value"]
        b.open(url + "/ui/queues")
        b.wait_for("document.querySelector('table') !== null")
        b.screenshot(SHOTS / "queues.png")
        wait_running(url, keys["viewer"], job["id"], logs)
        b.open(url + f"/ui/jobs/{job['id']}")
        b.eval("window.notReloaded = true")
        first = b.wait_for(f"({PROGRESS} || {{}}).value", timeout=180)
        later = b.wait_for(
            f"({PROGRESS} || {{}}).value > {first} + 2 && {PROGRESS}.value",
            timeout=60,
        )
        assert later > first and b.eval("window.notReloaded === true")  # <main> was refreshed in place
        assert "fps" in b.eval("document.querySelector('.progress').innerText")
        b.screenshot(SHOTS / "job-running.png")
        b.open(url + "/ui/jobs?state=running")
        b.wait_for(f"document.querySelector('main').innerText.includes({json.dumps(job['id'])})")
        b.screenshot(SHOTS / "jobs.png")
        b.open(url + f"/ui/jobs/{job['id']}")
        b.eval("document.querySelector('form[action$=\"/cancel\"] button').click()")
        b.wait_for("document.querySelector('.notice') !== null")
        b.wait_for("document.querySelector('.state').innerText === 'canceled'", timeout=60)
        assert api(url + f"/jobs/{job['id']}", keys["operator"])["state"] == "canceled"
        b.screenshot(SHOTS / "job-canceled.png")
        # a viewer: the same pages, no action buttons, no secrets
        login(b, url, keys["viewer"])
        b.wait_for("document.querySelector('main').innerText.includes('web-1')")
        assert b.eval("document.querySelectorAll('main form.inline').length") == 0
        b.open(url + f"/ui/jobs/{job['id']}")
        assert b.eval("document.querySelectorAll('main form.inline').length") == 0
        b.open(url + f"/ui/jobs/{leaky['id']}")
        text = b.eval("document.documentElement.outerHTML")
        assert "hunter2" not in text and "abc123" not in text and "192.0.2.10" in text
        b.screenshot(SHOTS / "job-viewer.png")
        b.send("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2, mobile=True)
        b.open(url + "/ui/jobs")
        assert b.eval("document.documentElement.scrollWidth <= window.innerWidth + 1")  # no sideways page
        b.screenshot(SHOTS / "jobs-phone.png")
        b.eval("document.querySelector('form.logout').submit()")
        b.wait_for("location.pathname === '/ui/login'")
        b.open(url + "/ui/fleet")
        b.wait_for("location.pathname === '/ui/login'")  # the session is gone
    finally:
        b.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_a, **_k):  # type: ignore[no-untyped-def]
        return None


def test_actions_need_the_session_csrf_token_and_an_operator(site):
    url, keys, _ = site
    job = api(
        url + "/jobs", keys["operator"], "POST", {"scenario": "480p-h264", "node": "web-1", "duration": 30}
    )
    jar = http.cookiejar.CookieJar()
    web = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect)

    def post(path: str, form: dict) -> tuple[int, str]:
        data = urllib.parse.urlencode(form).encode()
        try:
            with web.open(urllib.request.Request(url + path, data=data, method="POST"), timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def page(path: str) -> tuple[int, str]:
        try:
            with web.open(url + path, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    status, body = post("/ui/login", {"key": "ffr_not_a_key_at_all_0000000000000"})
    assert status == 401 and "not valid" in body and not list(jar)
    assert post("/ui/login", {"key": keys["viewer"]})[0] == 303
    status, body = page("/ui/fleet")
    assert status == 200 and "web-1" in body
    csrf = body.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    assert post(f"/ui/jobs/{job['id']}/cancel", {"csrf": csrf})[0] == 403  # a viewer may not
    jar.clear()
    assert post("/ui/login", {"key": keys["operator"]})[0] == 303
    _, body = page("/ui/fleet")
    csrf = body.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    assert post(f"/ui/jobs/{job['id']}/cancel", {})[0] == 403  # no token: a forged form
    assert post(f"/ui/jobs/{job['id']}/cancel", {"csrf": "x" + csrf})[0] == 403
    assert api(url + f"/jobs/{job['id']}", keys["viewer"])["state"] != "canceled"
    status, _ = post(f"/ui/jobs/{job['id']}/cancel", {"csrf": csrf})
    assert status == 303
    deadline = time.monotonic() + 60
    while api(url + f"/jobs/{job['id']}", keys["viewer"])["state"] != "canceled":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert post("/ui/nodes/web-1/drain", {"csrf": csrf})[0] == 303
    assert api(url + "/nodes/web-1", keys["viewer"])["state"] == "draining"
    assert post("/ui/nodes/web-1/undrain", {"csrf": csrf})[0] == 303
    assert post("/ui/nodes/nope/drain", {"csrf": csrf})[0] == 404
    assert page("/ui/jobs?label=bad")[0] == 422
    assert page("/ui/jobs/jnotajob000")[0] == 404
    req = urllib.request.Request(url + "/ui/fleet", headers={"X-Fragment": "1"})
    with web.open(req, timeout=10) as r:
        part = r.read().decode()
        assert "<html" not in part and "<h1>Fleet</h1>" in part
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert "/ui" not in json.dumps(api(url + "/openapi.json", keys["viewer"])["paths"])  # HTML is not the API
