"""The lifecycle against a real redis-server and RQ's own registries: every transition is
fenced by the attempt's lease, so late, duplicate and stale writers change nothing."""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import time

import pytest
from rq.job import JobStatus

from coordinator.config import CoordinatorConfig
from coordinator.recovery import Recovery
from ffrtmp import keys, lifecycle
from ffrtmp.auth import KeyRing
from ffrtmp.jobs import get_view, list_views
from ffrtmp.lifecycle import Ending, Lease, Refused
from ffrtmp.model import validate_spec
from ffrtmp.nodes import fleet_summary, get_node, write_heartbeat
from ffrtmp.rqjob import SERIALIZER, SafeJob, fetch_job, rq_queue
from ffrtmp.submit import SubmitDefaults, submit

pytestmark = pytest.mark.integration
Q = "default.medium"


def _submit(conn, **over) -> str:
    spec = validate_spec({"scenario": "480p-h264", **over})
    return submit(conn, spec, SubmitDefaults(max_attempts=over.pop("max_attempts", 3)))["id"]


def _worker(conn, name: str):
    from agent.worker import FleetWorker

    w = FleetWorker(
        [rq_queue(Q, conn)],
        name=name,
        connection=conn,
        job_class=SafeJob,
        serializer=SERIALIZER,
        prepare_for_work=False,
    )
    w.node = name.split(".")[0]
    w.work_dir = tempfile.mkdtemp(prefix="ffr-test-work-")
    return w


def _pop_and_claim(conn, job_id: str, worker_name: str = "n1.s0") -> tuple[Lease, object]:
    """What a worker does: pop the job, open an RQ execution, claim the lease."""
    q = rq_queue(Q, conn)
    assert conn.lrem(q.key, 0, job_id) == 1
    w = _worker(conn, worker_name)
    job = fetch_job(conn, job_id)
    execution = w.prepare_execution(job)
    claimed = lifecycle.claim(conn, job_id, execution.id, w.node, w.name, 3600)
    assert claimed is not None
    return claimed[0], execution


def _states(conn, job_id):
    return [(h["from"], h["to"], h["reason"]) for h in get_view(conn, job_id)["history"]]


def test_a_completed_attempt_lands_in_rq_and_our_record_at_once(conn):
    jid = _submit(conn)
    lease, _ = _pop_and_claim(conn, jid)
    assert lifecycle.started(conn, lease, {"output": "/x.mp4"}, "default", 0.5) is False
    assert lifecycle.progress(conn, lease, {"out_time_s": 1.0})
    assert get_view(conn, jid)["progress"] == {"out_time_s": 1.0}
    lifecycle.finish(conn, lease, Ending("completed", "ffmpeg_exit_0", "ok", result={"size_bytes": 10}))
    job = fetch_job(conn, jid)
    assert job.get_status() == JobStatus.FINISHED
    assert job.finished_job_registry.get_job_ids() == [jid]
    assert conn.zcard(rq_queue(Q, conn).started_job_registry.key) == 0
    assert not conn.exists(keys.lease_key(jid)) and conn.zscore(keys.PENDING, jid) is None
    assert _states(conn, jid) == [
        (None, "queued", "submitted"),
        ("queued", "running", "started"),
        ("running", "completed", "ffmpeg_exit_0"),
    ]
    assert [v["id"] for v in list_views(conn, state="completed")[0]] == [jid]
    assert list_views(conn, state="running")[0] == []
    assert conn.ttl(keys.history_key(jid)) > 0


