"""Rate limits, shared by every coordinator through Redis (so the two colours of a blue-green
pair, and several coordinator hosts, count together). The `limits` library's sliding-window
counter does the counting; three budgets:

- per API key: every authenticated request;
- per client address: every request that needs a key, answered or not;
- failed authentication per address: once spent, the address gets 429 for everything (a right
  key included) until the window passes, so guessing keys gains nothing.

The client address is the TCP peer, or, when the peer is a trusted proxy (HAProxy in front of
the colours), the right-most address in X-Forwarded-For that is not itself a trusted proxy."""

from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass

import redis
from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from ffrtmp.keys import RATE_LIMIT_PREFIX
from ffrtmp.networks import Network


def parse_limit(value: str) -> RateLimitItem | None:
    """'100/second', '20 per minute', … or 'off' (None). ValueError names what is wrong."""
    if value.strip().lower() in ("off", "none", "0"):
        return None
    try:
        return parse(value)
    except ValueError:
        raise ValueError(f"'{value}' is not a rate limit (examples: 100/second, 20/minute, off)") from None


@dataclass(frozen=True)
class Limits:
    per_key: RateLimitItem | None
    per_address: RateLimitItem | None
    failed_auth: RateLimitItem | None
    trusted_proxies: tuple[Network, ...] = ()


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0  # whole seconds, at least 1 when refused
    which: str = ""


def _retry_after(reset_at: float) -> int:
    return max(1, math.ceil(reset_at - time.time()))


class RateLimiter:
    def __init__(self, conn: redis.Redis, limits: Limits) -> None:
        self.limits = limits
        storage = RedisStorage("redis://", connection_pool=conn.connection_pool, key_prefix=RATE_LIMIT_PREFIX)
        self.limiter = SlidingWindowCounterRateLimiter(storage)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str:
        """Who is asking: the peer, or the client a trusted proxy names."""
        addr = peer or "unknown"
        if not forwarded_for or not self._trusted(addr):
            return addr
        for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
            if not self._trusted(hop):
                return hop
            addr = hop
        return addr

    def _trusted(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self.limits.trusted_proxies)

    def _refused(self, item: RateLimitItem, ident: str, which: str) -> Verdict:
        stats = self.limiter.get_window_stats(item, which, ident)
        return Verdict(False, _retry_after(stats.reset_time), which)

    @property
    def limits_addresses(self) -> bool:
        """Does ``before_auth`` ask Redis anything (else it need not be called)?"""
        return self.limits.failed_auth is not None or self.limits.per_address is not None

    @property
    def limits_keys(self) -> bool:
        return self.limits.per_key is not None

    def before_auth(self, address: str) -> Verdict:
        """Blocked after too many failed keys; then the address's own budget. (Redis calls.)"""
        failed, per_addr = self.limits.failed_auth, self.limits.per_address
        if failed is not None and not self.limiter.test(failed, "failed_auth", address):
            return self._refused(failed, address, "failed_auth")
        if per_addr is not None and not self.limiter.hit(per_addr, "address", address):
            return self._refused(per_addr, address, "address")
        return Verdict(True)

    def failed(self, address: str) -> None:
        if self.limits.failed_auth is not None:
            self.limiter.hit(self.limits.failed_auth, "failed_auth", address)

    def after_auth(self, key_name: str) -> Verdict:
        per_key = self.limits.per_key
        if per_key is not None and not self.limiter.hit(per_key, "key", key_name):
            return self._refused(per_key, key_name, "key")
        return Verdict(True)
