"""Webhooks: a signed POST to the fleet's webhook URLs and to a job's own ``callback_url`` when
the job ends (``job.completed``, ``job.failed``, ``job.timed_out``, ``job.canceled``,
``job.rejected``).

Nothing in a job's lifecycle waits for a webhook or can fail because of one: the coordinator
that holds the recovery lease scans the terminal states' indexes (each entry is a transition
with its time) from where it last stopped, and each (job, transition, URL) becomes one durable
delivery in Redis, created once (HSETNX on the job's webhook record). Deliveries are sent with
back-off on transport errors and 5xx only (a 4xx is the receiver's final answer), at most
``MAX_ATTEMPTS`` times, and what became of each is kept with the job (``webhooks`` in its view).
A delivery that succeeded is never sent again; a coordinator dying between a receiver's 2xx
and its record could send it once more, so each carries ``X-Ffrtmp-Delivery`` for receivers to
drop repeats.

Signature: ``X-Ffrtmp-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``;
receivers refuse a ``t`` more than a few minutes old, which stops replays. Destinations follow
the same address policy as URL inputs (``ffrtmp.networks``; ``--allow-webhook-network`` opens
ranges): checked on every address the name resolves to, connected to those addresses only
(the resolver is the policy, so a name cannot re-resolve elsewhere), and redirects are not
followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import redis
from aiohttp.abc import AbstractResolver

from ffrtmp import keys
from ffrtmp.jobs import get_view
from ffrtmp.networks import DestinationRefused, Network, allowed_addresses, parse_networks
from ffrtmp.redact import redact
from ffrtmp.rqjob import SafeJob

log = logging.getLogger("ffrtmp.coordinator.webhooks")
EVENTS = ("completed", "failed", "timed_out", "canceled", "rejected")
MAX_ATTEMPTS = 8
SCAN_BATCH = 500
SEND_BATCH = 20
TIMEOUT_S = 10.0


@dataclass
class WebhookConfig:
    secret: str = ""
    urls: list[str] = field(default_factory=list)  # every job event goes to each
    allow_networks: list[str] = field(default_factory=list)
    retry_base_s: float = 2.0  # back-off: base, 2 x base, 4 x base ... at most 10 minutes

    @property
    def enabled(self) -> bool:
        return bool(self.secret)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, now: float, tolerance_s: float = 300) -> bool:
    """What a receiver does (and the tests): the signature matches and is recent."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    return abs(now - t) <= tolerance_s and hmac.compare_digest(sign(secret, t, body), header)