def test_every_write_of_an_attempt_that_lost_its_lease_is_refused(conn):
    """A frozen horse wakes up after recovery requeued its job and a new attempt started."""
    jid = _submit(conn)
    old, old_exec = _pop_and_claim(conn, jid, "n1.s0")
    lifecycle.started(conn, old, {}, "default", 0)
    reg = rq_queue(Q, conn).started_job_registry.key
    member = f"{jid}:{old_exec.id}"
    assert lifecycle.abandon(conn, jid, old_exec.id, reg, lambda _l: "node_lost") == "renewed"  # not expired
    conn.zadd(reg, {member: time.time() - 1})
    assert lifecycle.abandon(conn, jid, old_exec.id, reg, lambda _l: "node_lost") == "requeued"
    new, _ = _pop_and_claim(conn, jid, "n2.s0")
    assert new.attempt == old.attempt + 1
    # what runs where follows the lease, not the nodes the job ran on before
    assert lifecycle.leases_on(conn, "n2") == [new] and lifecycle.leases_on(conn, "n1") == []
    # a node whose heartbeat has not shown the run yet still shows it running (a drain waits)
    write_heartbeat(conn, {"name": "n2", "running": []})
    assert [r["job"] for r in get_node(conn, "n2", 30)["running"]] == [jid]
    write_heartbeat(conn, {"name": "n1", "running": "not a list"})
    assert get_node(conn, "n1", 30)["running"] == []
    for write in (
        lambda: lifecycle.started(conn, old, {}, "default", 0),
        lambda: lifecycle.finish(conn, old, Ending("completed", "ffmpeg_exit_0", "ok")),
        lambda: lifecycle.platform_failure(conn, old, "runner_died", "x"),
    ):
        with pytest.raises(Refused):
            write()
    assert lifecycle.progress(conn, old, {"frame": 1}) is False
    v = get_view(conn, jid)
    assert v["state"] == "running" and v["node"] == "n2" and v["attempts"] == new.attempt
    assert int(conn.hget(keys.FENCED, "finish_completed")) == 1
    assert rq_queue(Q, conn).count == 0  # requeued once, popped once: in no queue now
    # the late abandon of the old execution (its entry came back) only removes that entry
    conn.zadd(reg, {member: time.time() - 1})
    assert lifecycle.abandon(conn, jid, old_exec.id, reg, lambda _l: "node_lost") == "stale"
    assert get_view(conn, jid)["state"] == "running"


def test_a_cold_stop_hit_by_the_monitor_alarm_still_hands_the_run_over(conn, monkeypatch):
    """A handover's cold stop kills the horse inside RQ's signal handler; the monitor's SIGALRM
    landing between the kill and the reap used to replace RQ's SystemExit, so the worker
    reaped a horse killed by signal 9, reported it dead and stopped the run it was leaving to
    the next agent. The alarm is forced into that window here."""
    from datetime import timedelta

    from rq.timeouts import HorseMonitorTimeoutException, UnixSignalDeathPenalty
    from rq.utils import now as rq_now

    jid = _submit(conn)
    lease, _execution = _pop_and_claim(conn, jid)
    w = _worker(conn, "n1.s0")
    w._lease = lease
    horse = os.fork()
    if horse == 0:  # pragma: no cover - the child only waits to be killed
        os.setpgrp()
        time.sleep(60)
        os._exit(0)
    w._horse_pid = horse
    w._shutdown_requested_date = rq_now() - timedelta(seconds=5)  # the warm stop, earlier
    kill = w.kill_horse

    def kill_then_alarm(*a):
        kill(*a)
        signal.raise_signal(signal.SIGALRM)  # the monitor's alarm, due right now

    monkeypatch.setattr(w, "kill_horse", kill_then_alarm)
    penalty = UnixSignalDeathPenalty(60, HorseMonitorTimeoutException)
    penalty.setup_death_penalty()
    try:
        with pytest.raises(SystemExit):
            w.request_force_stop(signal.SIGTERM, None)
    finally:
        penalty.cancel_death_penalty()
    with pytest.raises(ChildProcessError):
        os.waitpid(horse, os.WNOHANG)  # reaped by the stop itself
    # were the monitor loop to see the death anyway, the run is not reported dead
    w.handle_job_failure(fetch_job(conn, jid), rq_queue(Q, conn), exc_string="waitpid returned 9")
    view = get_view(conn, jid)
    assert view["state"] == "running" and view["attempts"] == 1
    assert conn.get(keys.lease_key(jid)).decode() == lease.token


def test_a_duplicate_in_a_queue_never_runs_beside_the_running_attempt(conn):
    jid = _submit(conn)
    lease, _ = _pop_and_claim(conn, jid)
    rq_queue(Q, conn).push_job_id(jid)  # a duplicate, however it got there
    w = _worker(conn, "n2.s0")
    job = fetch_job(conn, jid)
    execution = w.prepare_execution(job)
    assert lifecycle.claim(conn, jid, execution.id, "n2", "n2.s0", 60) is None
    assert conn.get(keys.lease_key(jid)).decode() == lease.token


