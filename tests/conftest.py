"""Shared fixtures. Integration and e2e tests use real parts: the system redis-server, ffmpeg
and ffprobe, and the project's own processes. A missing tool is an error, never a skip."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ffrtmp import media

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def require(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.fail(f"{tool} is required for this test (bash scripts/test.sh installs it)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A private redis-server on a unix socket for the whole session."""
    require("redis-server")
    d = tempfile.mkdtemp(prefix="ffr-test-redis-")
    sock = os.path.join(d, "r.sock")
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", sock, "--dir", d, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    conn = redis.Redis(unix_socket_path=sock)
    for _ in range(200):
        try:
            conn.ping()
            break
        except (redis.ConnectionError, FileNotFoundError):
            time.sleep(0.02)
    yield f"unix://{sock}"
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture()
def conn(redis_server: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_server)
    c.flushall()
    yield c
    c.close()


@pytest.fixture()
def media_dir(tmp_path: Path) -> Path:
    d = tmp_path / "media"
    d.mkdir()
    return d


def make_clip(path: Path, seconds: float = 2, size: str = "640x360", fps: int = 25) -> Path:
    """A real H.264/AAC clip made by ffmpeg (the same generator `ffrtmp demo` uses)."""
    require("ffmpeg")
    return media.make_clip(path, seconds, size, fps)


def ffprobe(path: str | Path) -> dict:
    require("ffprobe")
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)],
        capture_output=True,
        check=True,
    )
    return json.loads(out.stdout)


def video_stream(info: dict) -> dict:
    return next(s for s in info["streams"] if s["codec_type"] == "video")


def spawn_logged(log: Path, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a process in its own session (a signal to the test runner's group does not reach it)
    with stdout and stderr appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )


def agent_argv(redis_url: str, name: str, metrics_port: int, work_dir: Path, *extra: str) -> list[str]:
    """A real agent listening for metrics on 127.0.0.1 only; ``extra`` adds or overrides options."""
    return [
        str(BIN / "ffrtmp-agent"),
        "--redis-url",
        redis_url,
        "--name",
        name,
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        str(metrics_port),
        "--work-dir",
        str(work_dir),
        *extra,
    ]


def wait_agent_ready(
    port: int,
    proc: subprocess.Popen[bytes],
    log: Path | None = None,
    timeout: float = 90,
    name: str | None = None,
) -> None:
    """Until the agent's /ready says ready (and, given ``name``, that it is that agent: on a
    busy machine another process may have taken the port between free_port() and the bind);
    fails with the end of its log if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                body = json.loads(r.read())
                if body["ready"] and name in (None, body.get("node")):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    proc.kill()
    pytest.fail(f"agent on :{port} not ready (exit {proc.poll()}):\n{tail}")


class LocalFleet:
    """`ffrtmp up` run exactly as an operator runs it, in its own state dir and config home."""

    def __init__(
        self,
        tmp: Path,
        slots: int = 2,
        env: dict[str, str] | None = None,
        extra: tuple[str, ...] = (),
        ports: tuple[int, int] | None = None,
    ) -> None:
        require("redis-server")
        require("ffmpeg")
        self.tmp = tmp
        self.state = tmp / "state"
        self.port, self.metrics_port = ports or (free_port(), free_port())
        self.env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(tmp / "config"),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.env.pop("FFRTMP_URL", None)
        self.env.pop("FFRTMP_API_KEY", None)
        self.log = open(tmp / "up.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                str(BIN / "ffrtmp"),
                "up",
                "--port",
                str(self.port),
                "--slots",
                str(slots),
                "--metrics-port",
                str(self.metrics_port),
                "--state-dir",
                str(self.state),
                *extra,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=tmp,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = (tmp / "up.log").read_text(errors="replace")
            if "Ctrl-C stops everything" in text:
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"ffrtmp up exited {self.proc.returncode}:\n{text}")
            time.sleep(0.1)
        else:
            raise RuntimeError("ffrtmp up did not start:\n" + (tmp / "up.log").read_text(errors="replace"))
        cfg = json.loads((tmp / "config" / "ffrtmp" / "cli.json").read_text())
        self.url, self.api_key = cfg["url"], cfg["api_key"]

    @property
    def outputs(self) -> Path:
        return self.state / "outputs"

    @property
    def inputs(self) -> Path:
        return self.state / "inputs"

    def cli(self, *args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [str(BIN / "ffrtmp"), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            cwd=self.tmp,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"ffrtmp {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    def cli_json(self, *args: str, timeout: float = 300) -> dict:
        res = self.cli("--output", "json", *args, timeout=timeout)
        assert res.stdout, res.stderr
        return json.loads(res.stdout)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # Ctrl-C
            self.proc.wait(120)
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    f = LocalFleet(tmp_path_factory.mktemp("fleet"))
    yield f
    f.stop()
