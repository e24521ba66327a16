"""The per-run supervisor: one per attempt, owning its run directory (``ffrtmp.rundir``).

It is started detached from the RQ horse (own session), so the workload belongs to the OS
rather than to the agent: the horse only watches the run directory and mirrors what it finds
into Redis. FFmpeg dies with its supervisor (parent-death signal), so a dead supervisor means a
dead FFmpeg, and the next attempt never runs beside an unsupervised one. A run that nobody
watches for the orphan deadline is killed at once, also right after the whole process tree
was frozen and resumed (SIGCONT wakes the watchdog).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any

from ffrtmp.pdeath import die_with
from ffrtmp.rundir import RunDir, read_json, remove_path, used_bytes, write_json_atomic

from . import cgroups
from .egress import EgressProxy

STDERR_CAP_BYTES = 4 * 1024 * 1024
TAIL_LINES = 40


def _num(value: str | None) -> float | None:
    if value is None:
        return None
    value = value.strip().rstrip("x")
    if value in ("", "N/A"):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def parse_progress_block(block: dict[str, str]) -> dict[str, Any]:
    """Turn one ``-progress`` key=value block into typed fields."""
    out_us = _num(block.get("out_time_us")) or _num(block.get("out_time_ms"))  # both are µs in ffmpeg
    bitrate = block.get("bitrate", "").strip()
    kbps = _num(bitrate.removesuffix("kbits/s")) if bitrate.endswith("kbits/s") else None
    return {
        "frame": int(_num(block.get("frame")) or 0),
        "fps": _num(block.get("fps")),
        "bitrate_kbps": kbps,
        "total_size": int(_num(block.get("total_size")) or 0),
        "out_time_s": round(out_us / 1e6, 3) if out_us is not None and out_us >= 0 else None,
        "speed": _num(block.get("speed")),
        "state": block.get("progress", "continue"),
    }


def with_percent(progress: dict[str, Any], duration: float | None) -> dict[str, Any]:
    """Add percent and ETA where the expected duration is known."""
    out = dict(progress)
    t = progress.get("out_time_s")
    if duration and t is not None:
        pct = max(0.0, min(100.0, 100.0 * t / duration))
        out["percent"] = round(pct, 1)
        speed = progress.get("speed")
        if speed and speed > 0 and progress.get("state") != "end":
            out["eta_s"] = round(max(0.0, duration - t) / speed, 1)
        elif progress.get("state") == "end":
            out["percent"] = 100.0
            out["eta_s"] = 0.0
    return out


def _pump_stderr(stream: Any, run_dir: str, tail: deque[str]) -> None:
    written = 0
    with open(RunDir(run_dir).file("stderr.log"), "wb") as log:
        for raw in iter(stream.readline, b""):
            tail.append(raw.decode("utf-8", "replace").rstrip("\n"))
            if written < STDERR_CAP_BYTES:
                log.write(raw)
                log.flush()
                written += len(raw)


def _watchdog(
    proc: subprocess.Popen[bytes],
    rd: RunDir,
    orphan_after: float,
    state: dict[str, Any],
    wake: threading.Event,
) -> None:
    """Kill FFmpeg once no agent has watched this run for ``orphan_after`` seconds. The job's
    RQ execution outlives that deadline, so the job is only requeued after this run is gone;
    after a freeze (SIGSTOP/SIGCONT, a paused VM) SIGCONT wakes this check at once, so a run
    whose job was requeued meanwhile stops within milliseconds of waking up. Its output is
    thrown away, so there is nothing to finalize: SIGKILL."""
    while proc.poll() is None:
        wake.wait(0.5)
        wake.clear()
        age = rd.owner_age()
        if age > orphan_after:
            state["orphaned"] = True
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            print(f"no owner for {age:.0f}s: FFmpeg killed", file=sys.stderr, flush=True)
            return


def supervise(
    run_dir: str,
    argv: list[str],
    env: dict[str, str] | None = None,
    orphan_after: float | None = None,
    tmp_output: str | None = None,
    egress: list[str] | None = None,
    cgroup_dirs: list[str] | None = None,
) -> int:
    """Run FFmpeg, keep the run directory current, return its exit code. SIGTERM/SIGINT to this
    process are forwarded to FFmpeg (which then finalizes its output). With ``egress`` (the
    networks opened inside), FFmpeg's HTTP(S) goes through this run's egress proxy; with
    ``cgroup_dirs`` (the run's own cgroup, its limits set), FFmpeg starts in that cgroup."""
    rd = RunDir(run_dir)
    me = os.getpid()
    refused: list[dict[str, Any]] = []
    proxy = None
    if egress is not None:
        proxy = EgressProxy(egress, refused.append).start()
        env = _proxied_env(env, proxy.url)
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        close_fds=True,
        env=env,
        preexec_fn=lambda: _child_setup(me, cgroup_dirs or []),
    )
    wake = threading.Event()

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGCONT, lambda _s, _f: wake.set())
    write_json_atomic(
        rd.file("started.json"), {"runner_pid": me, "ffmpeg_pid": proc.pid, "time": time.time()}
    )
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    t = threading.Thread(target=_pump_stderr, args=(proc.stderr, run_dir, tail), daemon=True)
    t.start()
    state: dict[str, Any] = {"orphaned": False}
    if orphan_after:
        rd.touch_owner()
        threading.Thread(target=_watchdog, args=(proc, rd, orphan_after, state, wake), daemon=True).start()
    block: dict[str, str] = {}
    progress_path = RunDir(run_dir).file("progress.json")
    assert proc.stdout is not None
    for raw in iter(proc.stdout.readline, b""):
        line = raw.decode("utf-8", "replace").strip()
        if "=" not in line:
            continue
        key, _, value = line.partition("=")
        block[key] = value
        if key == "progress":
            parsed = parse_progress_block(block)
            parsed["time"] = time.time()
            write_json_atomic(progress_path, parsed)
            block = {}
    rc = proc.wait()
    oom = cgroups.oom_killed(cgroup_dirs or [])  # first: its counters go with the cgroup
    cgroups.remove(cgroup_dirs or [])
    t.join(timeout=5)
    partial_bytes = None
    if tmp_output and (rc != 0 or state["orphaned"]):
        # nobody publishes the output of a run that failed or was stopped: never leave a
        # half file behind, even when its watcher is gone (what it took is kept for the
        # disk-full marker)
        partial_bytes = used_bytes(tmp_output)
        remove_path(tmp_output)
    if proxy is not None:
        proxy.shutdown()
        proxy.server_close()
    with open(RunDir(run_dir).file("stderr.tail"), "w") as fh:
        fh.write("\n".join(tail))
    write_json_atomic(
        RunDir(run_dir).file("exit.json"),
        {
            "returncode": rc,
            "signal": -rc if rc < 0 else None,
            "time": time.time(),
            "orphaned": state["orphaned"],
            "partial_bytes": partial_bytes,
            "egress_refused": refused[:20],
            "oom_killed": oom,
        },
    )
    return rc