def test_a_worker_handling_a_horse_death_twice_requeues_once(conn):
    """RQ's worker may report a dead horse after the attempt settled, or twice."""
    jid = _submit(conn)
    lease, execution = _pop_and_claim(conn, jid)
    w = _worker(conn, "n1.s0")
    w._lease = lease
    job = fetch_job(conn, jid)
    w.handle_job_failure(job, rq_queue(Q, conn), exc_string="horse killed", execution=execution)
    w.handle_job_failure(job, rq_queue(Q, conn), exc_string="horse killed", execution=execution)
    assert rq_queue(Q, conn).job_ids == [jid]
    reasons = [r for _f, _t, r in _states(conn, jid)]
    assert reasons.count("horse_died") == 1 and reasons[-1] == "requeued"
    # a stale copy of the job saved over it does not bring attempt numbers back
    job.meta.update(attempt=0, state="queued")
    job.save_meta()
    again, _ = _pop_and_claim(conn, jid)
    assert again.attempt == lease.attempt + 1


def test_platform_failures_end_in_failed_when_attempts_run_out(conn):
    jid = _submit(conn, max_attempts=2)
    for expected in ("requeued", "failed"):
        lease, _ = _pop_and_claim(conn, jid)
        assert lifecycle.platform_failure(conn, lease, "ffmpeg_killed", "SIGKILL") == expected
    v = get_view(conn, jid)
    assert v["state"] == "failed" and v["error"]["reason"] == "ffmpeg_killed"
    assert fetch_job(conn, jid).get_status() == JobStatus.FAILED
    # a manual retry gets a fresh budget and a new attempt number
    assert lifecycle.retry(conn, jid, "test") == "queued"
    assert lifecycle.retry(conn, jid, "test") == "not_retryable"  # never enqueued twice
    assert rq_queue(Q, conn).job_ids == [jid]
    lease, _ = _pop_and_claim(conn, jid)
    assert lease.attempt == 3
    assert lifecycle.platform_failure(conn, lease, "ffmpeg_killed", "SIGKILL") == "requeued"


def test_cancel_of_a_queued_job_takes_it_out_and_of_a_running_one_signals_it(conn):
    waiting, running = _submit(conn), _submit(conn)
    lease, _ = _pop_and_claim(conn, running)
    assert lifecycle.cancel(conn, waiting, "op") == "canceled"
    assert rq_queue(Q, conn).job_ids == []
    assert lifecycle.cancel(conn, waiting, "op") == "terminal"
    assert lifecycle.cancel(conn, running, "op") == "requested"
    assert lifecycle.started(conn, lease, {}, "default", 0) is True  # the attempt sees it
    assert lifecycle.holds(conn, lease) == (True, True)
    lifecycle.finish(conn, lease, Ending("canceled", "canceled", "canceled by request"))
    assert get_view(conn, running)["state"] == "canceled"
    assert lifecycle.cancel(conn, "jnothere", "op") == "missing"


def test_requeue_lost_only_for_an_unleased_job_in_no_queue(conn):
    jid = _submit(conn)
    assert lifecycle.requeue_lost(conn, jid) is False  # still in its queue
    conn.lrem(rq_queue(Q, conn).key, 0, jid)
    assert lifecycle.requeue_lost(conn, jid) is True
    assert lifecycle.requeue_lost(conn, jid) is False
    _pop_and_claim(conn, jid)
    assert lifecycle.requeue_lost(conn, jid) is False  # leased: abandon's business


def _leader(conn) -> Recovery:
    """A recovery loop that already holds the leader lease (a new leader first holds off)."""
    cfg = CoordinatorConfig(redis_url="", keys=KeyRing([]), defaults=SubmitDefaults(), heartbeat_interval=1)
    rec = Recovery(conn, cfg, node_id="test")
    assert rec.acquire()
    return rec


