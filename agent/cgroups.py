"""Per-run cgroups: the kernel enforces a job's ``max_cpu_percent`` and ``max_memory_mb`` on its
FFmpeg, with an agent that does not run as root. This module owns the layout; the attempt
makes a run's cgroup, the run's supervisor puts FFmpeg in it and reads how it ended.

Two layouts, chosen from what the agent's own process sees (``/proc/self/cgroup`` and
``/proc/self/mountinfo``):

- **cgroup v2**: the unit is delegated (``Delegate=yes``) and systemd puts the agent's
  processes in a subgroup (``DelegateSubgroup=agent``, systemd 254 and newer), so the
  service's own cgroup holds no process and can give ``cpu`` and ``memory`` to its children:
  each run is a sibling of ``agent``. Without that subgroup the kernel's no-internal-process
  rule makes systemd fail the unit's next start while a limited run lives in it (systemd 252
  and older): there limits are refused, not half-enforced.
- **cgroup v1** (legacy and hybrid hosts): systemd delegates only its own hierarchy there, so
  the unit's root pre-start step (``python -m agent.cgroups prepare USER GROUP``) makes
  ``ffrtmp-runs`` under the agent's cgroup in the ``memory`` and ``cpu`` hierarchies and hands
  them to the agent's user; runs are its children. v1 has no internal-process rule, so a
  restart under live runs is fine.

A run's cgroup survives an agent restart with its FFmpeg (the next agent re-adopts the run);
the supervisor removes it when FFmpeg has ended, and the agent's sweep removes any left empty.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from dataclasses import dataclass

V1_RUNS = "ffrtmp-runs"  # the agent's own v1 subtree, made by ``prepare``
V2_SUBGROUP = "agent"  # DelegateSubgroup= of the agent's unit
RUN_PREFIX = "run@"  # run@<node>@<job>-<attempt>: '@' is in no node name or job id
PERIOD_US = 100_000
STALE_AFTER_S = 120.0  # an empty run cgroup this old belongs to no run (FFmpeg joins in ms)


@dataclass(frozen=True)
class Layout:
    version: int
    parents: tuple[str, ...]  # v2: the service cgroup; v1: the memory and the cpu subtree

    def dirs(self, node: str, job_id: str, attempt: int) -> list[str]:
        return [os.path.join(p, run_name(node, job_id, attempt)) for p in self.parents]


class CgroupsBusy(Exception):
    """The agent's cgroup is delegated but cannot give controllers to runs yet (it still holds
    processes of an earlier agent): limited jobs are a platform failure here for now."""


def run_name(node: str, job_id: str = "", attempt: int | None = None) -> str:
    """A run's cgroup name; with the node alone, the prefix of all of that node's."""
    return f"{RUN_PREFIX}{node}@" + (f"{job_id}-{attempt}" if attempt is not None else "")


def _unescape(field: str) -> str:
    """mountinfo's octal escapes (``\\040`` for a space)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def _mounts(mountinfo: str) -> tuple[dict[str, tuple[str, str]], str | None]:
    """v1 controller -> (mount root, mount point), and the cgroup2 mount point."""
    v1: dict[str, tuple[str, str]] = {}
    v2 = None
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        fields, tail = pre.split(), post.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        root, point = _unescape(fields[3]), _unescape(fields[4])
        if tail[0] == "cgroup2":
            v2 = v2 or point
        elif tail[0] == "cgroup":
            for opt in tail[2].split(","):
                v1.setdefault(opt, (root, point))
    return v1, v2


def _paths(proc_cgroup: str) -> dict[str, str]:
    """controller -> this process's cgroup path ("" for the v2 line)."""
    out: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for ctrl in parts[1].split(",") if parts[1] else [""]:
                out[ctrl] = parts[2]
    return out


def _below(point: str, root: str, path: str) -> str | None:
    """Where ``path`` (as /proc/self/cgroup names it) is under a mount of ``root``."""
    if root != "/" and not (path == root or path.startswith(root + "/")):
        return None
    rel = path[len(root) :] if root != "/" else path
    return os.path.normpath(point + "/" + rel.lstrip("/"))


