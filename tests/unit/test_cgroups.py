"""The run-cgroup layout read from /proc (as the kernel writes it), and the limit files."""

import os
import time

import pytest

from agent import cgroups
from agent.limits import apply_limits
from agent.pipeline import PlanError

HYBRID_MOUNTS = """\
30 24 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
31 24 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
32 24 0:28 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
33 24 0:29 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
"""
HYBRID_SELF = """\
9:pids:/system.slice/ffrtmp-agent.service
4:memory:/system.slice/ffrtmp-agent.service
2:cpu,cpuacct:/system.slice/ffrtmp-agent.service
0::/system.slice/ffrtmp-agent.service
"""
# a privileged container: each hierarchy is mounted from the container's own cgroup
CONTAINER_MOUNTS = """\
233 229 0:32 /libpod_parent/libpod-ab /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
234 229 0:33 /libpod_parent/libpod-ab /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
"""
CONTAINER_SELF = "4:memory:/libpod_parent/libpod-ab\n1:cpu:/libpod_parent/libpod-ab/x\n"
V2_MOUNTS = "25 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def _text(path):
    with open(path) as fh:
        return fh.read()


def test_v1_runs_live_under_the_agents_own_cgroup_in_the_memory_and_cpu_hierarchies():
    lay = cgroups.locate(HYBRID_SELF, HYBRID_MOUNTS)
    assert lay == cgroups.Layout(
        1,
        (
            "/sys/fs/cgroup/memory/system.slice/ffrtmp-agent.service/ffrtmp-runs",
            "/sys/fs/cgroup/cpu,cpuacct/system.slice/ffrtmp-agent.service/ffrtmp-runs",
        ),
    )
    assert lay.dirs("j-2")[0].endswith("/ffrtmp-runs/run.j-2")


def test_v1_paths_are_taken_relative_to_each_mounts_root():
    lay = cgroups.locate(CONTAINER_SELF, CONTAINER_MOUNTS)
    assert lay is not None
    assert lay.parents == ("/sys/fs/cgroup/memory/ffrtmp-runs", "/sys/fs/cgroup/cpu/x/ffrtmp-runs")
    # a process outside the mounted part of the tree has no usable path there
    assert cgroups.locate("4:memory:/elsewhere\n1:cpu:/elsewhere\n", CONTAINER_MOUNTS) is None


def test_v2_needs_the_agent_in_its_delegated_subgroup():
    lay = cgroups.locate("0::/system.slice/ffrtmp-agent.service/agent\n", V2_MOUNTS)
    assert lay == cgroups.Layout(2, ("/sys/fs/cgroup/system.slice/ffrtmp-agent.service",))
    # in the service's own cgroup (no DelegateSubgroup=, systemd 252 and older) it would make
    # the unit's next start fail while a limited run lives: no layout, limits refused
    assert cgroups.locate("0::/system.slice/ffrtmp-agent.service\n", V2_MOUNTS) is None
    assert cgroups.locate("", "") is None
    assert cgroups.locate("0::/x/agent\n", "garbage line\n") is None


def test_v1_limit_files_are_written_as_the_kernel_reads_them(tmp_path):
    lay = cgroups.Layout(1, (str(tmp_path / "mem"), str(tmp_path / "cpu")))
    dirs = cgroups.create(lay, "j-1", 150, 64)
    read = {n: _text(os.path.join(d, n)) for d in dirs for n in os.listdir(d)}
    assert read == {
        "cpu.cfs_period_us": "100000",
        "cpu.cfs_quota_us": "150000",
        "memory.limit_in_bytes": str(64 << 20),
    }


def test_v2_limit_files_and_the_oom_count(tmp_path):
    lay = cgroups.Layout(2, (str(tmp_path),))
    (d,) = cgroups.create(lay, "j-1", 50, 128)
    assert _text(os.path.join(d, "cpu.max")) == "50000 100000"
    assert _text(os.path.join(d, "memory.max")) == str(128 << 20)
    assert _text(os.path.join(d, "memory.oom.group")) == "1"
    assert cgroups.oom_kills([d]) == 0
    with open(os.path.join(d, "memory.events"), "w") as fh:
        fh.write("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    assert cgroups.oom_kills([d]) == 1


def test_the_sweep_removes_only_old_empty_run_cgroups(tmp_path):
    lay = cgroups.Layout(2, (str(tmp_path),))
    old, young, other = tmp_path / "run.a-1", tmp_path / "run.b-1", tmp_path / "agent"
    for d in (old, young, other):
        d.mkdir()
    past = time.time() - cgroups.STALE_AFTER_S - 5
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    assert cgroups.sweep(lay) == 1
    assert not old.exists() and young.exists() and other.exists()


def test_limits_go_into_a_cgroup_where_there_is_one_and_are_refused_where_nothing_enforces_them(tmp_path):
    lay = cgroups.Layout(2, (str(tmp_path),))
    limited = apply_limits(["ffmpeg"], "jx-1", None, 256, lay, None)
    assert limited.argv == ["ffmpeg"] and limited.cgroup_dirs == [str(tmp_path / "run.jx-1")]
    assert apply_limits(["ffmpeg"], "jx-1", None, None, None, None).cgroup_dirs == []
    with pytest.raises(PlanError) as exc:
        apply_limits(["ffmpeg"], "jx-1", None, 512, None, None)
    assert exc.value.reason == "limits_unenforceable" and not exc.value.platform
    broken = cgroups.Layout(2, (str(tmp_path / "file"),))
    (tmp_path / "file").write_text("")
    with pytest.raises(PlanError) as exc:
        apply_limits(["ffmpeg"], "jx-1", 50, None, broken, None)
    assert exc.value.reason == "run_cgroup_failed" and exc.value.platform
