"""The Redis key schema: every key ffrtmp writes (besides RQ's own), and how long it lives.

One module names them all, so a reader can see the whole state in one place and no two
modules spell a key differently. RQ's keys (``rq:job:<id>``, queues, registries, executions)
are RQ's: ffrtmp reaches them only through RQ's objects.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

PREFIX = "ffrtmp"
SCHEMA_VERSION = 2  # bumped when a record's shape changes; readers accept older versions


@dataclass(frozen=True)
class Retention:
    """How long finished jobs (and what belongs to them) are kept."""

    finished_s: int = 7 * 24 * 3600
    failed_s: int = 30 * 24 * 3600


# --- jobs ---------------------------------------------------------------------------------
ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # no l/1/o/0: readable over the phone
# What names a job: a submitted job ``j`` + 10 characters, a segment of a segmented job its
# parent's id + ``-s<index>`` (``-r<run>s<index>`` after the parent's manual retries: each
# run of a parent has segments of its own), deterministic so each is made once.
_PARENT_ID = f"j[{ID_ALPHABET}]{{10}}"
_SEGMENT = "-(?:r[1-9][0-9]{0,5})?s[0-9]{1,5}"
JOB_ID = re.compile(f"{_PARENT_ID}(?:{_SEGMENT})?")
_CHILD_ID = re.compile(f"{_PARENT_ID}{_SEGMENT}")


def child_id(parent: str, index: int, run: int = 0) -> str:
    return f"{parent}-{f'r{run}' if run else ''}s{index}"


def is_child_id(job_id: str) -> bool:
    return _CHILD_ID.fullmatch(job_id) is not None


JOBS_INDEX = f"{PREFIX}:jobs"  # zset id -> created unix time (newest-first listing)
# zset id -> when it was (re)enqueued; left when the attempt reports started. RQ workers that
# listen on several queues dequeue with a plain BLPOP, so a worker killed between the pop and
# the start would lose the job; recovery uses this index to find and requeue such jobs.
PENDING = f"{PREFIX}:pending"
LOST_SUSPECTS = f"{PREFIX}:recovery:lost-suspects"  # hash id -> first seen queued in no queue


PINNED_QUEUES = f"{PREFIX}:queues:pinned"  # set of queue names made for jobs pinned to a node


IDEMPOTENCY_TTL_S = 24 * 3600
RATE_LIMIT_PREFIX = f"{PREFIX}:ratelimit"  # the limits library names its counters under it


def idempotency_key(scope: str, key: str) -> str:
    """string -> '<job id> <request digest>' for an Idempotency-Key of one API key (24 h)."""
    digest = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()
    return f"{PREFIX}:idempotency:{digest}"


def state_index(state: str) -> str:
    """zset id -> last transition time, one per user-visible state (filters without scans)."""
    return f"{PREFIX}:jobs:state:{state}"


def queue_index(name: str) -> str:
    """zset id -> submission time, per tier and per RQ queue the job was queued on."""
    return f"{PREFIX}:jobs:queue:{name}"


LABEL_INDEX_PREFIX = f"{PREFIX}:jobs:label:"


def label_index(key: str, value: str) -> str:
    """zset id -> submission time, per label (key and value) a job was submitted with."""
    return f"{LABEL_INDEX_PREFIX}{key}={value}"


LABEL_INDEXES = f"{PREFIX}:jobs:labels"  # set of the label indexes in use (for pruning them)
PRUNE_CURSORS = f"{PREFIX}:jobs:prune-at"  # hash index -> rank the next prune pass starts at
# stream of fleet events, appended by the transaction that makes them: a job's end
# (type=job, job, state, at). Redis numbers the entries as they are written, so a reader that
# goes on from the last id it saw misses none. Capped at about EVENTS_MAXLEN entries.
EVENTS = f"{PREFIX}:events"
EVENTS_MAXLEN = 100_000


def node_index(node: str) -> str:
    """zset id -> when it started there, per node a job ran on (the listing's node filter)."""
    return f"{PREFIX}:jobs:node:{node}"


def history_key(job_id: str) -> str:
    """Append-only list of transitions (time, from, to, reason, node, attempt)."""
    return f"{PREFIX}:job:{job_id}:history"


def cancel_key(job_id: str) -> str:
    """Control signal: set by a cancel request, polled by the running attempt."""
    return f"{PREFIX}:job:{job_id}:cancel"


CANCEL_TTL_S = 7 * 24 * 3600


def lease_key(job_id: str) -> str:
    """The running attempt's fencing token (see ``ffrtmp.lifecycle.Lease``)."""
    return f"{PREFIX}:job:{job_id}:lease"


def attempts_key(job_id: str) -> str:
    """Counter of attempts ever claimed: attempt numbers never repeat, whatever meta says."""
    return f"{PREFIX}:job:{job_id}:attempts"


def progress_key(job_id: str) -> str:
    """The running attempt's last progress (JSON), written only while it holds the lease."""
    return f"{PREFIX}:job:{job_id}:progress"


PROGRESS_TTL_S = 24 * 3600


def logs_key(job_id: str) -> str:
    """Hash attempt -> FFmpeg stderr tail."""
    return f"{PREFIX}:job:{job_id}:logs"


def webhooks_key(job_id: str) -> str:
    """hash delivery id -> what became of one webhook delivery about this job (JSON)."""
    return f"{PREFIX}:job:{job_id}:webhooks"


def job_keys(job_id: str) -> tuple[str, ...]:
    """ffrtmp's keys that live and expire with a job."""
    return (
        history_key(job_id),
        logs_key(job_id),
        attempts_key(job_id),
        progress_key(job_id),
        webhooks_key(job_id),
    )


# --- webhook deliveries (the coordinator's) -----------------------------------------------
WEBHOOKS_DUE = f"{PREFIX}:webhooks:due"  # zset delivery id -> when it is (next) due
WEBHOOKS_CURSOR = f"{PREFIX}:webhooks:events-read"  # string: the last EVENTS id turned into deliveries
WEBHOOKS_NODES_DOWN = f"{PREFIX}:webhooks:nodes-down"  # hash node -> heartbeat its node.down was about


def delivery_key(delivery_id: str) -> str:
    """hash: one pending delivery (job, event, url, body, attempts)."""
    return f"{PREFIX}:webhook:{delivery_id}"


# --- console sessions -----------------------------------------------------------------------
def session_key(digest: str) -> str:
    """A web console session, by the SHA-256 of its cookie's random id (the id is never stored)."""
    return f"{PREFIX}:session:{digest}"


# --- nodes --------------------------------------------------------------------------------
NODES_INDEX = f"{PREFIX}:nodes"  # zset name -> last heartbeat (unix time)
# hash name -> [heartbeat time, slots, busy, draining, stopped]: what the fleet gauges need,
# written with each heartbeat. "_" cannot start a node name, and agents may write ffrtmp:node:*.
NODE_SUMMARY = f"{PREFIX}:node:_fleet"
NODE_TTL_S = 7 * 24 * 3600
BOOTS_TTL_S = 24 * 3600


def node_key(name: str) -> str:
    return f"{PREFIX}:node:{name}"


def boots_key(name: str) -> str:
    return f"{PREFIX}:node:{name}:boots"  # zset boot id -> when that agent process first beat


def drain_key(name: str) -> str:
    return f"{PREFIX}:node:{name}:drain"


def violations_key(node: str) -> str:
    return f"{PREFIX}:node:{node}:violations"


# --- fleet statistics ---------------------------------------------------------------------
SUBMITTED = f"{PREFIX}:stats:submitted"  # hash "<tier>.<priority>" -> count
FINISHED = f"{PREFIX}:stats:finished"  # "<tier>|<priority>|<outcome>|<reason>" -> count
REQUEUES = f"{PREFIX}:stats:requeues"  # reason -> count
FENCED = f"{PREFIX}:stats:fenced"  # transition -> writes refused because the lease had moved
CANCELS = f"{PREFIX}:stats:cancels"  # graceful|forced -> count
SLA = f"{PREFIX}:stats:sla"  # "<tier>|<kind>" -> count


def hist_key(name: str, tier: str) -> str:
    return f"{PREFIX}:stats:hist:{name}:{tier}"


def node_stats_key(node: str) -> str:
    return f"{PREFIX}:stats:node:{node}"


# --- coordinator --------------------------------------------------------------------------
RECOVERY_LEADER = f"{PREFIX}:recovery:leader"