def locate(proc_cgroup: str, mountinfo: str) -> Layout | None:
    """The layout this process would use (not yet checked for permission), or None."""
    v1, v2 = _mounts(mountinfo)
    paths = _paths(proc_cgroup)
    if "memory" in v1 and "cpu" in v1:
        own = [_below(*reversed(v1[c]), paths.get(c, "")) for c in ("memory", "cpu")]
        if None in own:
            return None
        return Layout(1, tuple(os.path.join(str(d), V1_RUNS) for d in own))
    if v2 is not None and "" in paths:
        own2 = _below(v2, "/", paths[""])
        if own2 and os.path.basename(own2) == V2_SUBGROUP:
            return Layout(2, (os.path.dirname(own2),))
    return None


def _locate_self() -> Layout | None:
    return locate(_read("/proc/self/cgroup"), _read("/proc/self/mountinfo"))


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _write_if_there(path: str, value: str) -> None:
    """Write a control file the kernel may not offer (cgroupfs never creates one)."""
    if os.path.exists(path):
        _write(path, value)


def _usable(lay: Layout) -> bool:
    """Can this process make run cgroups there (and, on v2, are cpu and memory given)?
    CgroupsBusy where the v2 subtree is ours but still holds an earlier agent's processes."""
    if lay.version == 1:
        return all(os.path.isdir(p) and os.access(p, os.W_OK | os.X_OK) for p in lay.parents)
    parent = lay.parents[0]
    if not os.access(parent, os.W_OK | os.X_OK):
        return False
    try:
        given = _read(os.path.join(parent, "cgroup.controllers")).split()
        if not {"cpu", "memory"} <= set(given):
            return False
        enabled = set(_read(os.path.join(parent, "cgroup.subtree_control")).split())
        if not {"cpu", "memory"} <= enabled:
            _write(os.path.join(parent, "cgroup.subtree_control"), "+cpu +memory")
    except OSError as exc:
        if exc.errno == errno.EBUSY:  # the no-internal-process rule: runs of the agent before
            raise CgroupsBusy(f"{parent} still holds processes of an earlier agent") from None
        return False
    return True


_found: Layout | None = None


def layout() -> Layout | None:
    """This agent's run-cgroup layout, where it may use one. A layout found is kept for the
    process (the slots' horses inherit it); an absent one is looked for again next time."""
    global _found
    if _found is not None:
        return _found
    try:
        lay = _locate_self()
    except OSError:
        return None
    if lay is not None and lay.version == 1 and os.geteuid() == 0:
        for p in lay.parents:  # root needs no prepare step
            with contextlib.suppress(OSError):
                os.makedirs(p, exist_ok=True)
    if lay is not None and _usable(lay):
        _found = lay
    return _found


def create(lay: Layout, dirs: list[str], cpu_percent: int | None, memory_mb: int | None) -> None:
    """Make a run's cgroup (``lay.dirs``, new: never one another run holds) with its limits
    set; OSError, with nothing left behind, if not."""
    made: list[str] = []
    try:
        for d in dirs:
            os.mkdir(d)
            made.append(d)
        if lay.version == 2:
            _set_v2(dirs[0], cpu_percent, memory_mb)
        else:
            _set_v1(dirs[0], dirs[1], cpu_percent, memory_mb)
    except OSError:
        remove(made)
        raise


def _set_v2(d: str, cpu_percent: int | None, memory_mb: int | None) -> None:
    if cpu_percent is not None:
        _write(os.path.join(d, "cpu.max"), f"{cpu_percent * PERIOD_US // 100} {PERIOD_US}")
    if memory_mb is not None:
        _write(os.path.join(d, "memory.max"), str(memory_mb * 1024 * 1024))
        _write(os.path.join(d, "memory.oom.group"), "1")
        _write_if_there(os.path.join(d, "memory.swap.max"), "0")  # absent: no swap accounting


