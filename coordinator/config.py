"""The coordinator's configuration, in a module of its own so the app, the metrics and the
recovery loop can all read it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field

from ffrtmp.auth import KeyRing
from ffrtmp.submit import SubmitDefaults

from .ratelimit import Limits
from .webhooks import WebhookConfig


@dataclass
class CoordinatorConfig:
    redis_url: str
    keys: KeyRing
    defaults: SubmitDefaults
    heartbeat_interval: float = 30.0
    heartbeat_timeout: float = 90.0
    scheduler_interval: float = 10.0
    input_roots: list[str] = field(default_factory=list)
    output_roots: list[str] = field(default_factory=list)
    run_recovery: bool = True
    limits: Limits | None = None  # None: no rate limits
    webhooks: WebhookConfig = field(default_factory=WebhookConfig)
