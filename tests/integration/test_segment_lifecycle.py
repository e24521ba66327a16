"""The lifecycle of a segmented job against a real Redis: the plan and its segments are
written once, under the parent's lease only; a waiting parent's cancel reaches its segments; the
sweep removes the segments of a job that ended whatever ended it."""

from __future__ import annotations

import os

import pytest

from agent import segments
from ffrtmp import keys, lifecycle
from ffrtmp.jobs import get_view, list_views
from ffrtmp.lifecycle import Ending, Lease, Refused
from ffrtmp.model import validate_spec
from ffrtmp.rqjob import fetch_job, rq_queue
from ffrtmp.submit import SubmitDefaults, segment_jobs, submit

pytestmark = pytest.mark.integration
PLAN_Q, CHILD_Q = "default.medium.plan", "default.medium"
CUTS = [0.0, 16.0, 32.0, 48.0, 60.0]


def _parent(conn) -> tuple[str, Lease]:
    spec = validate_spec({"scenario": "480p-h264", "input": "a.mp4", "segmented": True})
    jid = submit(conn, spec, SubmitDefaults())["id"]
    assert conn.lrem(rq_queue(PLAN_Q, conn).key, 0, jid) == 1  # it waits in a planner queue
    claimed = lifecycle.claim(conn, jid, "ex1", "n1", "n1.plan0", 3600)
    assert claimed is not None
    return jid, claimed[0]


def _plan(conn, jid: str, lease: Lease):
    job = fetch_job(conn, jid)
    spec = validate_spec(job.args[0])
    run = lifecycle.segment_run(job.meta)
    children = segment_jobs(conn, job, spec, segments.places(CUTS, run), run)
    return lifecycle.plan_segments(conn, lease, {"cuts": CUTS, "seconds": 15, "count": 4}, children)


def _segment_file(root, job: str, run: int) -> None:
    """The first segment file of one run of a job, as an agent would have left it."""
    d = segments.run_dir(str(root), job, run)
    os.makedirs(d)
    open(os.path.join(d, segments.segment_name(0)), "wb").close()


def test_the_plan_and_its_segments_are_written_once_under_the_lease(conn):
    jid, lease = _parent(conn)
    stale = Lease(jid, lease.attempt, "ex0", "n9", "n9.plan0")
    with pytest.raises(Refused):
        _plan(conn, jid, stale)
    assert conn.llen(rq_queue(CHILD_Q, conn).key) == 0  # a fenced attempt enqueued nothing
    plan = _plan(conn, jid, lease)
    kids = [f"{jid}-s{i}" for i in range(4)]
    assert plan["children"] == kids
    again = _plan(conn, jid, lease)  # a second attempt finds the plan: nothing new
    assert again["children"] == kids
    assert [x.decode() for x in conn.lrange(rq_queue(CHILD_Q, conn).key, 0, -1)] == kids
    child = get_view(conn, kids[2])
    assert child["parent"] == jid and child["segment"] == {"index": 2, "start": 32.0, "end": 48.0}
    assert child["spec"]["labels"] == {lifecycle.PARENT_LABEL: jid} and "segmented" not in child["spec"]
    assert get_view(conn, jid)["segments"]["count"] == 4
    listed, _ = list_views(conn, label=(lifecycle.PARENT_LABEL, jid))
    assert sorted(v["id"] for v in listed) == kids
    assert lifecycle.states_of(conn, [*kids, "jnothere234"]) == ["queued"] * 4 + [None]


def test_a_parent_canceled_between_attempts_cancels_its_segments(conn):
    jid, lease = _parent(conn)
    _plan(conn, jid, lease)
    assert lifecycle.platform_failure(conn, lease, "horse_died", "killed") == "requeued"
    assert lifecycle.cancel(conn, jid, "op") == "canceled"
    assert lifecycle.states_of(conn, [f"{jid}-s{i}" for i in range(4)]) == ["canceled"] * 4


