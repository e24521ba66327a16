"""The run-cgroup layout read from /proc (as the kernel writes it), and the limit files."""

import os
import time

import pytest

from agent import cgroups
from agent.limits import limited_argv, run_cgroup
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
    assert lay.dirs("n1", "j", 2)[0].endswith("/ffrtmp-runs/run@n1@j-2")


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


def _made(lay, cpu, mem):
    dirs = lay.dirs("n1", "j", 1)
    for p in lay.parents:
        os.makedirs(p, exist_ok=True)
    cgroups.create(lay, dirs, cpu, mem)
    return dirs


def test_v1_limit_files_are_written_as_the_kernel_reads_them(tmp_path):
    lay = cgroups.Layout(1, (str(tmp_path / "mem"), str(tmp_path / "cpu")))
    dirs = _made(lay, 150, 64)
    read = {n: _text(os.path.join(d, n)) for d in dirs for n in os.listdir(d)}
    assert read == {
        "cpu.cfs_period_us": "100000",
        "cpu.cfs_quota_us": "150000",
        "memory.limit_in_bytes": str(64 << 20),
    }
    with pytest.raises(FileExistsError):  # never a cgroup another run holds
        cgroups.create(lay, dirs, 150, 64)


def _write(path, text):
    with open(path, "w") as fh:
        fh.write(text)


def test_v2_limit_files_and_an_oom_kill_at_the_runs_own_limit(tmp_path):
    lay = cgroups.Layout(2, (str(tmp_path),))
    (d,) = _made(lay, 50, 128)
    assert _text(os.path.join(d, "cpu.max")) == "50000 100000"
    assert _text(os.path.join(d, "memory.max")) == str(128 << 20)
    assert _text(os.path.join(d, "memory.oom.group")) == "1"
    assert not cgroups.oom_killed([d])
    # killed by an OOM that is not this cgroup's limit (the host's, a parent's): not the job's
    _write(os.path.join(d, "memory.events"), "low 0\nhigh 0\nmax 0\noom 0\noom_kill 1\n")
    assert not cgroups.oom_killed([d])
    _write(os.path.join(d, "memory.events"), "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    assert cgroups.oom_killed([d])


def test_v1_an_oom_kill_counts_only_where_the_run_hit_its_own_limit(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    _write(d / "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    _write(d / "memory.failcnt", "0\n")
    _write(d / "memory.limit_in_bytes", str(1024 << 20))
    _write(d / "memory.max_usage_in_bytes", str(100 << 20))  # killed at a parent's 100 MB
    assert not cgroups.oom_killed([str(d)])
    _write(d / "memory.max_usage_in_bytes", str(1024 << 20))  # at its own limit (failcnt kept 0)
    assert cgroups.oom_killed([str(d)])
    _write(d / "memory.max_usage_in_bytes", "0\n")
    _write(d / "memory.failcnt", "990\n")
    assert cgroups.oom_killed([str(d)])


def test_the_sweep_removes_only_this_nodes_old_run_cgroups_without_a_live_supervisor(tmp_path):
    lay = cgroups.Layout(2, (str(tmp_path),))
    names = ["run@n1@a-1", "run@n1@b-1", "run@n1@c-1", "run@n1.x@d-1", "agent"]
    for n in names:
        (tmp_path / n).mkdir()
    past = time.time() - cgroups.STALE_AFTER_S - 5
    for n in ("run@n1@a-1", "run@n1@c-1", "run@n1.x@d-1", "agent"):
        os.utime(tmp_path / n, (past, past))
    assert cgroups.sweep(lay, "n1", keep={"run@n1@c-1"}) == 1
    assert sorted(os.listdir(tmp_path)) == ["agent", "run@n1.x@d-1", "run@n1@b-1", "run@n1@c-1"]


def test_limits_go_into_a_cgroup_where_there_is_one_and_are_refused_where_nothing_enforces_them(tmp_path):
    lay = cgroups.Layout(2, (str(tmp_path),))
    assert limited_argv(["ffmpeg"], "jx-1", None, 256, (lay, None)) == (["ffmpeg"], lay)
    assert limited_argv(["ffmpeg"], "jx-1", None, None, (None, None)) == (["ffmpeg"], None)
    with pytest.raises(PlanError) as exc:
        limited_argv(["ffmpeg"], "jx-1", None, 512, (None, None))
    assert exc.value.reason == "limits_unenforceable" and not exc.value.platform
    assert run_cgroup(lay, ("n1", "jx", 1), None, 256) == [str(tmp_path / "run@n1@jx-1")]
    (tmp_path / "file").write_text("")
    with pytest.raises(PlanError) as exc:
        run_cgroup(cgroups.Layout(2, (str(tmp_path / "file"),)), ("n1", "jx", 1), 50, None)
    assert exc.value.reason == "run_cgroup_failed" and exc.value.platform
