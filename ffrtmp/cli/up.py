"""``ffrtmp up``: a whole fleet on one machine - the system ``redis-server`` on a private unix
socket under the state dir (AOF on), a coordinator and an agent - stopped cleanly together."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..auth import new_key
from ..rundir import RunDir
from ..tls import LocalPki, client_context, local_pki

INSTALL_HINT = {
    "redis-server": "sudo apt-get install redis-server",
    "ffmpeg": "sudo apt-get install ffmpeg",
    "ffprobe": "sudo apt-get install ffmpeg",
}
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux


class FleetError(Exception):
    pass


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "ffrtmp"


def check_tools() -> None:
    missing = [t for t in INSTALL_HINT if shutil.which(t) is None]
    if missing:
        hints = sorted({INSTALL_HINT[t] for t in missing})
        raise FleetError(f"{', '.join(missing)} not found on PATH; install with: {' && '.join(hints)}")


def port_free(host: str, port: int) -> bool:
    """Could a server bind ``port`` now? As the servers do (SO_REUSEADDR), so the sockets a
    stop just left in TIME_WAIT do not count as in use."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def kept_key(path: Path, rotate: bool) -> str:
    """The API key kept at ``path`` (0600), made there if there is none or ``rotate``."""
    if not rotate:
        with contextlib.suppress(OSError):
            key = path.read_text().strip()
            if key.startswith("ffr_") and key.isascii() and len(key) >= 20:
                return key
    key = new_key()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".api-key.")  # 0600, a name of its own
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    os.replace(tmp, path)
    return key


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pdeathsig() -> None:
    """In each child: die with `ffrtmp up`, even if it is SIGKILLed."""
    from ..pdeath import set_pdeathsig  # local: keeps CLI start-up light

    set_pdeathsig(signal.SIGTERM)


