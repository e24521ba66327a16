"""One agent slot: a forking RQ worker, started and supervised by ``ffrtmp-agent``.

The parent-death signal is set before anything else is imported, and the slot exits at once
if the agent that started it is already gone: a slot never outlives its agent, not even one
SIGKILLed while it was still starting its slots."""

from __future__ import annotations

import os
import signal

from ffrtmp.pdeath import die_with

if __name__ == "__main__":  # pragma: no branch - the slot's first act, before its imports
    die_with(int(os.environ.get("FFRTMP_AGENT_PID", "0")) or os.getppid(), signal.SIGKILL)

import logging

from ffrtmp.logs import reopen_on_sighup, setup_logging
from ffrtmp.redisconn import connect
from ffrtmp.rqjob import SERIALIZER, SafeJob, rq_queue

from . import (
    limits,
    standby,
    task,  # noqa: F401 - imported before forking so every horse starts warm
)
from .context import load_context
from .worker import FleetWorker


def main() -> None:
    setup_logging(
        "agent", os.environ.get("FFRTMP_LOG_LEVEL", "info"), os.environ.get("FFRTMP_LOG_DIR") or None
    )
    reopen_on_sighup()
    limits.warm()  # the cgroup layout and the one trial scope, cached so every horse inherits them
    name = os.environ["FFRTMP_SLOT_NAME"]
    queues = os.environ["FFRTMP_SLOT_QUEUES"].split(",")
    conn = connect(os.environ["FFRTMP_REDIS_URL"])
    ctx = load_context()
    worker = FleetWorker(
        [rq_queue(q, conn) for q in queues],
        name=name,
        connection=conn,
        job_class=SafeJob,
        serializer=SERIALIZER,
        worker_ttl=int(os.environ.get("FFRTMP_WORKER_TTL", "30")),
        job_monitoring_interval=int(os.environ.get("FFRTMP_JOB_MONITORING_INTERVAL", "30")),
        log_job_description=True,
    )
    worker.heartbeat_interval = float(os.environ.get("FFRTMP_HEARTBEAT_INTERVAL", "30"))
    worker.node, worker.work_dir = ctx.node, ctx.work_dir
    logging.getLogger("ffrtmp.agent.slot").info("slot %s listening on %s", name, ",".join(queues))
    # No RQ scheduler: ffrtmp schedules nothing (requeues are immediate, through the lifecycle),
    # and RQ runs its scheduler as a child process that would outlive a SIGKILLed slot.
    standby.prepare()  # the first job's supervisor, started ahead as every later one is
    worker.work(logging_level=os.environ.get("FFRTMP_LOG_LEVEL", "info").upper())


if __name__ == "__main__":
    main()
