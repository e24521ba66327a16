"""Resource limits for a run. On a systemd host FFmpeg runs in a transient scope
(``systemd-run --scope``) whose CPUQuota/MemoryMax the kernel enforces; elsewhere a job that
asks for limits is refused, never silently run unlimited."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

from .pipeline import PlanError


@functools.lru_cache(maxsize=1)
def systemd_run_path() -> str | None:
    """systemd-run, if this host's PID 1 is systemd and this process may create transient
    scopes there (an unprivileged agent usually may not: systemd answers "interactive
    authentication required"). Tried once with a real scope; None means no limits here."""
    if not os.path.isdir("/run/systemd/system"):
        return None
    path = shutil.which("systemd-run")
    if path is None:
        return None
    try:
        trial = subprocess.run(
            [path, "--scope", "--quiet", "--collect", "--", "true"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if trial.returncode == 0 else None


def apply_limits(
    argv: list[str],
    job_id: str,
    attempt: int,
    max_cpu_percent: int | None,
    max_memory_mb: int | None,
    systemd_run: str | None,
) -> list[str]:
    """The argv to run: unchanged without limits, wrapped in a scope with them."""
    if max_cpu_percent is None and max_memory_mb is None:
        return argv
    if systemd_run is None:
        raise PlanError(
            "limits_unenforceable",
            "this job sets max_cpu_percent/max_memory_mb, but this node has no systemd to enforce them "
            "(jobs with limits are refused rather than run unlimited)",
        )
    props = []
    if max_cpu_percent is not None:
        props += ["-p", f"CPUQuota={max_cpu_percent}%"]
    if max_memory_mb is not None:
        props += ["-p", f"MemoryMax={max_memory_mb}M", "-p", "MemorySwapMax=0"]
    unit = f"ffrtmp-job-{job_id}-{attempt}"
    return [systemd_run, "--scope", "--quiet", "--collect", f"--unit={unit}", *props, "--", *argv]