def test_the_sweep_removes_the_segments_of_an_ended_job_and_only_those(conn, tmp_path):
    jid, lease = _parent(conn)
    _plan(conn, jid, lease)
    live, _ = _parent(conn)
    for job in (jid, live):
        _segment_file(tmp_path, job, 0)
    os.makedirs(segments.segment_dir(str(tmp_path), "not-a-job"))
    lifecycle.finish(conn, lease, Ending("failed", "agent_error", "its attempt died for good"))
    kid = f"{jid}-s1"
    claimed = lifecycle.claim(conn, kid, "exk", "n2", "n2.s0", 3600)
    assert claimed is not None  # a segment still running when its parent ended
    assert segments.sweep(conn, str(tmp_path)) == 0  # its segment is canceled first
    assert conn.exists(keys.cancel_key(kid))
    lifecycle.finish(conn, claimed[0], Ending("canceled", "canceled", "canceled"))
    assert segments.sweep(conn, str(tmp_path)) == 1
    assert not os.path.exists(segments.segment_dir(str(tmp_path), jid))
    assert os.path.exists(segments.segment_dir(str(tmp_path), live))  # its job still runs
    assert os.path.exists(segments.segment_dir(str(tmp_path), "not-a-job"))


def test_a_sweep_that_judged_a_run_ended_never_removes_a_later_runs_segments(conn, tmp_path):
    """The race with a manual retry: the sweep read the job ended in run 0, the retry then
    started run 1 and its first segment landed; only run 0's files go."""
    jid, lease = _parent(conn)
    _plan(conn, jid, lease)
    lifecycle.finish(conn, lease, Ending("failed", "output_incomplete", "segment 2 was short"))
    for run in (0, 1):
        _segment_file(tmp_path, jid, run)
    assert segments._removable(conn, jid, 0.0) is None  # its waiting segments are canceled first
    upto = segments._removable(conn, jid, 0.0)  # read while the job had ended
    assert upto == 0
    assert lifecycle.retry(conn, jid, "op") == "queued"  # then the retry, before the removal
    assert segments.remove_runs(segments.segment_dir(str(tmp_path), jid), upto)
    assert not os.path.exists(segments.run_dir(str(tmp_path), jid, 0))
    later = segments.run_dir(str(tmp_path), jid, 1)
    assert os.path.exists(os.path.join(later, segments.segment_name(0)))
    assert segments.sweep(conn, str(tmp_path)) == 0  # the retried job runs: nothing of it goes
    assert os.path.exists(later)


def test_a_retry_of_a_job_that_ended_before_it_planned_starts_a_run_of_its_own(conn):
    jid, lease = _parent(conn)
    lifecycle.finish(conn, lease, Ending("failed", "input_unreadable", "no video"))
    assert lifecycle.retry(conn, jid, "op") == "queued"
    assert lifecycle.segment_run(fetch_job(conn, jid).meta) == 1  # not run 0's directory again


def test_a_manual_retry_of_a_segmented_job_starts_a_run_with_new_segments(conn):
    """Its old segments' files went with its end: the retry plans again, under new ids."""
    jid, lease = _parent(conn)
    _plan(conn, jid, lease)
    lifecycle.finish(conn, lease, Ending("failed", "output_incomplete", "segment 2 was short"))
    assert lifecycle.retry(conn, jid, "op") == "queued"
    assert get_view(conn, jid).get("segments") is None
    assert conn.lrem(rq_queue(PLAN_Q, conn).key, 0, jid) == 1
    claimed = lifecycle.claim(conn, jid, "ex2", "n1", "n1.plan0", 3600)
    plan = _plan(conn, jid, claimed[0])
    assert plan["children"] == [f"{jid}-r1s{i}" for i in range(4)] and plan["run"] == 1
    old = [f"{jid}-s{i}" for i in range(4)]
    assert lifecycle.states_of(conn, old) == ["canceled"] * 4  # the earlier run's never run now
    assert all(keys.JOB_ID.fullmatch(c) and keys.is_child_id(c) for c in plan["children"])
