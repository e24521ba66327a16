"""The job model's vocabulary: tiers, priorities, codecs, hardware families and states. Plain
enums with no pydantic, so what only needs the words (the CLI, which must start fast) does not
pay for the model."""

from __future__ import annotations

from enum import StrEnum


class Tier(StrEnum):
    live = "live"
    default = "default"
    batch = "batch"


class Priority(StrEnum):
    high = "high"
    medium = "medium"
    low = "low"


class Codec(StrEnum):
    h264 = "h264"
    h265 = "h265"
    vp9 = "vp9"
    av1 = "av1"


class HwAccel(StrEnum):
    auto = "auto"
    none = "none"
    nvenc = "nvenc"
    qsv = "qsv"
    vaapi = "vaapi"


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    retrying = "retrying"
    completed = "completed"
    failed = "failed"
    timed_out = "timed_out"
    canceled = "canceled"
    rejected = "rejected"


TERMINAL_STATES = frozenset(
    {JobState.completed, JobState.failed, JobState.timed_out, JobState.canceled, JobState.rejected}
)

# Why an attempt is requeued (a platform failure: the node's fault, not the job's); each is
# also how a job ends failed when its attempts run out. Counters by reason start at 0 for all
# of them, so the first burst of one shows in increase() and its alert fires.
REQUEUE_REASONS = (
    "agent_error",
    "attempt_lost",
    "encoder_unavailable",
    "ffmpeg_killed",
    "ffmpeg_not_started",
    "horse_died",
    "input_root_missing",
    "input_stalled",
    "lost_in_dequeue",
    "lost_ownership",
    "node_lost",
    "output_disk_full",
    "output_root_missing",
    "redis_outage",
    "run_cgroup_failed",
    "runner_died",
    "runner_not_started",
)
# The ends of a job (outcome, reason) its counters are shown for from the start
COMMON_ENDS = (
    ("completed", "ffmpeg_exit_0"),
    ("failed", "ffmpeg_error"),
    ("failed", "input_not_found"),
    ("failed", "memory_limit_exceeded"),
    ("timed_out", "timed_out"),
    ("canceled", "canceled"),
    ("rejected", "invalid_spec"),
    ("rejected", "destination_not_allowed"),
    *(("failed", r) for r in REQUEUE_REASONS),
)
