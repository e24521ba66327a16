"""Resource limits for a run: how this node enforces a job's ``max_cpu_percent`` and
``max_memory_mb``. Preferred: a cgroup of the run's own in the agent's delegated subtree
(``agent.cgroups``, works for an unprivileged agent); else a transient systemd scope
(``systemd-run --scope``, which only a privileged agent may create); a job that asks for
limits where neither works is refused, never silently run unlimited."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess

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
    with contextlib.suppress(cgroups.CgroupsBusy):
        cgroups.layout()
    systemd_run_path()


def enforcers() -> tuple[cgroups.Layout | None, str | None]:
    """What this node can enforce limits with: its run-cgroup layout, systemd-run."""
    try:
        layout = cgroups.layout()
    except cgroups.CgroupsBusy as exc:
        raise PlanError("run_cgroup_failed", f"limits cannot be enforced yet: {exc}", platform=True) from None
    return layout, systemd_run_path()


def limited_argv(
    argv: list[str],
    run: str,
    max_cpu_percent: int | None,
    max_memory_mb: int | None,
    enforce: tuple[cgroups.Layout | None, str | None],
) -> tuple[list[str], cgroups.Layout | None]:
    """The run's argv and the layout its own cgroup is made in at launch (``run_cgroup``):
    unchanged without limits; else a cgroup where this agent has a subtree, or the argv
    wrapped in a systemd scope. PlanError where neither can enforce them."""
    if max_cpu_percent is None and max_memory_mb is None:
        return argv, None
    layout, systemd_run = enforce
    if layout is not None:
        return argv, layout
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
    unit = f"ffrtmp-job-{run}"
    return [systemd_run, "--scope", "--quiet", "--collect", f"--unit={unit}", *props, "--", *argv], None


def run_cgroup(
    layout: cgroups.Layout,
    run: tuple[str, str, int],
    max_cpu_percent: int | None,
    max_memory_mb: int | None,
) -> list[str]:
    """Make the run's own cgroup (``run``: node, job id, attempt), just before its supervisor
    starts (a platform failure, for another node to try, where it cannot be made)."""
    dirs = layout.dirs(*run)
    try:
        cgroups.create(layout, dirs, max_cpu_percent, max_memory_mb)
    except OSError as exc:
        raise PlanError("run_cgroup_failed", f"cannot make the run's cgroup: {exc}", platform=True) from exc
    return dirs
