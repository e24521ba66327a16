"""The run directory: one per attempt, ``<work>/runs/<job>/<attempt>-<execution>/``, created
once and never reused, so no attempt ever reads another's ``exit.json`` or signals another's
FFmpeg. The supervisor writes it, the attempt (and a re-adopting agent) watches it, metrics and
``ffrtmp up`` read it. Everything read from it is checked: a broken file reads as absent.

Files: ``attempt.json`` (job, attempt, lease token), ``cmd.json`` (argv), ``owner`` (touched by
whoever watches the run), ``started.json`` (supervisor and FFmpeg pids, start time),
``progress.json`` (the last ``-progress`` block), ``stderr.log`` / ``stderr.tail``,
``exit.json`` (how FFmpeg ended), ``runner.log`` (the supervisor's own errors), ``launch``
(created once, exclusively: by the supervisor just before it starts FFmpeg, or by whoever gave
up on the run before that, so that a supervisor woken late never starts it).
A segmented job's attempt follows its segments before it starts any FFmpeg: ``follow.json``
(since when) says so until the join starts or the attempt ends, so that an agent restarted
under it follows them again rather than lose the attempt.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

RUNS = "runs"
# The run directory is how agents of different versions hand live runs to each other. A new
# field is only ever added (readers ignore what they do not know); FORMAT is bumped when a
# change means an older agent must not adopt the run, and an agent leaves alone a run written
# in a format newer than its own.
FORMAT = 1


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(data, fh, separators=(",", ":"))
    os.replace(tmp, path)


def read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def tail_text(path: str, nbytes: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - nbytes))
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    return text if size <= nbytes else text.split("\n", 1)[-1]


def process_alive(pid: int, not_after: float) -> bool:
    """Is ``pid`` a live (not zombie) process that already existed at ``not_after``? A pid reused
    by a younger process is not the one we started."""
    import psutil  # here: the run supervisor, which starts with every job, never needs it

    try:
        proc = psutil.Process(pid)
        return proc.create_time() <= not_after + 1 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def remove_path(path: str) -> None:
    """Remove a file or a whole directory (an HLS output); a missing one is fine."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def used_bytes(path: str) -> int:
    """Bytes a partial output (file or HLS directory) takes."""
    if os.path.isdir(path):
        total = 0
        for d, _, files in os.walk(path):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.path.getsize(os.path.join(d, f))
        return total
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


