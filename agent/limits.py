"""Resource limits for a run: how this node enforces a job's ``max_cpu_percent`` and
``max_memory_mb``. Preferred: a cgroup of the run's own in the agent's delegated subtree
(``agent.cgroups``, works for an unprivileged agent); else a transient systemd scope
(``systemd-run --scope``, which only a privileged agent may create); a job that asks for
limits where neither works is refused, never silently run unlimited."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass, field

from . import cgroups
from .pipeline import PlanError


@functools.lru_cache(maxsize=1)
def systemd_run_path() -> str | None:
    """systemd-run, if this host's PID 1 is systemd and this process may create transient
    scopes there (an unprivileged agent usually may not: systemd answers "interactive
    authentication required"). Tried once with a real scope; None means no scopes here."""
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


def warm() -> None:
    """Look both ways up once, before the slot forks a horse per job (they inherit them)."""
    cgroups.layout()
    systemd_run_path()


@dataclass
class Limited:
    """A run's argv with its limits applied, and the cgroup directories FFmpeg joins."""

    argv: list[str]
    cgroup_dirs: list[str] = field(default_factory=list)


def apply_limits(
    argv: list[str],
    run_name: str,
    max_cpu_percent: int | None,
    max_memory_mb: int | None,
    layout: cgroups.Layout | None,
    systemd_run: str | None,
) -> Limited:
    """The run as it must start: unchanged without limits; else in its own cgroup (made
    here) or wrapped in a scope. PlanError where neither is possible, or the cgroup cannot
    be made (a platform failure: another node may manage)."""
    if max_cpu_percent is None and max_memory_mb is None:
        return Limited(argv)
    if layout is not None:
        try:
            return Limited(argv, cgroups.create(layout, run_name, max_cpu_percent, max_memory_mb))
        except OSError as exc:
            msg = f"cannot make the run's cgroup: {exc}"
            raise PlanError("run_cgroup_failed", msg, platform=True) from exc
    if systemd_run is None:
        raise PlanError(
            "limits_unenforceable",
            "this job sets max_cpu_percent/max_memory_mb, but this node can enforce neither "
            "(no delegated cgroup subtree, no systemd scopes); jobs with limits are refused "
            "rather than run unlimited",
        )
    props = []
    if max_cpu_percent is not None:
        props += ["-p", f"CPUQuota={max_cpu_percent}%"]
    if max_memory_mb is not None:
        props += ["-p", f"MemoryMax={max_memory_mb}M", "-p", "MemorySwapMax=0"]
    unit = f"ffrtmp-job-{run_name}"
    return Limited([systemd_run, "--scope", "--quiet", "--collect", f"--unit={unit}", *props, "--", *argv])
