"""The run's egress proxy with real FFmpeg and real HTTP(S) servers: every connection FFmpeg
opens for an HTTP(S) input is checked, redirects included, and HTTPS goes through it too."""

from __future__ import annotations

import http.server
import ssl
import threading
import time
from pathlib import Path

import pytest

from agent.egress import parse_request_head
from agent.outcome import classify_exit
from agent.pipeline import input_guard
from agent.runner import reap, spawn_supervisor, write_cmd
from ffrtmp.rundir import RunDir, read_json
from ffrtmp.tls import local_pki
from tests.conftest import make_clip, require

pytestmark = pytest.mark.integration


class _Site(http.server.SimpleHTTPRequestHandler):
    hits: list[str]
    redirects: dict[str, str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        if self.path in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *_a: object) -> None:
        pass


def _serve(root: Path, host: str, redirects: dict[str, str] | None = None, tls: ssl.SSLContext | None = None):
    hits: list[str] = []
    handler = type("Site", (_Site,), {"hits": hits, "redirects": redirects or {}})
    srv = http.server.ThreadingHTTPServer((host, 0), lambda *a: handler(*a, directory=str(root)))
    if tls is not None:
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, hits


def _run(tmp: Path, url: str, egress: list[str]) -> dict:
    """One FFmpeg run of ``url`` under a real supervisor, as an attempt starts it."""
    rd = RunDir.create(str(tmp / "work"), f"j{time.monotonic_ns()}", 1, "e", "lease")
    out = tmp / f"out{time.monotonic_ns()}.ts"
    argv = [require("ffmpeg"), "-hide_banner", "-nostdin", "-loglevel", "error", "-rw_timeout", "15000000"]
    argv += [*input_guard(url), "-i", url, "-c", "copy", "-f", "mpegts", str(out)]
    write_cmd(rd.path, argv, egress=egress)
    pid = spawn_supervisor(rd.path)
    deadline = time.monotonic() + 60
    while not reap(pid):
        assert time.monotonic() < deadline, "the run did not end"
        time.sleep(0.05)
    return read_json(rd.file("exit.json")) or {}


@pytest.fixture()
def sites(tmp_path):
    make_clip(tmp_path / "clip.mp4", seconds=1, size="64x64")
    inner, inner_hits = _serve(tmp_path, "127.0.0.2")  # loopback too, not opened to the jobs
    target = f"http://127.0.0.2:{inner.server_address[1]}/clip.mp4"
    outer, outer_hits = _serve(tmp_path, "127.0.0.1", {"/jump": target, "/here": "/clip.mp4"})
    yield f"http://127.0.0.1:{outer.server_address[1]}", outer_hits, inner_hits
    inner.shutdown()
    outer.shutdown()


def test_a_redirect_inside_is_refused_and_never_reaches_its_target(tmp_path, sites):
    base, outer_hits, inner_hits = sites
    ended = _run(tmp_path, f"{base}/jump", ["127.0.0.1/32"])
    assert outer_hits == ["/jump"] and inner_hits == []  # the redirect's target was never asked
    assert [(r["host"], r["unresolvable"]) for r in ended["egress_refused"]] == [("127.0.0.2", False)]
    verdict = classify_exit(ended, None, "", 5)
    assert (verdict.outcome, verdict.reason, verdict.message) == (
        "rejected",
        "destination_not_allowed",
        "destination not allowed",
    )


def test_an_allowed_redirect_and_a_direct_fetch_go_through(tmp_path, sites):
    base, outer_hits, _ = sites
    for path in ("/here", "/clip.mp4"):
        ended = _run(tmp_path, base + path, ["127.0.0.1/32"])
        assert ended["returncode"] == 0 and ended["egress_refused"] == [], ended
    assert outer_hits[:2] == ["/here", "/clip.mp4"]


def test_https_tunnels_through_the_proxy_and_is_checked_there(tmp_path):
    make_clip(tmp_path / "clip.mp4", seconds=1, size="64x64")
    pki = local_pki(tmp_path / "pki")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server.cert, pki.server.key)
    srv, hits = _serve(tmp_path, "127.0.0.1", tls=ctx)
    url = f"https://127.0.0.1:{srv.server_address[1]}/clip.mp4"
    try:
        ended = _run(tmp_path, url, ["127.0.0.1/32"])
        assert ended["returncode"] == 0 and hits == ["/clip.mp4"], ended
        # nothing opened inside: FFmpeg's TLS connection was the proxy's to refuse, so it went there
        ended = _run(tmp_path, url, [])
        assert ended["returncode"] != 0 and ended["egress_refused"][0]["host"] == "127.0.0.1"
        assert hits == ["/clip.mp4"]
    finally:
        srv.shutdown()


@pytest.mark.parametrize(
    ("head", "parsed"),
    [
        (b"CONNECT cdn.example:8443 HTTP/1.1\r\nHost: x\r\n\r\n", ("cdn.example", 8443, None)),
        (b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n", ("::1", 443, None)),
        (
            b"GET http://a.example/v/x.m3u8?t=1 HTTP/1.1\r\nHost: a.example\r\n\r\n",
            ("a.example", 80, b"GET /v/x.m3u8?t=1 HTTP/1.1\r\nHost: a.example\r\n\r\n"),
        ),
    ],
)
def test_proxy_request_heads_are_parsed(head, parsed):
    assert parse_request_head(head) == parsed


@pytest.mark.parametrize(
    "head",
    [
        b"GET /relative HTTP/1.1\r\n\r\n",
        b"GET file:///etc/passwd HTTP/1.1\r\n\r\n",
        b"CONNECT :443 HTTP/1.1\r\n\r\n",
        b"GET http://a/ SPDY/3\r\n\r\n",
        b"nonsense\r\n\r\n",
    ],
)
def test_anything_but_a_proxy_request_is_refused(head):
    with pytest.raises(ValueError):
        parse_request_head(head)
