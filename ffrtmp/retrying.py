"""Transport retries with exponential back-off (tenacity), for any transport: Redis calls
(``ffrtmp.redisconn``) and the CLI's calls to the coordinator. No Redis import here: the CLI
must start fast."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryCallState, retry, retry_if_exception, stop_after_attempt, wait_exponential

log = logging.getLogger(__name__)
T = TypeVar("T")

# Transport retries: 1 s, x2, capped at 30 s, 3 retries, only on transient errors.
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 30.0
RETRY_COUNT = 3


def log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    sleep = state.next_action.sleep if state.next_action else 0
    log.warning("transient error (%s); retry %d in %.1fs", exc, state.attempt_number, sleep)


def transport_retry(
    is_transient: Callable[[BaseException], bool],
    *,
    initial: float = RETRY_INITIAL_S,
    cap: float = RETRY_MAX_S,
    retries: int = RETRY_COUNT,
    server_wait: Callable[[BaseException | None], float] | None = None,
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Retry a transport call on transient errors only, with exponential back-off, plus what
    ``server_wait`` reads off the error (an HTTP Retry-After)."""
    backoff = wait_exponential(multiplier=initial, exp_base=2, max=cap)
    if server_wait is not None:
        asked = server_wait
        backoff = backoff + (lambda rs: asked(rs.outcome.exception() if rs.outcome else None))
    return retry(
        retry=retry_if_exception(is_transient),
        wait=backoff,
        stop=stop_after_attempt(retries + 1),
        before_sleep=log_retry,
        reraise=True,
    )
