"""Redis connections, and retries of Redis calls through transient errors and outages."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from .retrying import log_retry, transport_retry

log = logging.getLogger(__name__)
T = TypeVar("T")


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


def redis_retry() -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Retry a Redis call on transient errors only (the defaults of ``transport_retry``)."""
    return transport_retry(is_transient_redis_error)


def until_redis_answers(within_s: float, cap: float = 2.0) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Retry a write that must not be lost (an attempt's outcome) through a Redis outage, for
    up to ``within_s`` seconds, backing off to ``cap`` between tries."""
    return retry(
        retry=retry_if_exception(is_transient_redis_error),
        wait=wait_exponential(multiplier=0.5, exp_base=2, max=cap),
        stop=stop_after_delay(within_s),
        before_sleep=log_retry,
        reraise=True,
    )


def ping(conn: redis.Redis) -> bool:
    try:
        return bool(conn.ping())
    except (redis.RedisError, OSError):
        return False


def text(v: bytes | str) -> str:
    """A Redis reply as text; what Redis holds is untrusted, so bytes that are not UTF-8 are
    replaced, never raised on."""
    return v.decode(errors="replace") if isinstance(v, bytes) else v
