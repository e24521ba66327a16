"""Webhooks: a signed POST to the fleet's webhook URLs and to a job's own ``callback_url`` when
the job ends (``job.completed``, ``job.failed``, ``job.timed_out``, ``job.canceled``,
``job.rejected``).

Nothing in a job's lifecycle waits for a webhook or can fail because of one: the transaction
that ends a job appends the end to the ``keys.EVENTS`` stream; the coordinator that holds the
recovery lease reads it on from the last id it handled, and each (job, end, URL) becomes one
durable delivery in Redis, created once (HSETNX on the job's webhook record). ``node.down``
comes from the fleet summary, once per outage of a node. Deliveries are sent with
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
import contextlib
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
from ffrtmp.nodes import fleet_summary
from ffrtmp.redact import redact
from ffrtmp.redisconn import text
from ffrtmp.rqjob import SafeJob

log = logging.getLogger("ffrtmp.coordinator.webhooks")
EVENTS = ("completed", "failed", "timed_out", "canceled", "rejected")
MAX_ATTEMPTS = 8
SCAN_BATCH = 500
SEND_BATCH = 20
TIMEOUT_S = 10.0
MAX_ANSWER_BYTES = 64 * 1024
NODES_CHECK_S = 5.0
DELIVERY_TTL_S = 7 * 24 * 3600  # a delivery nobody could send is forgotten after a week
FLEET, CALLBACK = "fleet", "callback"  # whose URL: the operator's fleet-wide, or a job's own


@dataclass
class WebhookConfig:
    secret: str = ""
    urls: list[str] = field(default_factory=list)  # every job event goes to each
    allow_networks: list[str] = field(default_factory=list)
    retry_base_s: float = 2.0  # back-off: base, 2 x base, 4 x base ... at most 10 minutes
    callback_networks: list[str] = field(default_factory=list)  # a job's callback_url's

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
    def __init__(self, conn: redis.Redis, cfg: WebhookConfig, heartbeat_timeout_s: float = 90.0) -> None:
        self.conn = conn
        self.cfg = cfg
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.nets = {
            FLEET: parse_networks(cfg.allow_networks),
            CALLBACK: parse_networks(cfg.callback_networks),
        }
        self._nodes_checked = 0.0

    # --- finding what to send -------------------------------------------------------------
    def scan(self, now: float | None = None) -> int:
        """Turn the fleet events since the last scan (``keys.EVENTS``) into deliveries, and
        nodes that went down into ``node.down``; how many deliveries it made. An event that
        cannot be turned into one (an unreadable job, a bug) is logged and passed over: the
        cursor moves past it, so it never holds up those behind it."""
        now = now or time.time()
        made = 0
        last = self.conn.get(keys.WEBHOOKS_CURSOR)
        if last is None:  # the first scan starts now: no flood of old jobs or old outages
            newest = self.conn.xrevrange(keys.EVENTS, count=1)
            self.conn.set(keys.WEBHOOKS_CURSOR, newest[0][0] if newest else b"0-0")
            self._nodes_down(now, announce=False)
            self._nodes_checked = now
            return 0
        entries = self.conn.xrange(keys.EVENTS, min=b"(" + last, count=SCAN_BATCH)
        for entry_id, fields in entries:
            try:
                made += self._job_event(fields)
            except (redis.ConnectionError, redis.TimeoutError):
                raise  # Redis is away: this event is tried again on the next pass
            except Exception:
                log.exception("webhooks: passed over event %r", entry_id)
        if entries:
            self.conn.set(keys.WEBHOOKS_CURSOR, entries[-1][0])
        if now - self._nodes_checked >= NODES_CHECK_S:
            self._nodes_checked = now
            made += self._nodes_down(now)
        return made

    def _job_event(self, fields: dict[bytes, bytes]) -> int:
        """Deliveries for one job's end (an entry is untrusted: a bad one is skipped)."""
        try:
            job_id, state = fields[b"job"].decode(), fields[b"state"].decode()
            at = float(fields[b"at"])
        except (KeyError, ValueError):
            log.warning("webhooks: skipped an unreadable event %r", fields)
            return 0
        if state not in EVENTS:
            return 0
        # the job as it is now is this end only if it is still in that state since then: an end
        # it was retried out of, and ended again since, is told by the later event
        if self.conn.zscore(keys.state_index(state), job_id) != at:
            return 0
        view = get_view(self.conn, job_id)
        if view is None or view["state"] != state:
            return 0  # gone, or it moved on (retried) before it was scanned: its next end counts
        body = _body(f"job.{state}", at, {"job": redact({k: v for k, v in view.items() if k != "history"})})
        targets = [(u, FLEET) for u in self.cfg.urls]
        callback = (view.get("spec") or {}).get("callback_url")
        if isinstance(callback, str):
            targets.append((callback, CALLBACK))
        made = 0
        for url, kind in dict.fromkeys(targets):
            did = hashlib.sha256(f"{job_id}|{state}|{at!r}|{url}".encode()).hexdigest()[:24]
            made += self._deliver(did, url, kind, body, f"job.{state}", job_id)
        return made

    def _nodes_down(self, now: float, announce: bool = True) -> int:
        """``node.down`` once for each node that missed its heartbeats (again after it came
        back and went down anew), to the fleet URLs. The record of the outages told is written
        with HSETNX, so two coordinators passing the lease never tell one twice."""
        down = [name for name, _ in fleet_summary(self.conn, self.heartbeat_timeout_s).down]
        told = {text(k) for k in self.conn.hkeys(keys.WEBHOOKS_NODES_DOWN)}
        if back := [n for n in told if n not in set(down)]:
            self.conn.hdel(keys.WEBHOOKS_NODES_DOWN, *back)
        fresh = [n for n in down if n not in told]
        if not fresh:
            return 0
        beats = self.conn.zmscore(keys.NODES_INDEX, fresh)
        made = 0
        for name, beat in zip(fresh, beats, strict=True):
            if beat is None or not self.conn.hsetnx(keys.WEBHOOKS_NODES_DOWN, name, beat) or not announce:
                continue
            body = _body("node.down", now, {"node": {"name": name, "last_heartbeat": beat}})
            for url in self.cfg.urls:
                did = hashlib.sha256(f"node|{name}|{beat!r}|{url}".encode()).hexdigest()[:24]
                made += self._deliver(did, url, FLEET, body, "node.down", None)
        return made

    def _deliver(self, did: str, url: str, kind: str, body: str, event: str, job_id: str | None) -> int:
        """Make one durable delivery, once (a job's are recorded with the job)."""
        if job_id is not None:
            record = json.dumps({"url": redact(url), "event": event, "status": "pending", "attempts": 0})
            if not self.conn.hsetnx(keys.webhooks_key(job_id), did, record):
                return 0  # already made by an earlier scan
        elif not self.conn.set(keys.delivery_key(did), "", nx=True, ex=DELIVERY_TTL_S):
            return 0
        with self.conn.pipeline() as pipe:
            mapping = {"job": job_id or "", "url": url, "kind": kind, "body": body, "attempts": 0}
            pipe.delete(keys.delivery_key(did))
            pipe.hset(keys.delivery_key(did), mapping=mapping)
            pipe.expire(keys.delivery_key(did), DELIVERY_TTL_S)
            pipe.zadd(keys.WEBHOOKS_DUE, {did: time.time()})
            if job_id is not None:
                ttl = self.conn.ttl(SafeJob.key_for(job_id))
                if ttl and ttl > 0:
                    pipe.expire(keys.webhooks_key(job_id), ttl)
            pipe.execute()
        return 1

    # --- sending --------------------------------------------------------------------------
    async def send_due(self, sessions: dict[str, aiohttp.ClientSession]) -> int:
        """Send what is due, up to ``SEND_BATCH`` at once; one delivery that fails in any way
        is dropped or retried on its own and never holds up the others."""
        due = await asyncio.to_thread(
            self.conn.zrangebyscore, keys.WEBHOOKS_DUE, "-inf", time.time(), start=0, num=SEND_BATCH
        )
        await asyncio.gather(*(self._send_safely(sessions, raw) for raw in due))
        return len(due)

    async def _send_safely(self, sessions: dict[str, aiohttp.ClientSession], did: bytes | str) -> None:
        """``did`` as Redis holds it (bytes that are not UTF-8 included), so a broken entry is
        the one removed."""
        try:
            await self._send_one(sessions, did)
        except (redis.RedisError, OSError) as exc:
            log.warning("webhook %s: %s", did, exc)
        except Exception:  # an unreadable record: dropped, so it cannot stall the rest
            log.exception("webhook %s: dropped an unusable delivery", did)
            await asyncio.to_thread(self._drop, did)

    def _drop(self, did: bytes | str) -> None:
        raw = did if isinstance(did, bytes) else did.encode()
        with self.conn.pipeline() as pipe:
            pipe.zrem(keys.WEBHOOKS_DUE, raw)
            pipe.delete(keys.delivery_key("").encode() + raw)  # the id's bytes as Redis has them
            pipe.execute()

    async def _send_one(self, sessions: dict[str, aiohttp.ClientSession], raw_id: bytes | str) -> None:
        did = raw_id.decode() if isinstance(raw_id, bytes) else raw_id  # not UTF-8: dropped
        rec = await asyncio.to_thread(self.conn.hgetall, keys.delivery_key(did))
        if not rec:
            await asyncio.to_thread(self.conn.zrem, keys.WEBHOOKS_DUE, did)
            return
        job_id, url = rec[b"job"].decode(), rec[b"url"].decode()
        body, attempts = rec[b"body"], int(rec.get(b"attempts", b"0")) + 1
        kind = FLEET if rec.get(b"kind") == FLEET.encode() else CALLBACK  # unsure: the narrower
        status, final = await self._post(sessions[kind], self.nets[kind], did, url, body)
        if not final and attempts >= MAX_ATTEMPTS:
            final = True
        outcome = (
            "delivered"
            if status.isdigit() and 200 <= int(status) < 300
            else "failed"
            if final
            else "retrying"
        )
        await asyncio.to_thread(self._record, did, job_id or None, attempts, status, outcome)

    async def _post(
        self, session: aiohttp.ClientSession, nets: list[Network], did: str, url: str, body: bytes
    ) -> tuple[str, bool]:
        """(what happened: an HTTP status or a reason, whether it is final)."""
        try:  # IP literals never reach the resolver: the policy is asked here as well
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            await asyncio.to_thread(allowed_addresses, parts.hostname or "", port, nets)
            ts = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "ffrtmp-webhooks",
                "X-Ffrtmp-Delivery": did,
                "X-Ffrtmp-Event": json.loads(body)["event"],
                "X-Ffrtmp-Signature": sign(self.cfg.secret, ts, body),
            }
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.content.read(MAX_ANSWER_BYTES)  # the status is the answer; the body is capped
                return str(resp.status), resp.status < 500
        except DestinationRefused:
            return "destination_not_allowed", True
        except ValueError:  # a port out of range, a name that is not one
            return "bad_url", True
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return f"transport_error: {type(exc).__name__}", False

    def _record(self, did: str, job_id: str | None, attempts: int, status: str, outcome: str) -> None:
        raw = self.conn.hget(keys.webhooks_key(job_id), did) if job_id else None
        try:
            rec = json.loads(raw) if raw else {}
        except ValueError:
            rec = {}
        rec.update(status=outcome, attempts=attempts, last_status=status, at=time.time())
        with self.conn.pipeline() as pipe:
            if raw is not None:  # the job (and its record) may have expired meanwhile
                pipe.hset(keys.webhooks_key(job_id), did, json.dumps(rec))  # type: ignore[arg-type]
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
        """Scan and send while this coordinator holds the recovery lease (``is_leader()``).
        The fleet's own URLs may reach the networks ``--allow-webhook-network`` opens; a job's
        ``callback_url`` (any operator's choice) those of ``--allow-callback-network``."""
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
        async with contextlib.AsyncExitStack() as stack:
            sessions = {
                kind: await stack.enter_async_context(
                    aiohttp.ClientSession(
                        timeout=timeout,
                        connector=aiohttp.TCPConnector(resolver=PolicyResolver(nets), limit=SEND_BATCH),
                    )
                )
                for kind, nets in self.nets.items()
            }
            while True:
                if is_leader():  # the scan and the sending apart: one failing stops not the other
                    await self._guarded(asyncio.to_thread(self.scan))
                    await self._guarded(self.send_due(sessions))
                await asyncio.sleep(interval_s)

    @staticmethod
    async def _guarded(step: Any) -> None:
        try:
            await step
        except (redis.RedisError, OSError) as exc:
            log.warning("webhook pass failed: %s", exc)
        except Exception:  # a bug in one pass must not end deliveries for good
            log.exception("webhook pass failed")


def _body(event: str, at: float, about: dict[str, Any]) -> str:
    return json.dumps({"event": event, "time": at, **about}, separators=(",", ":"))