@dataclass
class Fleet:
    state_dir: Path
    port: int = 8080
    slots: int = 2
    metrics_port: int = 9091
    input_roots: list[str] = field(default_factory=list)
    heartbeat_interval: str = "30s"
    scheduler_interval: str = "10s"
    drain_timeout: str = "10s"
    log_to_files: bool = True
    tls: bool = False  # HTTPS with a CA and a localhost certificate made in <state>/tls
    api_key: str = ""  # "": the one kept in <state>/api-key (made on the first start)
    rotate_key: bool = False  # replace the kept key with a new one
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _sock_dir: str | None = None

    @property
    def input_root_list(self) -> list[str]:
        """The agent's input roots, which the coordinator checks submissions against too."""
        return [str(self.inputs), *self.input_roots]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def pki(self) -> LocalPki | None:
        return local_pki(self.state_dir / "tls") if self.tls else None

    @property
    def ca_cert(self) -> str | None:
        pki = self.pki
        return str(pki.ca.cert) if pki else None

    @property
    def outputs(self) -> Path:
        return self.state_dir / "outputs"

    @property
    def inputs(self) -> Path:
        return self.state_dir / "inputs"

    @property
    def redis_socket(self) -> str:
        sock = str(self.state_dir / "redis" / "redis.sock")
        if len(sock) <= SOCKET_PATH_MAX:
            return sock
        if self._sock_dir is None:  # a long state dir: keep the socket in a short private dir
            digest = hashlib.sha1(str(self.state_dir).encode()).hexdigest()[:10]
            self._sock_dir = tempfile.mkdtemp(prefix=f"ffrtmp-{digest}-")
        return os.path.join(self._sock_dir, "redis.sock")

    @property
    def redis_url(self) -> str:
        return f"unix://{self.redis_socket}"

    def _log(self, name: str) -> int | None:
        if not self.log_to_files:
            return None
        path = self.state_dir / "logs" / f"{name}.log"
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        out = self._log(name)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out if out is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # Ctrl-C reaches `up` only; it stops the children in order
            preexec_fn=_pdeathsig,
        )
        if out is not None:
            os.close(out)
        self.procs[name] = proc

    def _wait(self, what: str, check: callable, timeout: float, proc: str) -> None:  # type: ignore[valid-type]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = self.procs.get(proc)
            if p is not None and p.poll() is not None:
                raise FleetError(
                    f"{what} exited with code {p.returncode}; see {self.state_dir}/logs/{proc}.log"
                )
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.05)
        raise FleetError(
            f"{what} did not become ready within {timeout:.0f}s; see {self.state_dir}/logs/{proc}.log"
        )

    def prepare(self) -> None:
        """The state directory and the API key, before anything starts (so the CLI's settings
        can be written before the coordinator answers). The key is kept across restarts: a
        Prometheus or a script configured with it keeps working."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.api_key:
            self.api_key = kept_key(self.state_dir / "api-key", self.rotate_key)

    def start(self) -> None:
        check_tools()
        self.prepare()
        for d in ("redis", "logs", "agent"):  # state, logs and run records: this user's only
            (self.state_dir / d).mkdir(exist_ok=True, mode=0o700)
            os.chmod(self.state_dir / d, 0o700)
        for d in ("outputs", "inputs"):
            (self.state_dir / d).mkdir(exist_ok=True)
        if not port_free("127.0.0.1", self.port):
            raise FleetError(f"port {self.port} is in use; pick another with --port")
        if self.metrics_port and not port_free("0.0.0.0", self.metrics_port):
            raise FleetError(
                f"agent metrics port {self.metrics_port} is in use; pick another with --metrics-port"
            )
        sock = self.redis_socket
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)
        self._spawn(
            "redis",
            [
                "redis-server",
                "--port",
                "0",
                "--unixsocket",
                sock,
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.state_dir / "redis"),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
            ],
        )
        import redis  # local import: only `up` needs it here

        conn = redis.Redis(unix_socket_path=sock, socket_connect_timeout=1)
        self._wait("redis-server", conn.ping, 15, "redis")
        conn.close()
        py = sys.executable
        pki = self.pki
        tls_args = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)] if pki else []
        self._spawn(
            "coordinator",
            [
                py,
                "-m",
                "coordinator.main",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--redis-url",
                self.redis_url,
                "--heartbeat-interval",
                self.heartbeat_interval,
                "--scheduler-interval",
                self.scheduler_interval,
                *tls_args,
                *(a for root in self.input_root_list for a in ("--input-root", root)),
                *("--output-root", str(self.outputs)),
            ],
            env={"FFRTMP_API_KEY": self.api_key},
        )
        agent_argv = [
            py,
            "-m",
            "agent.main",
            "--redis-url",
            self.redis_url,
            "--name",
            f"{socket.gethostname()}-local",
            "--slots",
            str(self.slots),
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(self.metrics_port),
            "--work-dir",
            str(self.state_dir / "agent"),
            "--output-root",
            str(self.outputs),
            "--heartbeat-interval",
            self.heartbeat_interval,
            "--drain-timeout",
            self.drain_timeout,
        ]
        for root in self.input_root_list:
            agent_argv += ["--input-root", root]
        self._spawn("agent", agent_argv)

        context = client_context(str(pki.ca.cert), None, None) if pki else None

        def coordinator_up() -> bool:
            with urllib.request.urlopen(self.url + "/health", timeout=1, context=context) as r:
                return r.status == 200

        def agent_ready() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/ready", timeout=1) as r:
                return r.status == 200

        self._wait("the coordinator", coordinator_up, 30, "coordinator")
        self._wait("the agent", agent_ready, 90, "agent")

    def alive(self) -> dict[str, bool]:
        return {name: p.poll() is None for name, p in self.procs.items()}

    def stop(self, timeout: float = 90) -> None:
        """Agent first (it finishes or hands back its jobs), then the coordinator, then Redis
        (which flushes its AOF on SIGTERM)."""
        for name in ("agent", "coordinator", "redis"):
            if name == "coordinator":
                self._stop_orphan_runs()
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout if name == "agent" else 20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._sock_dir:
            shutil.rmtree(self._sock_dir, ignore_errors=True)

    def _stop_orphan_runs(self, grace: float = 10) -> None:
        """Workloads outlive an agent by design (so a restarted agent can re-adopt them). When the
        whole local fleet stops, nothing is left to adopt them: stop what the drain left running."""
        runs = RunDir.live(str(self.state_dir / "agent"))
        for rd in runs:
            rd.signal_ffmpeg(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while runs and time.monotonic() < deadline:
            runs = [rd for rd in runs if rd.ffmpeg_alive()]
            time.sleep(0.1)
        for rd in runs:
            rd.signal_ffmpeg(signal.SIGKILL)