def _child_setup(supervisor: int, cgroup_dirs: list[str]) -> None:
    """In FFmpeg's process before exec: die with the supervisor, enter the run's cgroup (so
    nothing it allocates is charged elsewhere)."""
    die_with(supervisor)  # FFmpeg never outlives its supervisor
    cgroups.join(cgroup_dirs)


def _proxied_env(env: dict[str, str] | None, proxy_url: str) -> dict[str, str]:
    """FFmpeg's environment with every HTTP(S) connection sent to the egress proxy: its own
    ``http_proxy`` (HTTPS tunnels through it too) and no ``no_proxy`` exemption."""
    out = {k: v for k, v in (os.environ if env is None else env).items() if k.lower() not in _PROXY_VARS}
    out["http_proxy"] = proxy_url
    return out


_PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")


def write_cmd(
    run_dir: str,
    argv: list[str],
    orphan_after: float | None = None,
    tmp_output: str | None = None,
    egress: list[str] | None = None,
    cgroup_dirs: list[str] | None = None,
) -> None:
    """What the run's supervisor is to run (``cmd.json``). ``run_dir`` must exist
    (``RunDir.create``). The written ``launch_claim: true`` tells readers that its supervisor
    claims the launch before FFmpeg starts (``RunDir.claim_launch``), so that whoever gives up
    on the run first can keep it from ever starting."""
    rd = RunDir(run_dir)
    cmd = {
        "argv": argv,
        "orphan_after": orphan_after,
        "tmp_output": tmp_output,
        "egress": egress,
        "cgroup_dirs": cgroup_dirs or [],
        "launch_claim": True,
    }
    write_json_atomic(rd.file("cmd.json"), cmd)
    rd.touch_owner()