def _set_v1(mem: str, cpu: str, cpu_percent: int | None, memory_mb: int | None) -> None:
    if cpu_percent is not None:
        _write(os.path.join(cpu, "cpu.cfs_period_us"), str(PERIOD_US))
        _write(os.path.join(cpu, "cpu.cfs_quota_us"), str(cpu_percent * PERIOD_US // 100))
    if memory_mb is not None:
        limit = str(memory_mb * 1024 * 1024)
        _write(os.path.join(mem, "memory.limit_in_bytes"), limit)
        _write_if_there(os.path.join(mem, "memory.memsw.limit_in_bytes"), limit)  # memory+swap


def join(dirs: list[str]) -> None:
    """Move the calling process into the run's cgroup (FFmpeg's child, just before exec)."""
    for d in dirs:
        _write(os.path.join(d, "cgroup.procs"), "0")


def _counters(path: str) -> dict[str, int]:
    """A flat-keyed cgroup file ("key value" lines, or one number), {} where unreadable."""
    try:
        text = _read(path)
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if value.strip().isdigit():
            out[key or "value"] = int(value)
    return out


def oom_killed(dirs: list[str]) -> bool:
    """Did the kernel kill the run at its own memory limit? An OOM kill counts only when the
    run's cgroup also hit its limit (v2 ``oom``, v1 ``failcnt``): a host-wide OOM, or the limit
    of a cgroup above it, kills without that, and is no fault of the job."""
    for d in dirs:
        events = _counters(os.path.join(d, "memory.events"))
        if events:
            return events.get("oom_kill", 0) > 0 and events.get("oom", 0) > 0
        control = _counters(os.path.join(d, "memory.oom_control"))
        if control:
            return control.get("oom_kill", 0) > 0 and any(_v1_reached(d, kind) for kind in ("", "memsw."))
    return False


def _v1_reached(d: str, kind: str) -> bool:
    """Did the run's v1 usage (``kind`` "" or "memsw.") reach its own limit? ``failcnt`` says so
    where the kernel keeps it; the peak usage at the limit (within 1 %) says so everywhere."""

    def value(name: str) -> int:
        return _counters(os.path.join(d, f"memory.{kind}{name}")).get("value", 0)

    limit = value("limit_in_bytes")
    return value("failcnt") > 0 or (limit > 0 and value("max_usage_in_bytes") >= limit * 0.99)


def remove(dirs: list[str]) -> None:
    """Remove the run's cgroup once nothing runs in it (a populated one stays)."""
    for d in dirs:
        with contextlib.suppress(OSError):
            os.rmdir(d)


def sweep(lay: Layout, node: str, keep: set[str], min_age_s: float = STALE_AFTER_S) -> int:
    """Remove this node's run cgroups older than ``min_age_s`` but those named in ``keep``
    (runs whose supervisor lives: it reads the cgroup once FFmpeg has ended, then removes
    it); the kernel refuses to remove one that still holds a process."""
    removed = 0
    now = time.time()
    mine = run_name(node)
    for parent in lay.parents:
        with contextlib.suppress(OSError), os.scandir(parent) as it:
            for entry in it:
                if not entry.name.startswith(mine) or entry.name in keep:
                    continue
                if not entry.is_dir(follow_symlinks=False):
                    continue
                with contextlib.suppress(OSError):
                    if now - entry.stat(follow_symlinks=False).st_mtime >= min_age_s:
                        os.rmdir(entry.path)
                        removed += 1
    return removed


def prepare(user: str, group: str) -> str:
    """The unit's root pre-start step: on v1, make the agent's subtrees and hand them to its
    user (systemd delegates only its own hierarchy there). Says what it found; never fails
    the start (an agent without a usable layout refuses limited jobs)."""
    try:
        lay = _locate_self()
    except OSError as exc:
        return f"no cgroup information: {exc}"
    if lay is None:
        return "no usable cgroup layout: jobs with CPU or memory limits are refused on this node"
    if lay.version == 2:
        return f"cgroup v2, runs under {lay.parents[0]} (delegated by systemd)"
    import shutil

    try:
        for p in lay.parents:
            os.makedirs(p, exist_ok=True)
            for path in (p, os.path.join(p, "cgroup.procs"), os.path.join(p, "tasks")):
                shutil.chown(path, user, group)
    except (OSError, LookupError) as exc:
        return f"cannot prepare {', '.join(lay.parents)}: {exc}"
    return f"cgroup v1, runs under {', '.join(lay.parents)} (owned by {user})"


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "prepare":
        print("usage: python -m agent.cgroups prepare USER GROUP", file=sys.stderr)
        sys.exit(2)
    print(prepare(sys.argv[2], sys.argv[3]))
