"""The standby supervisor: one run supervisor per slot, started before its run.

Starting the supervisor program (``agent.runner``) costs a Python start and its imports, which
used to lie between a job's claim and its FFmpeg, once per job. So each slot keeps one
supervisor started ahead, waiting on a pipe: the horse writes the run directory's path into it
and the waiting process becomes that run's supervisor, exactly as one exec'd for the run would
(``agent.runner._supervisor_main``). It is exec'd by the slot's worker, not forked from the
horse, so it carries none of the horse's descriptors, and leads its own session, so it outlives
the horse as any supervisor does.

The pipe's write end is held by the slot's worker and, after a fork, by the horse; a standby
that reads end-of-file (its slot is gone, or the horse ended without a run to hand it) exits
having run nothing. A standby that is dead when the horse hands it the run makes the horse
start a supervisor of its own; one that dies just after taking it is seen as a supervisor
that died (``runner_died``, retried). And a standby woken late (stopped, then continued)
cannot start FFmpeg for a run its horse gave up on: the launch is claimed once, in the run
directory (``RunDir.claim_launch``)."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from ffrtmp.rundir import RunDir

from .runner import _supervisor_main, spawn_supervisor, supervisor_argv, write_cmd


class Standby:
    """The slot's side: the waiting supervisor's pid and the pipe's write end."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid, self.fd = pid, fd

    @classmethod
    def spawn(cls) -> Standby:
        r, w = os.pipe()  # both close-on-exec: only the standby's stdin is handed over
        try:
            actions = [
                (os.POSIX_SPAWN_DUP2, r, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ]
            argv = supervisor_argv("agent.standby")
            env = {k: v for k, v in os.environ.items() if k != "RQ_JOB_ID"}  # RQ's, of the last job
            pid = os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True, setsigmask=())
        except BaseException:
            os.close(w)
            raise
        finally:
            os.close(r)
        return cls(pid, w)

    def hand(self, run_dir: str) -> int | None:
        """Give it the run (a horse does this, once). Its pid, or None when it could not be
        handed (the standby is gone): then the caller starts a supervisor itself."""
        try:
            os.write(self.fd, run_dir.encode() + b"\n")  # under PIPE_BUF: written whole or not at all
        except OSError:
            return None
        finally:
            self.close()
        return self.pid

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


_ready: Standby | None = None  # the slot's current standby; a forked horse inherits it
_spawned: set[int] = set()  # in the worker: its standbys not yet reaped


def prepare() -> None:
    """In the slot's worker, before forking a horse: make sure a standby is waiting."""
    global _ready
    reap()
    if _ready is None:
        with contextlib.suppress(OSError):
            _ready = Standby.spawn()
            _spawned.add(_ready.pid)


def forked() -> None:
    """In the worker, after forking a horse: the horse owns the standby now (it hands it a
    run or, by exiting, makes it leave); the worker starts the next one at once, so that it is
    ready long before the next job."""
    global _ready
    if _ready is not None:
        _ready.close()
        _ready = None
    prepare()


def take() -> Standby | None:
    """In the horse: the standby to hand this attempt's run to (once), if there is one."""
    global _ready
    sb, _ready = _ready, None
    return sb


def launch(run_dir: str, argv: list[str], **cmd: Any) -> tuple[int, bool]:
    """Start the run: its command written (``runner.write_cmd``), then handed to the slot's
    standby, or to a supervisor started for it when there is none. The supervisor's pid, and
    whether it is the caller's own child (to reap) rather than the worker's."""
    write_cmd(run_dir, argv, **cmd)
    sb = take()
    pid = sb.hand(run_dir) if sb is not None else None
    if pid is not None:
        return pid, False
    return spawn_supervisor(run_dir), True


def reap() -> None:
    """In the worker: collect the ended standbys, and the supervisors they became."""
    for pid in list(_spawned):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done == pid:
            _spawned.discard(pid)


def _main() -> int:
    """The standby program: wait for a run directory on stdin, then supervise that run."""
    line = sys.stdin.buffer.readline()
    run_dir = line.decode("utf-8", "replace").strip()
    if not run_dir:
        return 0  # end of file: nobody will hand this standby a run
    if not os.path.isfile(RunDir(run_dir).file("cmd.json")):
        return 2
    log = os.open(RunDir(run_dir).file("runner.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(log, 2)
    os.dup2(null, 0)  # the pipe is done with
    os.close(log)
    os.close(null)
    return _supervisor_main(run_dir)


if __name__ == "__main__":
    sys.exit(_main())
