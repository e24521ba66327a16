"""The timing policy of an attempt, all derived from the agent's heartbeat interval so that
recovery follows ``--heartbeat-interval`` (a job is requeued only after its old run is
gone, and a restarted agent can re-adopt within the heartbeat timeout)."""

from __future__ import annotations

POLL_S = 0.2  # how often the watcher looks at the run directory
PROGRESS_SAVE_S = 1.0  # progress mirrored into Redis at most this often
LEASE_POLL_S = 0.5  # lease and cancel checked this often
START_DEADLINE_S = 30.0  # the supervisor must have started FFmpeg by then
STOP_WAIT_S = 5.0  # how long a watcher waits for a killed run to be gone
SETTLE_DEADLINE_S = 600.0  # verifying, publishing and recording an end renew the execution this long
LOG_TAIL_BYTES = 16 * 1024
RETRY_ELSEWHERE_S = 5.0  # a node leaves a job it just failed to other nodes for this long
RETRY_BACKOFF_S = 2.0  # after a platform failure no node takes the job for this long, doubling
RETRY_BACKOFF_MAX_S = 60.0


def retry_backoff(failures: int) -> float:
    """How long a job waits before its next attempt after its ``failures``-th platform failure
    (2 s, 4 s, 8 s ... at most a minute): a fault of the whole fleet (a root unmounted
    everywhere) does not burn every attempt in a second."""
    return min(RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_S * 2 ** max(0, failures - 1))


def orphan_deadline(heartbeat_interval: float) -> float:
    """A run nobody watches for this long is killed: the heartbeat timeout (3 intervals), so an
    agent restarted within the heartbeat timeout still finds its runs alive and adopts them."""
    return max(3.0 * heartbeat_interval, 4.0)


def renewal_interval(heartbeat_interval: float) -> int:
    """How often workers renew a running job's RQ execution (whole seconds, RQ's unit)."""
    return int(min(2.0, max(1.0, heartbeat_interval / 2)))


def execution_ttl(heartbeat_interval: float) -> int:
    """How long an attempt's RQ execution lives without renewal before recovery may requeue the
    job: the orphan deadline plus one renewal interval plus a 3 s margin. Even if the last
    renewal came a whole renewal interval before the horse died, the execution expires only
    after the orphaned run was killed: a run never overlaps its retry. At the default 30 s
    interval: 95 s, so a dead node's job is requeued within 95 s plus one recovery tick."""
    return int(orphan_deadline(heartbeat_interval) + renewal_interval(heartbeat_interval) + 3)


def lease_ttl(timeout_s: float, grace_s: float) -> int:
    """The lease outlives any legitimate run (its timeout and stop grace) by an hour."""
    return int(timeout_s + grace_s + 3600)