class PolicyResolver(AbstractResolver):
    """aiohttp's name resolution through the address policy: only addresses it allows are
    returned, and aiohttp connects to exactly those."""

    def __init__(self, nets: list[Network]) -> None:
        self.nets = nets

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        addrs = await asyncio.to_thread(allowed_addresses, host, port, self.nets)
        return [
            {
                "hostname": host,
                "host": a[0],
                "port": a[1],
                "family": socket.AF_INET6 if ":" in str(a[0]) else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for a in addrs
        ]

    async def close(self) -> None:
        return None


class Webhooks:
    def __init__(self, conn: redis.Redis, cfg: WebhookConfig) -> None:
        self.conn = conn
        self.cfg = cfg
        self.nets = parse_networks(cfg.allow_networks)

    # --- finding what to send -------------------------------------------------------------
    def scan(self, now: float | None = None) -> int:
        """Turn the terminal transitions since the last scan into deliveries; how many."""
        now = now or time.time()
        made = 0
        for state in EVENTS:
            raw = self.conn.hget(keys.WEBHOOKS_CURSOR, state)
            if raw is None:  # the first scan starts now: no flood of old jobs
                self.conn.hset(keys.WEBHOOKS_CURSOR, state, now)
                continue
            since = float(raw)
            entries = self.conn.zrangebyscore(
                keys.state_index(state), since, "+inf", start=0, num=SCAN_BATCH, withscores=True
            )
            for member, score in entries:
                made += self._deliveries_for(member.decode(errors="replace"), state, score)
            if entries:
                self.conn.hset(keys.WEBHOOKS_CURSOR, state, max(s for _, s in entries))
        return made

    def _deliveries_for(self, job_id: str, state: str, at: float) -> int:
        view = get_view(self.conn, job_id)
        if view is None or view["state"] != state:
            return 0  # gone, or it moved on (retried) before it was scanned: its next end counts
        targets = list(self.cfg.urls)
        callback = (view.get("spec") or {}).get("callback_url")
        if isinstance(callback, str):
            targets.append(callback)
        body = json.dumps(
            {
                "event": f"job.{state}",
                "time": at,
                "job": redact({k: v for k, v in view.items() if k != "history"}),
            },
            separators=(",", ":"),
        )
        made = 0
        for url in dict.fromkeys(targets):
            did = hashlib.sha256(f"{job_id}|{state}|{at!r}|{url}".encode()).hexdigest()[:24]
            record = json.dumps(
                {"url": redact(url), "event": f"job.{state}", "status": "pending", "attempts": 0}
            )
            if not self.conn.hsetnx(keys.webhooks_key(job_id), did, record):
                continue  # already made by an earlier scan
            with self.conn.pipeline() as pipe:
                pipe.hset(
                    keys.delivery_key(did), mapping={"job": job_id, "url": url, "body": body, "attempts": 0}
                )
                pipe.zadd(keys.WEBHOOKS_DUE, {did: time.time()})
                ttl = self.conn.ttl(SafeJob.key_for(job_id))
                if ttl and ttl > 0:
                    pipe.expire(keys.webhooks_key(job_id), ttl)
                pipe.execute()
            made += 1
        return made

    # --- sending --------------------------------------------------------------------------
    async def send_due(self, session: aiohttp.ClientSession) -> int:
        due = await asyncio.to_thread(
            self.conn.zrangebyscore, keys.WEBHOOKS_DUE, "-inf", time.time(), start=0, num=SEND_BATCH
        )
        for raw in due:
            await self._send_one(session, raw.decode(errors="replace"))
        return len(due)

    async def _send_one(self, session: aiohttp.ClientSession, did: str) -> None:
        rec = await asyncio.to_thread(self.conn.hgetall, keys.delivery_key(did))
        if not rec:
            await asyncio.to_thread(self.conn.zrem, keys.WEBHOOKS_DUE, did)
            return
        job_id, url = rec[b"job"].decode(errors="replace"), rec[b"url"].decode(errors="replace")
        body, attempts = rec[b"body"], int(rec.get(b"attempts", b"0")) + 1
        status, final = await self._post(session, did, url, body)
        if not final and attempts >= MAX_ATTEMPTS:
            final = True
        outcome = (
            "delivered"
            if status.isdigit() and 200 <= int(status) < 300
            else "failed"
            if final
            else "retrying"
        )
        await asyncio.to_thread(self._record, did, job_id, attempts, status, outcome)

    async def _post(
        self, session: aiohttp.ClientSession, did: str, url: str, body: bytes
    ) -> tuple[str, bool]:
        """(what happened: an HTTP status or a reason, whether it is final)."""
        parts = urlsplit(url)
        try:  # IP literals never reach the resolver: the policy is asked here as well
            await asyncio.to_thread(
                allowed_addresses,
                parts.hostname or "",
                parts.port or (443 if parts.scheme == "https" else 80),
                self.nets,
            )
            ts = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "ffrtmp-webhooks",
                "X-Ffrtmp-Delivery": did,
                "X-Ffrtmp-Event": json.loads(body)["event"],
                "X-Ffrtmp-Signature": sign(self.cfg.secret, ts, body),
            }
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                return str(resp.status), resp.status < 500
        except DestinationRefused:
            return "destination_not_allowed", True
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return f"transport_error: {type(exc).__name__}", False

    def _record(self, did: str, job_id: str, attempts: int, status: str, outcome: str) -> None:
        raw = self.conn.hget(keys.webhooks_key(job_id), did)
        try:
            rec = json.loads(raw) if raw else {}
        except ValueError:
            rec = {}
        rec.update(status=outcome, attempts=attempts, last_status=status, at=time.time())
        with self.conn.pipeline() as pipe:
            pipe.hset(keys.webhooks_key(job_id), did, json.dumps(rec))
            if outcome == "retrying":
                pipe.hset(keys.delivery_key(did), "attempts", attempts)
                delay = min(self.cfg.retry_base_s * 2 ** (attempts - 1), 600.0)
                pipe.zadd(keys.WEBHOOKS_DUE, {did: time.time() + delay})
            else:
                pipe.zrem(keys.WEBHOOKS_DUE, did)
                pipe.delete(keys.delivery_key(did))
            pipe.execute()
        if outcome != "delivered":
            log.warning("webhook %s for job %s: %s (%s)", did, job_id, outcome, status, extra={"job": job_id})

    async def loop(self, is_leader: Any, interval_s: float = 1.0) -> None:
        """Scan and send while this coordinator holds the recovery lease (``is_leader()``)."""
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
        connector = aiohttp.TCPConnector(resolver=PolicyResolver(self.nets), limit=20)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while True:
                try:
                    if is_leader():
                        await asyncio.to_thread(self.scan)
                        await self.send_due(session)
                except (redis.RedisError, OSError) as exc:
                    log.warning("webhook pass failed: %s", exc)
                except Exception:  # a bug in one pass must not end deliveries for good
                    log.exception("webhook pass failed")
                await asyncio.sleep(interval_s)