def test_a_new_leader_holds_off_before_calling_anything_dead(conn):
    cfg = CoordinatorConfig(redis_url="", keys=KeyRing([]), defaults=SubmitDefaults(), heartbeat_interval=1)
    rec = Recovery(conn, cfg, node_id="test")
    jid = _submit(conn)
    _pop_and_claim(conn, jid, "n1.s0")
    reg = rq_queue(Q, conn).started_job_registry.key
    conn.zadd(reg, {m: time.time() - 1 for m in conn.zrange(reg, 0, -1)})
    assert rec.tick() == 0 and get_view(conn, jid)["state"] == "running"
    rec.hold_until = 0
    rec.tick()
    assert get_view(conn, jid)["state"] == "queued"


def test_a_recovery_pass_skips_a_broken_record_and_settles_the_others(conn, monkeypatch):
    rec = _leader(conn)
    good, broken, odd = _submit(conn), _submit(conn), _submit(conn)
    lease_good, _ = _pop_and_claim(conn, good, "dead.s0")
    _pop_and_claim(conn, broken, "dead.s1")
    _pop_and_claim(conn, odd, "dead.s2")
    job = fetch_job(conn, odd)
    job.meta.update(max_attempts="many", attempt_base=None, tier=7)  # untrusted values in meta
    job.save_meta()
    real = rec.reason_for

    def reason_for(lease, at):
        if lease.job_id == broken:
            raise RuntimeError("an unexpected error with one record")
        return real(lease, at)

    monkeypatch.setattr(rec, "reason_for", reason_for)
    reg = rq_queue(Q, conn).started_job_registry.key
    conn.zadd(reg, {m: time.time() - 1 for m in conn.zrange(reg, 0, -1)})
    conn.zadd(reg, {"jgone:deadbeef": time.time() - 1, "garbage": time.time() - 1})  # no such job
    assert rec.tick() > 0
    v = get_view(conn, good)
    assert v["state"] == "queued" and v["history"][-2]["reason"] == "node_lost"
    assert get_view(conn, odd)["state"] == "failed"  # a nonsense attempt budget counts as one
    assert rq_queue(Q, conn).job_ids == [good]
    assert get_view(conn, broken)["state"] == "running" and rec.errors == 1  # skipped, kept
    assert conn.zscore(reg, "jgone:deadbeef") is None and conn.zscore(reg, "garbage") is None
    assert not conn.exists(keys.lease_key(good))
    assert json.loads(conn.lindex(keys.history_key(good), -1))["to"] == "queued"
    del lease_good


def test_recovery_after_a_redis_outage_waits_then_says_redis_outage(conn):
    from coordinator.recovery import Outage

    rec = _leader(conn)
    jid = _submit(conn)
    _pop_and_claim(conn, jid, "n1.s0")
    conn.zadd(keys.NODES_INDEX, {"n1": time.time()})  # the node itself is alive
    reg = rq_queue(Q, conn).started_job_registry.key
    rec._failing_since = time.time() - 30  # its ticks failed for 30 s: Redis was away
    conn.zadd(reg, {m: time.time() - 1 for m in conn.zrange(reg, 0, -1)})
    rec.tick()
    assert get_view(conn, jid)["state"] == "running"  # held off: its worker may renew it yet
    assert isinstance(rec.outage, Outage) and rec.hold_until > time.time()
    rec.hold_until = 0
    rec.tick()
    v = get_view(conn, jid)
    assert v["state"] == "queued" and v["history"][-2]["reason"] == "redis_outage"


def test_untrusted_job_records_neither_wedge_nor_vanish(conn):
    reg = rq_queue(Q, conn).started_job_registry.key
    garbled, broken = _submit(conn), _submit(conn)
    _, ex1 = _pop_and_claim(conn, garbled, "dead.s0")
    _, ex2 = _pop_and_claim(conn, broken, "dead.s1")
    conn.hset(SafeJob.key_for(garbled), "meta", b"\xff not json")  # meta RQ cannot decode
    conn.hset(SafeJob.key_for(broken), "created_at", b"garbage")  # a hash RQ cannot read at all
    conn.zadd(reg, {f"{garbled}:{ex1.id}": time.time() - 1, f"{broken}:{ex2.id}": time.time() - 1})
    # meta is ffrtmp's own record: rebuilt from the lease, the job requeued
    assert lifecycle.abandon(conn, garbled, ex1.id, reg, lambda _l: "node_lost") == "requeued"
    assert fetch_job(conn, garbled).meta["state"] == "queued"
    with pytest.raises(Refused):  # unreadable: kept for a person to look at, not dropped
        lifecycle.abandon(conn, broken, ex2.id, reg, lambda _l: "node_lost")
    assert conn.zscore(reg, f"{broken}:{ex2.id}") is not None