@dataclass(frozen=True)
class RunDir:
    path: str

    # --- naming -------------------------------------------------------------------------
    @staticmethod
    def root(work_dir: str) -> str:
        return os.path.join(work_dir, RUNS)

    @classmethod
    def create(cls, work_dir: str, job_id: str, attempt: int, execution: str, token: str) -> RunDir:
        """A new directory for this attempt; fails if it exists (never reused)."""
        path = os.path.join(cls.root(work_dir), job_id, f"{attempt}-{execution[:12]}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path)
        rd = cls(path)
        info = {"format": FORMAT, "job": job_id, "attempt": attempt, "lease": token}
        write_json_atomic(rd.file("attempt.json"), info)
        rd.touch_owner()
        return rd

    @classmethod
    def all(cls, work_dir: str) -> Iterator[RunDir]:
        root = cls.root(work_dir)
        with contextlib.suppress(OSError):
            for job_id in os.listdir(root):
                with contextlib.suppress(OSError):
                    for name in os.listdir(os.path.join(root, job_id)):
                        yield cls(os.path.join(root, job_id, name))

    @classmethod
    def live(cls, work_dir: str) -> list[RunDir]:
        """Runs whose supervisor is alive and whose FFmpeg has not ended."""
        return [rd for rd in cls.all(work_dir) if rd.is_live()]

    @classmethod
    def adoptable(cls, work_dir: str) -> list[RunDir]:
        """What a restarted agent takes over: live runs, and attempts following segments."""
        return [rd for rd in cls.all(work_dir) if rd.is_live() or rd.following() is not None]

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    # --- what the directory says ----------------------------------------------------------
    @property
    def info(self) -> dict[str, Any]:
        return read_json(self.file("attempt.json")) or {}

    @property
    def job_id(self) -> str:
        return str(self.info.get("job") or os.path.basename(os.path.dirname(self.path)))

    @property
    def attempt(self) -> int:
        try:
            return int(self.info.get("attempt") or 0)
        except (TypeError, ValueError):
            return 0

    @property
    def format(self) -> int:
        """The run-directory format it was written in (1 before the field existed)."""
        fmt = self.info.get("format", 1)
        return fmt if isinstance(fmt, int) and not isinstance(fmt, bool) else FORMAT + 1

    @property
    def token(self) -> str | None:
        tok = self.info.get("lease")
        return tok if isinstance(tok, str) else None

    def started(self) -> dict[str, Any] | None:
        """{"runner_pid", "ffmpeg_pid", "time"} once FFmpeg runs; None if absent or broken."""
        data = read_json(self.file("started.json"))
        try:
            if data is not None:
                int(data["runner_pid"]), int(data["ffmpeg_pid"]), float(data["time"])
                return data
        except (KeyError, TypeError, ValueError):
            pass
        return None

    def exit(self) -> dict[str, Any] | None:
        return read_json(self.file("exit.json"))

    def progress(self) -> dict[str, Any] | None:
        return read_json(self.file("progress.json"))

    def progress_mtime(self) -> float:
        try:
            return os.stat(self.file("progress.json")).st_mtime
        except OSError:
            return 0.0

    def following(self) -> float | None:
        """Since when this attempt follows its segments (None once its FFmpeg was set up, or
        when it never did or no longer does)."""
        data = read_json(self.file("follow.json"))
        if data is None or os.path.exists(self.file("cmd.json")):
            return None
        since = data.get("since")
        return float(since) if isinstance(since, int | float) and not isinstance(since, bool) else None

    def mark_following(self, since: float) -> None:
        write_json_atomic(self.file("follow.json"), {"since": since})

    def end_following(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.file("follow.json"))

    def stderr_tail(self, nbytes: int) -> str:
        return tail_text(self.file("stderr.tail"), nbytes)

    def stderr_log(self, nbytes: int) -> str:
        return tail_text(self.file("stderr.log"), nbytes)

    # --- ownership ------------------------------------------------------------------------
    def touch_owner(self) -> None:
        """Called by whoever watches the run (the horse, or an agent that re-adopted it)."""
        path = self.file("owner")
        try:
            os.utime(path)
        except FileNotFoundError:
            with open(path, "w"):
                pass

    def owner_age(self) -> float:
        try:
            return time.time() - os.stat(self.file("owner")).st_mtime
        except OSError:
            return 0.0

    def claim_launch(self, by: str) -> bool:
        """Take the one right to decide whether FFmpeg starts (``by``: who took it). False when
        it was taken already: by the supervisor (FFmpeg is starting or started) or by a watcher
        that gave up on the run (it must never start)."""
        try:
            fd = os.open(self.file("launch"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(by)
        return True

    def launched_by(self) -> str | None:
        try:
            with open(self.file("launch")) as fh:
                return fh.read(64) or None
        except OSError:
            return None

    def runner_alive(self) -> bool:
        st = self.started()
        return st is not None and process_alive(int(st["runner_pid"]), float(st["time"]))

    def ffmpeg_alive(self) -> bool:
        st = self.started()
        return st is not None and process_alive(int(st["ffmpeg_pid"]), float(st["time"]))

    def supervisor(self) -> dict[str, Any] | None:
        """{"pid", "time"} written by the supervisor itself, first thing after it forked."""
        data = read_json(self.file("supervisor.json"))
        try:
            if data is not None:
                int(data["pid"]), float(data["time"])
                return data
        except (KeyError, TypeError, ValueError):
            pass
        return None

    def kill_run(self, wait_s: float) -> bool:
        """SIGKILL the supervisor's session (FFmpeg is in it, and dies with the supervisor in
        any case) and wait until both are gone. True once that is proven. A run whose
        supervisor has not taken it yet is denied its launch (``claim_launch``) and is done at
        once; one written by an agent that knew no launch claim is waited for up to ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while True:
            sup = self.supervisor()
            if sup is None and not os.path.exists(self.file("cmd.json")):
                return True  # the supervisor was never started
            if sup is None and self._launch_denied():
                return True  # started or not, its supervisor will never start FFmpeg
            sup_alive = sup is not None and process_alive(int(sup["pid"]), float(sup["time"]))
            if sup is not None and not sup_alive and not self.ffmpeg_alive():
                self.discard_partial()  # a killed run is never published
                return True
            if sup_alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(sup["pid"]), 9)
            self.signal_ffmpeg(9)
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def _launch_denied(self) -> bool:
        """Deny a supervisor that claims its launch (``cmd.json`` says it does) the start of
        FFmpeg. True once denied, by this call or by an earlier give-up."""
        if not (read_json(self.file("cmd.json")) or {}).get("launch_claim"):
            return False
        return self.claim_launch("killer") or self.launched_by() in ("killer", "watcher")

    def partial(self) -> str | None:
        """The temporary output this run's FFmpeg writes (None for streams)."""
        path = (read_json(self.file("cmd.json")) or {}).get("tmp_output")
        return path if isinstance(path, str) and path else None

    def discard_partial(self) -> None:
        if path := self.partial():
            remove_path(path)

    def is_live(self) -> bool:
        return self.exit() is None and self.runner_alive()

    def signal_ffmpeg(self, sig: int) -> bool:
        """Signal this run's FFmpeg, only if it is still the process this run started."""
        st = self.started()
        if st is None or not self.ffmpeg_alive():
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(st["ffmpeg_pid"]), sig)
            return True
        return False
