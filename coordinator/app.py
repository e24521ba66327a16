"""The coordinator's HTTP API (aiohttp). Stateless: every request reads or writes Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import posixpath
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import redis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ffrtmp import __version__
from ffrtmp.auth import ApiKey, KeyRing, role_allows
from ffrtmp.jobs import cancel, get_view, list_views, retry, submit
from ffrtmp.keys import logs_key
from ffrtmp.model import JobSpec, JobState, SubmissionError, is_url, validate_spec
from ffrtmp.nodes import drain_key, get_node, list_nodes
from ffrtmp.queues import ALL_QUEUES, TIERS
from ffrtmp.redisconn import ping

from .config import CoordinatorConfig
from .metrics import CoordinatorMetrics
from .openapi import openapi_spec
from .recovery import Recovery
from .routes import ROUTES, role_needed

log = logging.getLogger("ffrtmp.coordinator")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 64 * 1024


def error(
    status: int, code: str, message: str, field_name: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if field_name:
        body["field"] = field_name
    return web.json_response({"error": body}, status=status, headers=headers)


CFG: web.AppKey[CoordinatorConfig] = web.AppKey("cfg", CoordinatorConfig)
RECOVERY_TASK: web.AppKey[asyncio.Task[None]] = web.AppKey("recovery_task", asyncio.Task)
REDIS_THREADS = 8  # Redis-bound handler work runs here, never on the event loop


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = request.match_info.route
    canonical = getattr(route.resource, "canonical", request.path) if route.resource else request.path
    needed = role_needed(request.method, canonical)
    if needed is None:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    keys: KeyRing = request.app[CFG].keys
    key = keys.lookup(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
    if key is None:
        return error(
            401,
            "unauthorized",
            "missing or invalid API key (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": 'Bearer realm="ffrtmp"'},
        )
    if not role_allows(key.role, needed):
        return error(403, "forbidden", f"this needs the {needed} role; key '{key.name}' is {key.role}")
    request["api_key"] = key
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
                exc.status, "http_error"
            )
            return error(exc.status, code, exc.reason)
        raise
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.error("redis unavailable: %s", exc)
        return error(
            503,
            "redis_unavailable",
            "the job store is unreachable; retry shortly",
            headers={"Retry-After": "2"},
        )


def _confine(value: str | None, roots: list[str], field_name: str) -> None:
    """Where the coordinator knows the roots, absolute paths are checked here as well as on
    the agent (which also resolves symlinks)."""
    if value is None or is_url(value) or not value.startswith("/") or not roots:
        return
    norm = posixpath.normpath(value)
    if not any(norm == r or norm.startswith(r.rstrip("/") + "/") for r in roots):
        raise SubmissionError(field_name, f"{field_name} {value} is not under a configured {field_name} root")


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SubmissionError(name, f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise SubmissionError(name, f"{name} must be between {lo} and {hi}")
    return value


class Api:
    def __init__(self, cfg: CoordinatorConfig, conn: redis.Redis) -> None:
        self.cfg = cfg
        self.conn = conn
        self.metrics = CoordinatorMetrics(conn, cfg)
        self.pool = ThreadPoolExecutor(REDIS_THREADS, thread_name_prefix="redis")

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a Redis-bound call in the Redis threads: the event loop never waits on Redis, so
        /health and every other request stay responsive however slow one request is."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, partial(fn, *args, **kwargs))

    # --- jobs ---------------------------------------------------------------------------
    async def submit_job(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
        except json.JSONDecodeError as exc:
            return error(400, "invalid_json", f"the body is not valid JSON: {exc.msg}")
        except UnicodeDecodeError:
            return error(400, "invalid_json", "the body is not UTF-8 text")
        try:
            spec: JobSpec = validate_spec(data)
            _confine(spec.input, self.cfg.input_roots, "input")
            _confine(spec.output, self.cfg.output_roots, "output")
        except SubmissionError as exc:
            return error(422, "invalid_field" if exc.field else "invalid_request", exc.message, exc.field)
        view = await self.run(submit, self.conn, spec, self.cfg.defaults)
        job_id = view["id"]
        log.info(
            "job submitted",
            extra={
                "job": job_id,
                "scenario": spec.scenario,
                "queue": view["rq_queue"],
                "key": request["api_key"].name,
            },
        )
        return web.json_response(view, status=201, headers={"Location": f"/jobs/{job_id}"})

    async def list_jobs(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            state = q.get("state")
            if state is not None and state not in {s.value for s in JobState}:
                raise SubmissionError("state", f"state must be one of {', '.join(s.value for s in JobState)}")
            queue = q.get("queue")
            if queue is not None and queue not in TIERS and queue not in ALL_QUEUES:
                raise SubmissionError("queue", "queue must be a tier (live/default/batch) or a queue name")
            limit = _int_param(request, "limit", 50, 1, 500)
            cursor = _int_param(request, "cursor", 0, 0, 2**62)
        except SubmissionError as exc:
            return error(422, "invalid_field", exc.message, exc.field)
        jobs, nxt = await self.run(
            list_views, self.conn, state=state, queue=queue, node=q.get("node"), cursor=cursor, limit=limit
        )
        return web.json_response({"jobs": jobs, "next_cursor": str(nxt) if nxt is not None else None})

    async def get_job(self, request: web.Request) -> web.Response:
        view = await self.run(get_view, self.conn, request.match_info["id"])
        if view is None:
            return error(404, "not_found", f"no job {request.match_info['id']}")
        return web.json_response(view)

    async def job_logs(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        view = await self.run(get_view, self.conn, job_id)
        if view is None:
            return error(404, "not_found", f"no job {job_id}")
        raw = await self.run(self.conn.hgetall, logs_key(job_id))
        attempts = {k.decode(): v.decode("utf-8", "replace") for k, v in sorted(raw.items())}
        return web.json_response({"id": job_id, "state": view["state"], "attempts": attempts})

    async def cancel_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        who = request["api_key"].name
        outcome, view = await self.run(cancel, self.conn, job_id, f"key {who}")
        if outcome == "missing":
            return error(404, "not_found", f"no job {job_id}")
        if outcome == "terminal":
            return error(
                409, "already_finished", f"job {job_id} is already {view['state'] if view else 'gone'}"
            )
        log.info("cancel %s", outcome, extra={"job": job_id, "key": who})
        return web.json_response(
            {"outcome": outcome, "job": view}, status=200 if outcome == "canceled" else 202
        )

    async def retry_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        who = request["api_key"].name
        outcome, view = await self.run(retry, self.conn, job_id, f"key {who}")
        if outcome == "missing":
            return error(404, "not_found", f"no job {job_id}")
        if outcome == "not_retryable":
            state = view["state"] if view else "gone"
            return error(
                409,
                "not_retryable",
                f"job {job_id} is {state}; only failed, timed_out, canceled or rejected jobs can be retried",
            )
        log.info("retry queued", extra={"job": job_id, "key": who})
        return web.json_response({"outcome": outcome, "job": view}, status=202)

    # --- nodes and queues ------------------------------------------------------------------
    async def nodes(self, _request: web.Request) -> web.Response:
        nodes = await self.run(list_nodes, self.conn, self.cfg.heartbeat_timeout)
        return web.json_response({"nodes": nodes})

    async def node(self, request: web.Request) -> web.Response:
        rec = await self.run(get_node, self.conn, request.match_info["id"], self.cfg.heartbeat_timeout)
        if rec is None:
            return error(404, "not_found", f"no node {request.match_info['id']}")
        return web.json_response(rec)

    async def set_drain(self, request: web.Request) -> web.Response:
        name = request.match_info["id"]
        if await self.run(get_node, self.conn, name, self.cfg.heartbeat_timeout) is None:
            return error(404, "not_found", f"no node {name}")
        drain = request.path.endswith("/drain")
        who = request["api_key"].name
        if drain:
            await self.run(self.conn.set, drain_key(name), who)
        else:
            await self.run(self.conn.delete, drain_key(name))
        log.info("node %s", "drain requested" if drain else "undrained", extra={"node": name, "key": who})
        return web.json_response(await self.run(get_node, self.conn, name, self.cfg.heartbeat_timeout))

    async def queues(self, _request: web.Request) -> web.Response:
        return web.json_response({"queues": await self.run(self.metrics.queue_stats)})

    # --- service --------------------------------------------------------------------------
    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__})

    async def ready(self, _request: web.Request) -> web.Response:
        ok = await self.run(ping, self.conn)
        body = {"ready": ok, "redis": "ok" if ok else "unreachable"}
        return web.json_response(body, status=200 if ok else 503)

    async def metrics_handler(self, _request: web.Request) -> web.Response:
        body = await self.run(generate_latest, self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, _request: web.Request) -> web.Response:
        return web.json_response(openapi_spec())


def build_app(cfg: CoordinatorConfig, conn: redis.Redis) -> web.Application:
    app = web.Application(middlewares=[error_middleware, auth_middleware], client_max_size=MAX_BODY)
    app[CFG] = cfg
    api = Api(cfg, conn)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, getattr(api, route.handler))

    async def stop_pool(_app: web.Application) -> None:
        api.pool.shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(stop_pool)

    if cfg.run_recovery:
        recovery = Recovery(conn, cfg, node_id=f"{os.uname().nodename}:{os.getpid()}:{int(time.time())}")

        async def start_recovery(app: web.Application) -> None:
            app[RECOVERY_TASK] = asyncio.create_task(recovery.loop())

        async def stop_recovery(app: web.Application) -> None:
            app[RECOVERY_TASK].cancel()
            await asyncio.gather(app[RECOVERY_TASK], return_exceptions=True)
            await asyncio.to_thread(recovery.release)

        app.on_startup.append(start_recovery)
        app.on_cleanup.append(stop_recovery)
    return app


__all__ = ["ApiKey", "CoordinatorConfig", "build_app"]
