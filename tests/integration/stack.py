"""A fleet on one machine for fault tests: Redis (AOF) on a unix socket, a coordinator and
agents with 1 s heartbeats sharing one input root and one output root, each a real process in
its own session, every log under the test's directory."""

import contextlib
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import redis

from tests.conftest import agent_argv, free_port, spawn_logged

BIN = Path(sys.executable).parent


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sock = str(tmp / "r.sock")
        self.url = f"unix://{self.sock}"
        self.inputs, self.outputs = tmp / "in", tmp / "out"
        self.inputs.mkdir()
        self.outputs.mkdir()
        self.key = "ffr_chaos_key_0123456789abcdef"
        self.port = free_port()
        self.redis: subprocess.Popen | None = None
        self.coordinator: subprocess.Popen | None = None
        self.agents: dict[str, subprocess.Popen] = {}
        self.frozen: list[tuple[str, float, float]] = []  # (agent, stopped at, resumed at)
        self.lock = threading.Lock()

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        return spawn_logged(self.tmp / f"{name}.log", argv, env)

    def start_redis(self) -> None:
        self.redis = self._spawn(
            "redis",
            [
                "redis-server",
                "--port",
                "0",
                "--unixsocket",
                self.sock,
                "--dir",
                str(self.tmp),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
        )
        conn = redis.Redis(unix_socket_path=self.sock)
        for _ in range(300):
            try:
                if conn.ping():
                    return
            except (redis.ConnectionError, FileNotFoundError):
                time.sleep(0.02)
        raise AssertionError("redis did not start")

    def restart_redis(self) -> None:
        assert self.redis is not None
        self.redis.terminate()  # SIGTERM: Redis flushes its AOF and exits
        self.redis.wait(30)
        self.start_redis()

    def start_coordinator(self) -> None:
        self.coordinator = self._spawn(
            "coordinator",
            [
                str(BIN / "ffrtmp-coordinator"),
                "--port",
                str(self.port),
                "--redis-url",
                self.url,
                "--heartbeat-interval",
                "1s",
                "--scheduler-interval",
                "1s",
                "--max-retries",
                "4",
            ],
            env={"FFRTMP_API_KEY": self.key},
        )

    def restart_coordinator(self) -> None:
        assert self.coordinator is not None
        self.coordinator.terminate()
        self.coordinator.wait(30)
        self.start_coordinator()

    def start_agent(self, name: str, *extra: str) -> None:
        argv = agent_argv(
            self.url,
            name,
            free_port(),
            self.tmp / f"work-{name}",
            "--slots",
            "2",
            "--heartbeat-interval",
            "1s",
            "--input-root",
            str(self.inputs),
            "--output-root",
            str(self.outputs),
            "--drain-timeout",
            "20s",
            *extra,
        )
        self.agents[name] = self._spawn(name, argv)

    def kill_agent(self, name: str) -> None:
        proc = self.agents[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def freeze_agent(self, name: str) -> list[psutil.Process]:
        """SIGSTOP the agent and everything under it: slots, horses, supervisors, FFmpeg."""
        root = psutil.Process(self.agents[name].pid)
        procs = [root, *root.children(recursive=True)]
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.suspend()
        return procs

    def kill_a_supervisor(self, name: str) -> int | None:
        root = psutil.Process(self.agents[name].pid)
        for p in root.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                if any(c.name() == "ffmpeg" for c in p.children()):
                    p.kill()
                    return p.pid
        return None

    def stop(self) -> None:
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.agents.values():
            proc.wait(60)
        for proc in (self.coordinator, self.redis):
            if proc and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