def test_rq_status_is_written_by_the_fenced_start_only(conn):
    jid = _submit(conn)
    lease, _ = _pop_and_claim(conn, jid)
    assert fetch_job(conn, jid).get_status() == JobStatus.QUEUED  # claimed, not started
    lifecycle.started(conn, lease, {}, "default", 0)
    job = fetch_job(conn, jid)
    assert job.get_status() == JobStatus.STARTED and job.worker_name == lease.slot
    assert conn.ttl(SafeJob.key_for(jid)) == -1


def test_a_running_job_whose_lease_this_version_cannot_read_is_still_recovered(conn):
    """An attempt started by an older agent (its lease was "<node>/<slot>/<attempt>")."""
    jid = _submit(conn)
    _, execution = _pop_and_claim(conn, jid, "old.s0")
    conn.set(keys.lease_key(jid), "old/old.s0/1")
    job = fetch_job(conn, jid)
    job.meta.pop("lease")
    job.save_meta()
    reg = rq_queue(Q, conn).started_job_registry.key
    conn.zadd(reg, {f"{jid}:{execution.id}": time.time() - 1})
    assert lifecycle.abandon(conn, jid, execution.id, reg, lambda _l: "node_lost") == "requeued"
    assert get_view(conn, jid)["state"] == "queued" and not conn.exists(keys.lease_key(jid))


def test_fleet_gauges_come_from_the_summary_and_mind_old_agents_and_bad_entries(conn):
    """/metrics counts nodes from one aggregate; an agent that writes no summary entry (older
    than it) is still counted from its record, and a broken entry never breaks the count."""
    beat = {"schema": 2, "slots": 4, "slots_busy": 1}
    write_heartbeat(conn, {**beat, "name": "a1"})
    write_heartbeat(conn, {**beat, "name": "a2", "draining": True, "slots_busy": 9})  # busy capped
    write_heartbeat(conn, {**beat, "name": "s1", "stopped": True})
    write_heartbeat(conn, {**beat, "name": "d1"})
    conn.zadd(keys.NODES_INDEX, {"d1": time.time() - 100})  # missed its heartbeats
    conn.hset(keys.NODE_SUMMARY, "d1", json.dumps([time.time() - 100, 4, 1, False, False]))
    write_heartbeat(conn, {**beat, "name": "old"})
    conn.hdel(keys.NODE_SUMMARY, "old")  # an agent from before the summary
    write_heartbeat(conn, {**beat, "name": "bad"})
    conn.hset(keys.NODE_SUMMARY, "bad", b"[1, 2")  # unreadable: counted from its record instead
    f = fleet_summary(conn, 30)
    assert f.states == {"alive": 3, "draining": 1, "dead": 1, "stopped": 1}
    assert (f.slots_total, f.slots_busy) == (16, 7)
    assert [n for n, _ in f.down] == ["d1"] and f.down[0][1] >= 99


def test_housekeeping_visits_every_queue_within_its_period_and_prunes_gone_nodes(conn):
    """An idle tick takes no queue's lock but a slice's; within HOUSEKEEPING_S every queue's
    dead workers are swept, and nodes silent for the records' lifetime are forgotten."""
    from rq.worker_registration import WORKERS_BY_QUEUE_KEY

    from coordinator.recovery import HOUSEKEEPING_S
    from ffrtmp.queues import queues_in_use

    rec = _leader(conn)
    names = queues_in_use(conn)
    last = rq_queue(names[-1], conn)
    conn.sadd(WORKERS_BY_QUEUE_KEY % last.name, "rq:worker:gone.s0")  # a worker whose hash expired
    write_heartbeat(conn, {"name": "ancient", "slots": 1})
    conn.zadd(keys.NODES_INDEX, {"ancient": time.time() - keys.NODE_TTL_S - 1})
    ticks = math.ceil(HOUSEKEEPING_S / rec.cfg.scheduler_interval)
    locked = [rec.tick() for _ in range(ticks)]
    assert max(locked) < len(names)  # a slice per tick, not every queue
    assert not conn.sismember(WORKERS_BY_QUEUE_KEY % last.name, "rq:worker:gone.s0")
    assert conn.zscore(keys.NODES_INDEX, "ancient") is None and not conn.hexists(keys.NODE_SUMMARY, "ancient")


