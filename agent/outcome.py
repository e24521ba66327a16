"""How an attempt ended, decided from what its run directory says (a pure function, so every
branch is unit-tested). Platform failures are retried (elsewhere, preferably); workload
failures end the job with FFmpeg's exit code and stderr tail."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

ENOSPC_MARKERS = ("No space left on device", "ENOSPC")
# How FFmpeg words a network input that broke off (it then ends the output and exits 0)
INPUT_CUT_MARKERS = (
    "Input/output error",
    "timed out",
    "Connection reset",
    "Broken pipe",
    "Network is unreachable",
)
# Output durations within this much of the expected one count as complete.
DURATION_TOLERANCE_S = 1.0
DURATION_TOLERANCE_RATIO = 0.02


@dataclass(frozen=True)
class Verdict:
    outcome: str  # completed | failed | canceled | timed_out | rejected | retry
    reason: str
    message: str

    @property
    def platform(self) -> bool:
        return self.outcome == "retry"


def signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _last_line(tail: str) -> str:
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def input_cut(tail: str, url: str) -> str | None:
    """The stderr line saying that the network input ``url`` broke off (a read timeout, a reset),
    if there is one: FFmpeg takes that for the end of the input and exits 0 with what it had."""
    for line in tail.splitlines():
        if (url in line or "Error during demuxing" in line) and any(m in line for m in INPUT_CUT_MARKERS):
            return line.strip()
    return None


def classify_exit(
    exit_info: dict[str, Any],
    stop_reason: str | None,
    tail: str,
    grace_s: float,
    stall_s: float = 0.0,
    network_input: str | None = None,
) -> Verdict | None:
    """The verdict for a run that ended, or None when FFmpeg exited 0 of its own accord (then
    the output decides). ``stop_reason`` is set when this attempt stopped FFmpeg itself;
    ``network_input`` is the input's URL when it is one."""
    rc = exit_info.get("returncode", 1)
    rc = rc if isinstance(rc, int) else 1
    sig = exit_info.get("signal")
    if stop_reason == "stalled":  # the source (or the mount it is on) stopped: retried
        return Verdict("retry", "input_stalled", f"no progress for {stall_s:g}s: the input stopped arriving")
    if stop_reason:
        msg = (
            "canceled by request"
            if stop_reason == "canceled"
            else f"ran past its timeout (grace {grace_s:g}s)"
        )
        return Verdict(stop_reason, stop_reason, msg)
    if exit_info.get("runner_error"):
        return Verdict("retry", "ffmpeg_not_started", str(exit_info["runner_error"]))
    if exit_info.get("orphaned"):
        # the run was killed because this attempt stopped watching it (a stall or freeze past
        # the orphan deadline): a platform failure, never the workload's fault
        return Verdict("retry", "lost_ownership", "the run was killed: its watcher stalled too long")
    if exit_info.get("oom_killed"):
        # the kernel killed it in the run's own cgroup, at the job's max_memory_mb: the job's
        # own limit, which another attempt would hit again
        msg = "FFmpeg needed more memory than max_memory_mb and was OOM-killed"
        return Verdict("failed", "memory_limit_exceeded", msg)
    if exit_info.get("egress_refused"):
        # FFmpeg was sent (a redirect, a playlist entry, a name that resolved again) somewhere
        # the URL policy refuses: say so with the policy's one message, whatever FFmpeg made of it
        return Verdict("rejected", "destination_not_allowed", "destination not allowed")
    if any(m in tail for m in ENOSPC_MARKERS):
        return Verdict("retry", "output_disk_full", f"the output disk is full: {_last_line(tail)}")
    if isinstance(sig, int) and sig > 0:
        # nobody in ffrtmp sent it (our own stops set stop_reason): the OOM killer, a crash
        return Verdict("retry", "ffmpeg_killed", f"FFmpeg was killed by {signal_name(sig)}")
    cut = input_cut(tail, network_input) if network_input else None
    if cut:  # not the end of the source: its output is short of what the job asked for
        return Verdict("retry", "input_stalled", f"the input broke off: {cut}")
    if rc != 0:
        last = _last_line(tail)
        return Verdict(
            "failed", "ffmpeg_error", f"FFmpeg exited with code {rc}" + (f": {last}" if last else "")
        )
    return None


def duration_ok(got: float | None, expected: float | None) -> bool:
    """Is an output of ``got`` seconds complete for an expected ``expected`` seconds?"""
    if expected is None or expected <= 0:
        return got is None or got > 0
    if got is None:
        return False
    tolerance = max(DURATION_TOLERANCE_S, DURATION_TOLERANCE_RATIO * expected)
    return abs(got - expected) <= tolerance


def input_signature(st: Any) -> tuple[int, int, int]:
    """What identifies an input file's content cheaply: size, mtime (ns), inode."""
    return (int(st.st_size), int(st.st_mtime_ns), int(st.st_ino))
