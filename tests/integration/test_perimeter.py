"""The coordinator's perimeter from outside, against the real process: HTTPS with TLS 1.2+,
client certificates (mTLS) refused at the handshake, a certificate rotated on SIGHUP, rate
limits per key and per address shared through Redis, the failed-key block, trusted proxies,
and the header read timeout."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ffrtmp.auth import key_line, new_key
from ffrtmp.tls import issue, local_pki
from tests.conftest import agent_argv, free_port, spawn_logged, wait_agent_ready

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


class Coordinator:
    def __init__(self, tmp: Path, redis_url: str, *extra: str, name: str = "c") -> None:
        self.keys = {r: new_key() for r in ("viewer", "operator", "admin")}
        keyfile = tmp / f"{name}.keys"
        keyfile.write_text("".join(key_line(f"k-{r}", r, k) + "\n" for r, k in self.keys.items()))
        self.port = free_port()
        self.tls = "--tls-cert" in extra
        self.proc = spawn_logged(
            tmp / f"{name}.log",
            [
                str(BIN / "ffrtmp-coordinator"),
                "--port",
                str(self.port),
                "--redis-url",
                redis_url,
                "--api-keys-file",
                str(keyfile),
                *extra,
            ],
        )
        self.log = tmp / f"{name}.log"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def wait_up(self, context: ssl.SSLContext | None = None) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2, context=context):
                    return
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        raise AssertionError(self.log.read_text())

    def call(
        self, path: str, key: str | None, context: ssl.SSLContext | None = None, headers=None, body=None
    ):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, headers=headers or {}, data=data)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=10, context=context) as r:
                return r.status, dict(r.headers), json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), json.loads(e.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


@pytest.fixture()
def coordinators(conn, redis_server, tmp_path):
    started: list[Coordinator] = []

    def start(*extra: str, name: str = "c") -> Coordinator:
        c = Coordinator(tmp_path, redis_server, *extra, name=name)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def trusting(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def cli(c: Coordinator, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ffrtmp"), "--url", c.url, "--api-key", key or c.keys["viewer"], *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(Path(c.log).parent)},
    )


@contextlib.contextmanager
def tls_socket(c: Coordinator, context: ssl.SSLContext) -> Iterator[ssl.SSLSocket]:
    with (
        socket.create_connection(("127.0.0.1", c.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        yield s


def handshake_fails(c: Coordinator, context: ssl.SSLContext) -> bool:
    """True when the server refuses this client during the TLS handshake (or right after it, for
    TLS 1.3, where the server's verdict on the client certificate arrives with the first read)."""
    try:
        with tls_socket(c, context) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return not s.recv(1024).startswith(b"HTTP/1.1 200")
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True


def test_https_with_a_private_ca_and_the_cli_trusting_it(coordinators, tmp_path):
    pki = local_pki(tmp_path / "pki")
    c = coordinators("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key))
    ctx = trusting(pki.ca.cert)
    c.wait_up(ctx)
    status, _, body = c.call("/nodes", c.keys["viewer"], ctx)
    assert status == 200 and body == {"nodes": [], "next_cursor": None}
    with tls_socket(c, ctx) as s:
        assert s.version() in ("TLSv1.2", "TLSv1.3")
    old = trusting(pki.ca.cert)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # what an old client offers
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    assert handshake_fails(c, old)  # nothing older than TLS 1.2
    res = cli(c, "nodes", "list")
    assert res.returncode == 3 and "certificate verify failed" in res.stderr, res
    assert "Traceback" not in res.stderr
    res = cli(c, "--ca-cert", str(pki.ca.cert), "nodes", "list")
    assert res.returncode == 0, res.stderr
    res = cli(c, "--ca-cert", str(tmp_path / "nope.crt"), "nodes", "list")
    assert res.returncode == 2 and "no such file" in res.stderr and "Traceback" not in res.stderr


def test_mtls_refuses_clients_without_a_certificate_of_its_ca(coordinators, tmp_path):
    pki = local_pki(tmp_path / "pki")
    stranger_ca = issue(tmp_path / "other", "ca", [], is_ca=True)
    stranger = issue(tmp_path / "other", "client", [], stranger_ca, client=True)
    c = coordinators(
        "--tls-cert",
        str(pki.server.cert),
        "--tls-key",
        str(pki.server.key),
        "--tls-client-ca",
        str(pki.ca.cert),
    )
    good = trusting(pki.ca.cert, pki.client.cert, pki.client.key)
    c.wait_up(good)
    assert handshake_fails(c, trusting(pki.ca.cert))  # no certificate at all
    assert handshake_fails(c, trusting(pki.ca.cert, stranger.cert, stranger.key))
    assert c.call("/nodes", c.keys["viewer"], good)[0] == 200
    res = cli(c, "--ca-cert", str(pki.ca.cert), "nodes", "list")
    assert res.returncode == 3 and "client certificate" in res.stderr and "Traceback" not in res.stderr, res
    res = cli(
        c,
        "--ca-cert",
        str(pki.ca.cert),
        "--client-cert",
        str(pki.client.cert),
        "--client-key",
        str(pki.client.key),
        "nodes",
        "list",
    )
    assert res.returncode == 0, res.stderr


def _serial(c: Coordinator, ctx: ssl.SSLContext) -> int:
    with tls_socket(c, ctx) as s:
        der = s.getpeercert(binary_form=True)
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def test_a_certificate_rotated_on_disk_is_served_after_sighup(coordinators, tmp_path):
    pki = local_pki(tmp_path / "pki")
    c = coordinators("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key))
    ctx = trusting(pki.ca.cert)
    c.wait_up(ctx)
    before = _serial(c, ctx)
    issue(tmp_path / "pki", "server", ["localhost", "127.0.0.1"], pki.ca)  # same paths, new pair
    c.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while _serial(c, ctx) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _serial(c, ctx) != before
    assert c.proc.poll() is None and c.call("/health", None, ctx)[0] == 200


@pytest.fixture()
def pair(coordinators, tmp_path, redis_server):
    """Two coordinators with the same keys on one Redis (a blue-green pair)."""
    keys = {r: new_key() for r in ("viewer", "operator")}
    keyfile = tmp_path / "shared.keys"
    keyfile.write_text("".join(key_line(f"k-{r}", r, k) + "\n" for r, k in keys.items()))

    def start(*extra: str) -> list[Coordinator]:
        out = [coordinators("--api-keys-file", str(keyfile), *extra, name=n) for n in ("blue", "green")]
        for c in out:
            c.keys = keys
            c.wait_up()
        return out

    return start


def test_the_key_budget_is_one_for_both_colours(pair):
    blue, green = pair("--rate-limit-key", "6/minute", "--rate-limit-address", "off")
    key = blue.keys["viewer"]
    answers = [(blue if i % 2 else green).call("/queues", key) for i in range(6)]
    assert [s for s, _, _ in answers] == [200] * 6
    status, headers, body = blue.call("/queues", key)
    assert status == 429 and body["error"]["code"] == "rate_limited", body
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert green.call("/queues", key)[0] == 429
    assert green.call("/queues", blue.keys["operator"])[0] == 200  # another key has its own
    assert green.call("/health", None)[0] == 200  # probes are never limited


def test_failed_keys_block_the_address_even_for_a_right_key(pair):
    blue, green = pair("--rate-limit-failed-auth", "4/minute")
    for _ in range(4):
        assert blue.call("/queues", "ffr_wrong_key")[0] == 401
    status, headers, body = green.call("/queues", blue.keys["viewer"])
    assert status == 429 and "failed API keys" in body["error"]["message"], body
    assert int(headers["Retry-After"]) >= 1
    assert blue.call("/ready", None)[0] == 200


def test_a_trusted_proxy_names_the_client_and_an_untrusted_one_does_not(pair):
    blue, green = pair("--rate-limit-failed-auth", "3/minute", "--trusted-proxy", "127.0.0.0/8")
    for _ in range(3):
        assert blue.call("/queues", "ffr_wrong", headers={"X-Forwarded-For": "198.51.100.7"})[0] == 401
    spoofed = {"X-Forwarded-For": "198.51.100.7"}
    assert green.call("/queues", blue.keys["viewer"], headers=spoofed)[0] == 429  # that client
    other = {"X-Forwarded-For": "198.51.100.8"}
    assert green.call("/queues", blue.keys["viewer"], headers=other)[0] == 200  # another client


def test_the_proxy_header_is_ignored_from_an_untrusted_peer(pair):
    blue, _ = pair("--rate-limit-failed-auth", "3/minute")
    for i in range(3):  # each claims another client: all are 127.0.0.1 to this coordinator
        assert blue.call("/queues", "ffr_wrong", headers={"X-Forwarded-For": f"203.0.113.{i}"})[0] == 401
    assert blue.call("/queues", blue.keys["viewer"], headers={"X-Forwarded-For": "203.0.113.99"})[0] == 429


def test_bad_limit_and_tls_options_are_usage_errors(tmp_path, redis_server):
    pki = local_pki(tmp_path / "pki")
    for extra, words in [
        (["--rate-limit-key", "lots"], "not a rate limit"),
        (["--trusted-proxy", "10.0.0.0/33"], "not a network"),
        (["--tls-cert", str(pki.server.cert)], "go together"),
        (["--tls-client-ca", str(pki.ca.cert)], "needs --tls-cert"),
        (["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.client.key)], "--tls-cert/--tls-key"),
        (["--tls-cert", str(tmp_path / "none.crt"), "--tls-key", str(pki.server.key)], "no such file"),
    ]:
        res = subprocess.run(
            [str(BIN / "ffrtmp-coordinator"), "--redis-url", redis_server, *extra],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "FFRTMP_API_KEY": new_key()},
        )
        assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr, (
            extra,
            res.stderr,
        )


def test_a_client_that_never_finishes_its_request_head_is_dropped(coordinators):
    c = coordinators("--header-timeout", "2s")
    c.wait_up()
    with socket.create_connection(("127.0.0.1", c.port), timeout=60) as s:
        s.sendall(b"GET /queues HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 40:
            try:
                s.sendall(b"X-Slow: 1\r\n")  # a header now and then, never the end of the head
                if s.recv(1, socket.MSG_DONTWAIT) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.5)
    assert closed, "the coordinator kept a connection whose request head never ended"
    assert c.call("/health", None)[0] == 200


def test_secrets_in_a_job_are_shown_to_admins_only_and_reach_redis_whole(coordinators, conn):
    c = coordinators()
    c.wait_up()
    src = "http://cam:hunter2@203.0.113.5/feed.flv?token=t0k3n"
    dst = "rtmp://live.example.com/app/sk-live-9f8e7d"
    spec = {"scenario": "rtmp-restream", "input": src, "output": dst, "duration": 5}
    status, _, view = c.call("/jobs", c.keys["operator"], body=spec)
    assert status == 201, view
    secrets = ("hunter2", "t0k3n", "sk-live-9f8e7d")
    for path, role in [
        (f"/jobs/{view['id']}", "viewer"),
        (f"/jobs/{view['id']}", "operator"),
        ("/jobs", "viewer"),
        (f"/jobs/{view['id']}/logs", "viewer"),
    ]:
        status, _, body = c.call(path, c.keys[role])
        text = json.dumps(body)
        assert status == 200 and not any(x in text for x in secrets), (path, role, text)
    assert not any(x in json.dumps(view) for x in secrets)  # the submitter's answer too
    _, _, seen = c.call(f"/jobs/{view['id']}", c.keys["admin"])
    assert seen["input"] == src and seen["output"] == dst
    data = zlib.decompress(conn.hget(f"rq:job:{view['id']}", "data"))
    assert all(x.encode() in data for x in secrets)  # the agent gets what it must run


def test_agent_metrics_behind_keys_and_probes_open(conn, redis_server, tmp_path):
    key = new_key()
    keyfile = tmp_path / "metrics.keys"
    keyfile.write_text(key_line("prometheus", "viewer", key) + "\n")
    port = free_port()
    log = tmp_path / "agent.log"
    proc = spawn_logged(
        log,
        agent_argv(
            redis_server,
            "m1",
            port,
            tmp_path / "work",
            "--slots",
            "1",
            "--metrics-api-keys-file",
            str(keyfile),
        ),
    )
    try:
        wait_agent_ready(port, proc, log)

        def get(path: str, token: str | None = None) -> int:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                assert json.loads(e.read())["error"]["code"] == "unauthorized"
                return e.code

        assert get("/metrics") == 401 and get("/violations", "ffr_wrong") == 401
        assert get("/metrics", key) == 200 and get("/violations", key) == 200
        assert get("/health") == 200 and get("/ready") == 200
    finally:
        proc.terminate()
        proc.wait(60)
    bad = subprocess.run(
        agent_argv(
            redis_server, "m2", free_port(), tmp_path / "w2", "--metrics-api-keys-file", str(tmp_path / "x")
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "cannot read" in bad.stderr and "Traceback" not in bad.stderr
