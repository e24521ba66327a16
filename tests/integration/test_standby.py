"""The standby supervisor (``agent.standby``) with real processes: it runs the run it is handed
as an exec'd supervisor would, leaves on end of file, and never starts FFmpeg for a run whose
launch was taken from it while it was stopped; a dead one makes the caller start its own."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from agent import standby
from agent.runner import reap, write_cmd
from ffrtmp.rundir import RunDir

pytestmark = pytest.mark.integration


def run_dir(tmp_path: Path, job: str = "j1") -> RunDir:
    return RunDir.create(str(tmp_path / "work"), job, 1, "e" * 16, f"{job}:1:tok")


def wait_for(pred, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def exited(pid: int) -> bool:
    return reap(pid)


def test_a_handed_run_is_supervised_by_the_standby_itself(tmp_path):
    sb = standby.Standby.spawn()
    rd = run_dir(tmp_path)
    marker = tmp_path / "ran"
    write_cmd(rd.path, ["sh", "-c", f"echo progress=end; touch {marker}"])
    assert sb.hand(rd.path) == sb.pid
    wait_for(lambda: rd.exit() is not None)
    assert rd.exit()["returncode"] == 0 and marker.exists()
    assert rd.supervisor()["pid"] == sb.pid == rd.started()["runner_pid"]
    assert rd.launched_by() == "supervisor"
    wait_for(lambda: exited(sb.pid))


def test_a_standby_nobody_hands_a_run_leaves_on_end_of_file(tmp_path):
    sb = standby.Standby.spawn()
    time.sleep(0.3)
    assert not exited(sb.pid)  # waiting
    sb.close()
    wait_for(lambda: exited(sb.pid))


def test_a_stopped_standby_woken_after_the_run_was_given_up_starts_nothing(tmp_path):
    """Handed a run while stopped (SIGSTOP), the run killed meanwhile: on SIGCONT it must not
    start FFmpeg. ``kill_run`` proves it at once, by taking the launch."""
    sb = standby.Standby.spawn()
    time.sleep(0.3)  # past its imports: waiting on the pipe
    os.kill(sb.pid, signal.SIGSTOP)
    rd = run_dir(tmp_path)
    marker = tmp_path / "ran"
    write_cmd(rd.path, ["sh", "-c", f"touch {marker}"])
    assert sb.hand(rd.path) == sb.pid
    t0 = time.monotonic()
    assert rd.kill_run(5.0)
    assert time.monotonic() - t0 < 1.0
    os.kill(sb.pid, signal.SIGCONT)
    wait_for(lambda: exited(sb.pid))
    assert not marker.exists() and rd.started() is None and rd.exit() is None
    assert rd.launched_by() == "killer"


def test_a_watcher_that_gave_up_keeps_a_late_supervisor_from_starting(tmp_path):
    rd = run_dir(tmp_path)
    marker = tmp_path / "ran"
    write_cmd(rd.path, ["sh", "-c", f"touch {marker}"])
    assert rd.claim_launch("watcher")
    assert not rd.claim_launch("supervisor")  # taken once
    sb = standby.Standby.spawn()
    sb.hand(rd.path)
    wait_for(lambda: exited(sb.pid))
    assert not marker.exists() and rd.started() is None


def test_a_dead_standby_makes_the_caller_start_its_own_supervisor(tmp_path, monkeypatch):
    sb = standby.Standby.spawn()
    os.kill(sb.pid, signal.SIGKILL)
    wait_for(lambda: exited(sb.pid))
    monkeypatch.setattr(standby, "_ready", sb)
    rd = run_dir(tmp_path)
    pid, own = standby.launch(rd.path, ["sh", "-c", "exit 3"])
    assert own and pid != sb.pid
    wait_for(lambda: exited(pid))
    assert rd.exit()["returncode"] == 3
    assert standby.take() is None  # a standby is handed out once


def test_the_worker_keeps_one_standby_ready_and_reaps_the_ended(tmp_path, monkeypatch):
    monkeypatch.setattr(standby, "_ready", None)
    monkeypatch.setattr(standby, "_spawned", set())
    standby.prepare()
    first = standby._ready
    assert first is not None
    standby.prepare()
    assert standby._ready is first  # one at a time
    standby.forked()  # a horse took it: the worker's copy of the pipe closed, the next one started
    second = standby._ready
    assert second is not None and second.pid != first.pid
    wait_for(lambda: psutil.Process(first.pid).status() == psutil.STATUS_ZOMBIE)  # end of file
    standby.reap()
    assert standby._spawned == {second.pid}
    second.close()
    wait_for(lambda: psutil.Process(second.pid).status() == psutil.STATUS_ZOMBIE)
    standby.reap()
    assert not standby._spawned
