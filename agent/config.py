"""The agent's configuration, in a module of its own so the agent and its metrics can both read
it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AgentConfig:
    redis_url: str
    name: str
    slots: int
    live_slots: int
    metrics_host: str
    metrics_port: int
    heartbeat_interval: float
    drain_timeout: float
    input_roots: list[str]
    output_roots: list[str]
    work_dir: str
    ffmpeg: str = "ffmpeg"
    ffprobe: str = "ffprobe"
    log_level: str = "info"
    stall_after: float = 120.0
    encoder_recheck: float = 600.0
    log_dir: str | None = None
    min_free_space: int = 256 * 1024 * 1024
    allow_url_networks: list[str] = field(default_factory=list)
    planner_slots: int = 1  # slots that run segmented jobs' parents (they wait; they encode nothing)
    metrics_api_keys_file: str | None = None  # then /metrics and /violations need a key
