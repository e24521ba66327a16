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