def supervisor_argv(module: str, *args: str) -> list[str]:
    """The command line of a supervisor program. -P: the caller's working directory is not put
    on the path (a directory named agent there must not stand in for the package)."""
    return [sys.executable, "-P", "-m", module, *args]


def spawn_supervisor(run_dir: str) -> int:
    """Start the supervisor (``python -m agent.runner RUN_DIR``) for a run whose ``cmd.json`` is
    written, as a new program leading its own session, so it outlives the caller's process
    group (the RQ horse's) and, when the caller dies, is reparented to init or the nearest
    subreaper. It is exec'd, not merely forked: a forked copy of the horse would carry the
    horse's Python objects over file descriptors it must close, and one of them being freed
    later closed a descriptor the supervisor had reused (an intermittent EBADF that failed jobs
    as ffmpeg_not_started). Only stdin (null) and stderr (runner.log) are handed over; Python's
    descriptors are close-on-exec. The caller reaps it with ``reap``. Returns its pid. (A slot
    keeps one started ahead instead: ``agent.standby``.)"""
    rd = RunDir(run_dir)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDWR, 0),
        (os.POSIX_SPAWN_DUP2, 0, 1),
        (os.POSIX_SPAWN_OPEN, 2, rd.file("runner.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
    ]
    argv = supervisor_argv("agent.runner", run_dir)
    # an empty mask: no signal blocked by the caller stays so
    return os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=actions, setsid=True, setsigmask=())


def _supervisor_main(run_dir: str) -> int:
    """The supervisor program: run the command ``cmd.json`` names, record how it ended."""
    rd = RunDir(run_dir)
    write_json_atomic(rd.file("supervisor.json"), {"pid": os.getpid(), "time": time.time()})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        cmd = read_json(rd.file("cmd.json")) or {}
        argv = cmd["argv"]
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ValueError("cmd.json names no command")
        egress = cmd.get("egress")
        if egress is not None and not (isinstance(egress, list) and all(isinstance(n, str) for n in egress)):
            raise ValueError("cmd.json's egress is not a list of networks")
        dirs = cmd.get("cgroup_dirs") or []
        if not (isinstance(dirs, list) and all(isinstance(d, str) for d in dirs)):
            raise ValueError("cmd.json's cgroup_dirs is not a list of directories")
        if cmd.get("launch_claim") and not rd.claim_launch("supervisor"):
            print("the launch was claimed first (the watcher gave up on this run)", file=sys.stderr)
            return 0
        supervise(run_dir, argv, None, cmd.get("orphan_after"), cmd.get("tmp_output"), egress, dirs)
    except BaseException as exc:
        print(f"runner failed: {exc!r}", file=sys.stderr)
        if read_json(rd.file("exit.json")) is None:
            write_json_atomic(
                rd.file("exit.json"),
                {"returncode": 127, "signal": None, "time": time.time(), "runner_error": repr(exc)},
            )
        return 1
    return 0


def reap(pid: int) -> bool:
    """Collect the supervisor's exit status if it has ended; True once it has."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


if __name__ == "__main__":
    sys.exit(_supervisor_main(sys.argv[1]))
