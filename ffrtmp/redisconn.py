"""Redis connections and transport retries (agent <-> Redis, CLI <-> coordinator)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Transport retries: 1 s, x2, capped at 30 s, 3 retries, only on transient errors.
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 30.0
RETRY_COUNT = 3


def connect(url: str, *, socket_timeout: float | None = None, decode: bool = False) -> redis.Redis:
    """A client for ``redis://``, ``rediss://`` or ``unix://`` URLs."""
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": 5,
        "socket_timeout": socket_timeout,
        "health_check_interval": 15,
        "decode_responses": decode,
    }
    if not url.startswith("unix:"):
        kwargs["socket_keepalive"] = True
    return redis.Redis.from_url(url, **kwargs)


def is_transient_redis_error(exc: BaseException) -> bool:
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError | ConnectionResetError | EOFError)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    sleep = state.next_action.sleep if state.next_action else 0
    log.warning("transient error (%s); retry %d in %.1fs", exc, state.attempt_number, sleep)


def transport_retry(
    is_transient: Callable[[BaseException], bool] = is_transient_redis_error,
    *,
    initial: float = RETRY_INITIAL_S,
    cap: float = RETRY_MAX_S,
    retries: int = RETRY_COUNT,
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Retry a transport call on transient errors only, with exponential back-off."""
    return retry(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential(multiplier=initial, exp_base=2, max=cap),
        stop=stop_after_attempt(retries + 1),
        before_sleep=_log_retry,
        reraise=True,
    )


def until_redis_answers(within_s: float, cap: float = 2.0) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Retry a write that must not be lost (an attempt's outcome) through a Redis outage, for
    up to ``within_s`` seconds, backing off to ``cap`` between tries."""
    return retry(
        retry=retry_if_exception(is_transient_redis_error),
        wait=wait_exponential(multiplier=0.5, exp_base=2, max=cap),
        stop=stop_after_delay(within_s),
        before_sleep=_log_retry,
        reraise=True,
    )


def ping(conn: redis.Redis) -> bool:
    try:
        return bool(conn.ping())
    except (redis.RedisError, OSError):
        return False
