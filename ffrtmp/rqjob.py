"""RQ plumbing shared by the coordinator and the agent: JSON serialization and an allow-listed
job class, so that whoever can write to Redis cannot make an agent run arbitrary code."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

# The only functions an agent will execute. Anything else in Redis fails the job unexecuted.
TRANSCODE_FUNC = "agent.task.run_job"
ALLOWED_FUNCS = frozenset({TRANSCODE_FUNC})

SERIALIZER = JSONSerializer


class UnsafeJobError(RuntimeError):
    pass


class SafeJob(Job):
    """A Job that resolves only allow-listed functions and never unpickles."""

    @property
    def func(self) -> Any:
        name = self.func_name
        if name not in ALLOWED_FUNCS:
            raise UnsafeJobError(f"job {self.id} names function {name!r}, which is not on the allow-list")
        if self.instance is not None:
            raise UnsafeJobError(f"job {self.id} names a bound method; only plain functions are allowed")
        return super().func

    # RQ imports and calls a job's callbacks by the names stored in Redis. ffrtmp uses none, so
    # a job never has one, whatever its hash says: nothing is imported, nothing is called.
    @property
    def success_callback(self) -> None:  # type: ignore[override]
        return None

    @property
    def failure_callback(self) -> None:  # type: ignore[override]
        return None

    @property
    def stopped_callback(self) -> None:  # type: ignore[override]
        return None


@lru_cache(maxsize=512)
def job_spec(job: Job) -> dict[str, Any]:
    """The spec a job was enqueued with (its first argument; untrusted: {} if it is not a dict)."""
    args = job.args or ()
    return args[0] if args and isinstance(args[0], dict) else {}


def rq_queue(name: str, conn: redis.Redis) -> Queue:
    """One Queue object per (name, connection): a fresh Queue asks Redis for its version
    (INFO) on its first enqueue, which would double the cost of every submission."""
    return Queue(name, connection=conn, serializer=SERIALIZER, job_class=SafeJob)


def fetch_job(conn: redis.Redis, job_id: str) -> SafeJob | None:
    """The job, or None if there is none or its hash cannot be read as an RQ job. A Redis error
    is raised, never read as "no such job"."""
    try:
        return SafeJob.fetch(job_id, connection=conn, serializer=SERIALIZER)
    except redis.RedisError:
        raise
    except Exception:  # NoSuchJobError, or a hash that is not an RQ job (untrusted data)
        return None


def restore_job(conn: redis.Redis, job_id: str, raw: dict[bytes, bytes]) -> SafeJob | None:
    """A job from its hash as read (HGETALL, e.g. on a pipeline with other reads), or None if
    there was none or it cannot be read as an RQ job (untrusted data)."""
    if not raw:
        return None
    try:
        job = SafeJob(job_id, connection=conn, serializer=SERIALIZER)
        job.restore(raw)
    except Exception:
        return None
    return job
