"""A hardened RQ worker for one agent slot."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import signal
from typing import Any

import redis
from rq import Worker
from rq.timeouts import JobTimeoutException

from ffrtmp.jobs import fresh_meta, recorded_outcome, settle_completed
from ffrtmp.rqjob import UnsafeJobError

from .task import TerminalJobError, execution_ttl

log = logging.getLogger("ffrtmp.agent.worker")
PR_SET_PDEATHSIG = 1


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux only)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except OSError:  # not Linux: nothing to do
        pass


def terminal_failure_handler(job: Any, exc_type: type, exc_value: BaseException, tb: Any) -> bool:
    """Workload failures are never retried: zero RQ's retries before it decides."""
    if isinstance(exc_value, TerminalJobError | UnsafeJobError | JobTimeoutException):
        job.retries_left = 0
    return True  # let the next handler (RQ's default) run too


class FleetWorker(Worker):
    heartbeat_interval: float = 30.0  # the agent's; set by agent.slot

    def get_heartbeat_ttl(self, job: Any, working_time: float = 0.0) -> int:
        """RQ adds a fixed 60 s to the monitoring interval; ffrtmp derives the execution TTL from
        the agent's heartbeat interval instead, so recovery follows --heartbeat-interval."""
        return execution_ttl(self.heartbeat_interval)

    def maintain_heartbeats(self, job: Any, execution: Any) -> None:
        """A stock worker dies when Redis blips during this heartbeat, and its horse (and job)
        with it. Skip the beat instead: the execution's TTL covers a short outage, and past the
        orphan deadline the horse stops FFmpeg itself (agent.task), so nothing runs twice."""
        try:
            super().maintain_heartbeats(job, execution)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.log.warning(
                "Worker %s: heartbeat skipped, Redis unreachable (%s); job %s keeps running",
                self.name,
                exc,
                job.id,
            )

    def handle_job_failure(
        self,
        job: Any,
        queue: Any,
        started_job_registry: Any = None,
        exc_string: str = "",
        execution: Any = None,
    ) -> None:
        """A horse can die after its attempt recorded an outcome and before it told RQ (killed,
        out of memory). RQ calls that a failure and retries it; the attempt's own word stands."""
        meta = fresh_meta(job)
        if settle_completed(job, meta, self, queue, execution):
            self.log.warning("Worker %s: job %s had completed before its horse died", self.name, job.id)
            return
        if recorded_outcome(meta) is not None:
            job.retries_left = 0  # it ended for good (failed, canceled...): never run it again
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)

    def setup_work_horse_signals(self) -> None:
        super().setup_work_horse_signals()
        set_pdeathsig(signal.SIGKILL)  # a horse never outlives its worker (no duplicate run)