def test_expired_jobs_leave_every_index_and_each_end_is_one_event(conn):
    """Ids of jobs whose records expired are pruned from the state, queue and label indexes
    (nobody may ever list by them); a live job is never pruned; each terminal transition
    appends one event for the webhooks, in the order Redis wrote them."""
    from ffrtmp.jobs import prune_indexes

    gone = _submit(conn, labels={"customer": "acme"})
    kept = _submit(conn, labels={"customer": "acme"})
    lifecycle.cancel(conn, gone, "test")
    lifecycle.cancel(conn, kept, "test")
    lifecycle.retry(conn, kept, "test")  # not an end: no event
    conn.delete(SafeJob.key_for(gone))  # what its TTL does
    label = keys.label_index("customer", "acme")
    assert conn.sismember(keys.LABEL_INDEXES, label)
    assert prune_indexes(conn) >= 3
    for index in (keys.JOBS_INDEX, label, keys.state_index("canceled"), keys.queue_index(Q)):
        assert conn.zscore(index, gone) is None, index
    assert conn.zscore(label, kept) is not None and conn.zscore(keys.state_index("queued"), kept) is not None
    lifecycle.cancel(conn, kept, "test")
    conn.delete(SafeJob.key_for(kept))
    prune_indexes(conn)
    assert not conn.exists(label) and not conn.sismember(keys.LABEL_INDEXES, label)  # emptied: forgotten
    ends = [(f[b"job"].decode(), f[b"state"].decode()) for _, f in conn.xrange(keys.EVENTS)]
    assert ends == [(gone, "canceled"), (kept, "canceled"), (kept, "canceled")]


def test_a_dead_node_lists_only_the_runs_the_lifecycle_still_has_there(conn):
    """The last heartbeat of a node that stopped beating is old news: a job it reported that
    recovery requeued is not shown as running there; one still leased to it is."""
    moved, held = _submit(conn), _submit(conn)
    _pop_and_claim(conn, held, "dead-1.s0")
    runs = [{"job": moved, "attempt": 1}, {"job": held, "attempt": 1}]
    write_heartbeat(conn, {"name": "dead-1", "slots": 2, "running": runs})
    assert {r["job"] for r in get_node(conn, "dead-1", 90)["running"]} == {moved, held}  # alive: as told
    conn.zadd(keys.NODES_INDEX, {"dead-1": time.time() - 600})
    blob = json.loads(conn.get(keys.node_key("dead-1")))
    conn.set(keys.node_key("dead-1"), json.dumps({**blob, "last_heartbeat": time.time() - 600}))
    node = get_node(conn, "dead-1", 90)
    assert node["state"] == "dead" and [r["job"] for r in node["running"]] == [held]


def test_pruning_goes_on_past_live_jobs_at_the_start_of_an_index(conn):
    """A long-queued head of live jobs does not hide the expired ids behind it: each pass goes
    on from where the last stopped, and comes back to the start at the end."""
    from ffrtmp.jobs import PRUNE_OLDEST, prune_indexes

    index = keys.queue_index("batch")
    live = {f"jlive{i}": i for i in range(PRUNE_OLDEST + 50)}
    dead = {f"jdead{i}": 1000 + i for i in range(30)}
    conn.zadd(index, {**live, **dead})
    for jid in live:
        conn.set(SafeJob.key_for(jid), "x")  # a record exists: the job is alive
    for _ in range(3):
        prune_indexes(conn)
    assert conn.zcard(index) == len(live) and all(conn.zscore(index, j) is not None for j in live)
