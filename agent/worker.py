"""A hardened RQ worker for one agent slot: it claims each job's lease before forking its horse,
and reports a horse's unexpected death through the lifecycle (fenced, so a worker that handles
an end twice, or wakes from a freeze after recovery moved the job on, changes nothing)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from datetime import timedelta
from typing import Any

import redis
from rq import Worker
from rq.utils import now as rq_now
from rq.worker import WorkerStatus

from ffrtmp import lifecycle, timing
from ffrtmp.lifecycle import Ending, Lease, Refused, meta_float
from ffrtmp.pdeath import die_with
from ffrtmp.rqjob import UnsafeJobError
from ffrtmp.rundir import RunDir

from . import standby

log = logging.getLogger("ffrtmp.agent.worker")


class FleetWorker(Worker):
    heartbeat_interval: float = 30.0  # the agent's; set by agent.slot
    node: str = ""
    work_dir: str = ""
    _lease: Lease | None = None
    _raised: BaseException | None = None
    _worker_pid: int = 0
    _handing_over: bool = False

    def get_heartbeat_ttl(self, job: Any, working_time: float = 0.0) -> int:
        """RQ adds a fixed 60 s to the monitoring interval; ffrtmp derives the execution TTL from
        the agent's heartbeat interval instead, so recovery follows --heartbeat-interval."""
        return timing.execution_ttl(self.heartbeat_interval)

    def execute_job(self, job: Any, queue: Any) -> None:
        """Claim the job's lease, then run it as RQ's forking worker does. A refused claim (the
        job was canceled meanwhile, or is a duplicate of a running one) runs nothing."""
        meta = job.meta or {}
        if self._defer(job, queue, meta):
            return
        execution = self.prepare_execution(job)
        ttl = timing.lease_ttl(meta_float(meta, "timeout", 6 * 3600), meta_float(meta, "cancel_grace", 30))
        claimed = lifecycle.claim(self.connection, job.id, execution.id, self.node, self.name, ttl)
        if claimed is None:
            with self.connection.pipeline() as pipe:
                execution.delete(job, pipe)
                pipe.execute()
            self.executions.pop(execution.id, None)
            self.set_state(WorkerStatus.IDLE)
            return
        self._lease, job.meta = claimed
        self._worker_pid = os.getpid()
        standby.prepare()  # the horse hands its run to a supervisor already started
        self.fork_work_horse(job, queue)
        standby.forked()
        self.monitor_work_horse(job, queue, execution)
        self._lease = None
        self.set_state(WorkerStatus.IDLE)

    def _defer(self, job: Any, queue: Any, meta: dict[str, Any]) -> bool:
        """Not now. A job whose platform failure's back-off has not passed goes to the back of
        its queue (what is due runs meanwhile). A job this node just failed goes preferably
        elsewhere: for ``timing.RETRY_ELSEWHERE_S`` it is put back at the front of its queue,
        for another node to take (a fleet of one takes it back after that)."""
        wait = meta_float(meta, "retry_not_before", 0.0) - time.time()
        if 0 < wait <= timing.RETRY_BACKOFF_MAX_S + 1:  # a later time is not one we wrote: ignored
            queue.push_job_id(job.id)
            time.sleep(min(0.5, wait))
            return True
        failed_at = meta.get("last_failed_at")
        if meta.get("last_failed_node") != self.node or not isinstance(failed_at, int | float):
            return False
        if time.time() - failed_at >= timing.RETRY_ELSEWHERE_S:
            return False
        queue.push_job_id(job.id, at_front=True)
        time.sleep(1.0)
        return True

    def prepare_job_execution(self, job: Any, remove_from_intermediate_queue: bool = False) -> None:
        """RQ writes the job's status, start time and worker here, unfenced, in the horse;
        ffrtmp's lifecycle writes them in ``started``, under the lease. Only the worker's own
        heartbeat is left to do."""
        self.heartbeat(self.get_heartbeat_ttl(job))

    def maintain_heartbeats(self, job: Any, execution: Any) -> None:
        """A stock worker dies when Redis blips during this heartbeat, and its horse (and job)
        with it. Skip the beat instead: the execution's TTL covers a short outage, and past the
        orphan deadline the horse stops FFmpeg itself, so nothing runs twice."""
        try:
            super().maintain_heartbeats(job, execution)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.log.warning("Worker %s: heartbeat skipped, Redis unreachable (%s)", self.name, exc)

    def handle_execution_ended(self, job: Any, queue: Any, heartbeat_ttl: int) -> None:
        """RQ writes a heartbeat here; the lifecycle already closed the execution."""

    def handle_job_success(self, job: Any, queue: Any, started_job_registry: Any, execution: Any) -> None:
        """Never reached with ffrtmp's job function (it settles through the lifecycle and exits)."""

    def handle_job_failure(
        self,
        job: Any,
        queue: Any,
        started_job_registry: Any = None,
        exc_string: str = "",
        execution: Any = None,
    ) -> None:
        """The horse died before its attempt settled (killed, out of memory) or the job function
        raised before it could. Stop what the attempt left running, then report a platform
        failure under the attempt's lease: refused (and harmless) if it had settled."""
        lease = self._lease
        if lease is None or self._handing_over:
            return  # a cold stop killed the horse on purpose: its run is the next agent's
        if isinstance(self._raised, UnsafeJobError):  # not ours to run: refused, never retried
            with contextlib.suppress(Refused, redis.RedisError, OSError):
                lifecycle.finish(self.connection, lease, Ending("rejected", "unsafe_job", str(self._raised)))
            return
        if not self._stop_run(lease):
            self.log.error("job %s: its run could not be proven stopped; left to recovery", job.id)
            return  # its execution expires after the run's orphan deadline: recovery requeues it
        try:
            lifecycle.platform_failure(
                self.connection, lease, "horse_died", exc_string.strip()[-300:] or "died"
            )
        except Refused:
            pass
        except (redis.RedisError, OSError) as exc:
            self.log.warning("job %s: could not report its horse's death (%s); recovery will", job.id, exc)

    def _stop_run(self, lease: Lease) -> bool:
        """Kill what this attempt started (its supervisor's whole session, FFmpeg included) and
        wait until it is gone. False when that cannot be proven."""
        if not self.work_dir:
            return False
        for rd in RunDir.all(self.work_dir):
            if rd.token == lease.token:
                return rd.kill_run(timing.STOP_WAIT_S)
        return True  # no run directory: the attempt never started a run

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """Cold shutdown (a handover): the horse dies, its FFmpeg run lives on for the next
        agent to adopt. RQ's own version kills and reaps the horse inside this handler, and the
        monitor's SIGALRM (every renewal interval) can fire in between: its exception replaces
        RQ's SystemExit, the monitor loop reaps a horse killed by signal 9 and reports it dead,
        which stopped the very run the handover meant to keep (seen in the upgrade scenario).
        So the alarm goes first, and a horse killed this way is never reported."""
        requested = self._shutdown_requested_date
        if requested is not None and rq_now() - requested < timedelta(seconds=1):
            return super().request_force_stop(signum, frame)  # RQ's duplicate: ignored
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.alarm(0)
        self._handing_over = True
        super().request_force_stop(signum, frame)

    def handle_exception(self, job: Any, *exc_info: Any) -> None:
        """Remember what the job function raised (RQ calls this just before handle_job_failure)."""
        self._raised = exc_info[1] if len(exc_info) > 1 else None
        super().handle_exception(job, *exc_info)

    def subscribe(self) -> None:
        """No pubsub channel: ffrtmp never sends RQ's worker commands (a cancel is a key the
        attempt polls, a stop is a signal to the agent), and a subscription holds one more
        Redis connection per slot open for nothing (measured: idle slots then need one, not
        two; see docs/benchmarks.md on the connection budget)."""
        self.pubsub_thread = None

    def clean_registries(self) -> None:
        """The coordinator's recovery loop owns the registries (fenced, per job); a stock
        cleanup here would requeue abandoned jobs behind its back."""
        self.last_cleaned_at = rq_now()

    def setup_work_horse_signals(self) -> None:
        super().setup_work_horse_signals()
        die_with(self._worker_pid or os.getppid())  # a horse never outlives its worker
