"""The coordinator's HTTP API (aiohttp). Stateless: every request reads or writes Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import posixpath
import re
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
from ffrtmp.jobs import JOB_ID, cancel, get_view, list_views, retry
from ffrtmp.keys import logs_key
from ffrtmp.model import LABEL_KEY, NODE_NAME, JobSpec, SubmissionError, is_url, validate_spec
from ffrtmp.nodes import NODE_STATES, NodeFilter, get_node, page_nodes, set_draining
from ffrtmp.queues import ALL_QUEUES, TIERS
from ffrtmp.redact import redact
from ffrtmp.redisconn import ping, text
from ffrtmp.submit import MAX_BATCH, IdempotencyConflict, submit_many, submit_many_once
from ffrtmp.terms import JobState

from .config import CoordinatorConfig
from .console import Console
from .grouping import SubmitGroups
from .metrics import CoordinatorMetrics
from .openapi import openapi_spec
from .ratelimit import RateLimiter, Verdict
from .recovery import Recovery
from .routes import ROUTES, role_needed, route_for
from .webhooks import Webhooks

log = logging.getLogger("ffrtmp.coordinator")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 64 * 1024
MAX_BATCH_BODY = 2 * 1024 * 1024  # a batch of MAX_BATCH specs


def error(
    status: int, code: str, message: str, field_name: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if field_name:
        body["field"] = field_name
    return web.json_response({"error": body}, status=status, headers=headers)


CFG: web.AppKey[CoordinatorConfig] = web.AppKey("cfg", CoordinatorConfig)
RECOVERY_TASK: web.AppKey[asyncio.Task[None]] = web.AppKey("recovery_task", asyncio.Task)
WEBHOOK_TASK: web.AppKey[asyncio.Task[None]] = web.AppKey("webhook_task", asyncio.Task)
REDIS_THREADS = 8  # Redis-bound handler work runs here, never on the event loop
LIMITER: web.AppKey[RateLimiter] = web.AppKey("limiter", RateLimiter)


def _canonical(request: web.Request) -> str:
    route = request.match_info.route
    return getattr(route.resource, "canonical", request.path) if route.resource else request.path


def _role_needed(request: web.Request) -> str | None:
    return role_needed(request.method, _canonical(request))


def _is_console(request: web.Request) -> bool:
    route = route_for(request.method, _canonical(request))
    return route is not None and route.console


def _rate_limited(request: web.Request) -> bool:
    route = route_for(request.method, _canonical(request))
    return route is None or route.rate_limited


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    needed = _role_needed(request)
    if needed is None or _is_console(request):  # the console checks its own session
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
    limiter = request.app.get(LIMITER) if _rate_limited(request) else None
    if (
        limiter
        and limiter.limits_keys
        and not (verdict := await run_redis(request, limiter.after_auth, key.name)).allowed
    ):
        return too_many(verdict)
    if not role_allows(key.role, needed):
        return error(403, "forbidden", f"this needs the {needed} role; key '{key.name}' is {key.role}")
    request["api_key"] = key
    return await handler(request)


@web.middleware
async def limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Per-address budgets around authentication (per-key ones are in auth_middleware): an
    address that spent its failed-key budget is refused before its key is even looked at. A
    route that is not rate-limited (/metrics) reaches Redis for the budget only after a wrong
    key, so a right key is answered whatever state Redis is in."""
    limiter = request.app.get(LIMITER)
    if (
        limiter is None
        or not limiter.limits_addresses
        or (_role_needed(request) is None and not _is_console(request))
    ):
        return await handler(request)
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", []))  # every hop's header line
    address = limiter.client_address(request.remote, forwarded)
    limited = _rate_limited(request)
    if limited and not (verdict := await run_redis(request, limiter.before_auth, address)).allowed:
        return too_many(verdict)
    response = await handler(request)
    if response.status == 401:
        if not limited and not (verdict := await run_redis(request, limiter.before_auth, address)).allowed:
            return too_many(verdict)
        await run_redis(request, limiter.failed, address)
    return response


def too_many(verdict: Verdict) -> web.Response:
    what = {
        "failed_auth": "too many failed API keys from this address",
        "address": "too many requests from this address",
        "key": "too many requests with this API key",
    }[verdict.which]
    return error(
        429,
        "rate_limited",
        f"{what}; retry in {verdict.retry_after}s",
        headers={"Retry-After": str(verdict.retry_after)},
    )


async def run_redis(request: web.Request, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a Redis-bound call in the app's Redis threads (see Api.run)."""
    return await request.app[API].run(fn, *args)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json" and not _is_console(request):
            code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
                exc.status, "http_error"
            )
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return error(exc.status, code, exc.reason, headers=allow)
        raise
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.error("redis unavailable: %s", exc)
        return error(
            503,
            "redis_unavailable",
            "the job store is unreachable; retry shortly",
            headers={"Retry-After": "2"},
        )


@web.middleware
async def ids_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A path id that cannot name a job or a node is a 404 before any handler reads Redis
    with it (``/jobs/<id>:<anything>`` must not reach RQ, which would split it)."""
    ident = request.match_info.get("id")
    if ident is not None:
        resource = request.match_info.route.resource
        is_job = resource is not None and "/jobs/" in resource.canonical
        if not (JOB_ID if is_job else NODE_NAME).fullmatch(ident):
            return error(404, "not_found", "no job with this id" if is_job else "no node with this name")
    return await handler(request)


async def _json_body(request: web.Request, max_bytes: int) -> Any:
    """The request's JSON, or the 4xx response that says why there is none."""
    raw = await request.read()  # bounded by the app's client_max_size (the batch limit)
    if len(raw) > max_bytes:
        return error(413, "body_too_large", f"the body is over {max_bytes // 1024} KiB")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        return error(400, "invalid_json", f"the body is not valid JSON: {exc.msg}")
    except UnicodeDecodeError:
        return error(400, "invalid_json", "the body is not UTF-8 text")
    except (ValueError, RecursionError):  # an integer past Python's 4,300 digits, nesting too deep
        return error(400, "invalid_json", "the body is JSON this API does not accept (too deep or too large)")


def _item(i: int, check: Callable[[Any], JobSpec], item: Any) -> JobSpec:
    """One batch item checked; its refusal names it (``jobs[3].scenario``)."""
    try:
        return check(item)
    except SubmissionError as exc:
        raise SubmissionError(f"jobs[{i}]" + (f".{exc.field}" if exc.field else ""), exc.message) from None


def _refused(exc: SubmissionError | IdempotencyConflict) -> web.Response:
    if isinstance(exc, IdempotencyConflict):
        return error(409, "idempotency_conflict", str(exc), "Idempotency-Key")
    if exc.field == "Idempotency-Key":
        return error(400, "invalid_header", exc.message, exc.field)
    return error(422, "invalid_field" if exc.field else "invalid_request", exc.message, exc.field)


def shown(
    request: web.Request, data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A response about jobs: secrets in URLs (passwords, stream keys, tokens) are masked for
    every key but an admin's."""
    key: ApiKey | None = request.get("api_key")
    body = data if key is not None and key.role == "admin" else redact(data)
    return web.json_response(body, status=status, headers=headers)


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
        self.groups = SubmitGroups(self.run, conn, cfg.defaults)

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a Redis-bound call in the Redis threads: the event loop never waits on Redis, so
        /health and every other request stay responsive however slow one request is."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, partial(fn, *args, **kwargs))

    # --- jobs ---------------------------------------------------------------------------
    def _spec(self, data: Any) -> JobSpec:
        spec: JobSpec = validate_spec(data)
        _confine(spec.input, self.cfg.input_roots, "input")
        _confine(spec.output, self.cfg.output_roots, "output")
        if spec.callback_url and not self.cfg.webhooks.enabled:
            raise SubmissionError(
                "callback_url", "this fleet sends no webhooks (the coordinator has no --webhook-secret)"
            )
        return spec

    async def _submit(
        self, request: web.Request, specs: list[JobSpec], numbered: bool
    ) -> tuple[list[dict[str, Any]], bool]:
        idem, defaults = _idempotency_key(request), self.cfg.defaults
        if idem is None and not numbered and len(specs) == 1:
            return [await self.groups.submit(specs[0])], True  # shares a MULTI with its neighbours
        if idem is None:
            return await self.run(submit_many, self.conn, specs, defaults, numbered=numbered), True
        scope = request["api_key"].name
        return await self.run(submit_many_once, self.conn, specs, defaults, scope, idem, numbered=numbered)

    async def submit_job(self, request: web.Request) -> web.Response:
        data = await _json_body(request, MAX_BODY)
        if isinstance(data, web.Response):
            return data
        try:
            spec = self._spec(data)
            (view,), created = await self._submit(request, [spec], numbered=False)
        except (SubmissionError, IdempotencyConflict) as exc:
            return _refused(exc)
        job_id = view["id"]
        headers = {"Location": f"/jobs/{job_id}"}
        if not created:
            return shown(request, view, status=200, headers={**headers, "Idempotent-Replayed": "true"})
        who = request["api_key"].name
        log.info(
            "job submitted",
            extra={"job": job_id, "scenario": spec.scenario, "queue": view["rq_queue"], "key": who},
        )
        return shown(request, view, status=201, headers=headers)

    async def submit_batch(self, request: web.Request) -> web.Response:
        """Up to MAX_BATCH specs, all or nothing: one bad item (named ``jobs[i].field``) or
        one pin that fails refuses the whole batch and nothing is enqueued."""
        data = await _json_body(request, MAX_BATCH_BODY)
        if isinstance(data, web.Response):
            return data
        try:
            items = data.get("jobs") if isinstance(data, dict) and set(data) == {"jobs"} else None
            if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
                raise SubmissionError("jobs", f'the body must be {{"jobs": [1 to {MAX_BATCH} job specs]}}')
            specs = [_item(i, self._spec, item) for i, item in enumerate(items)]
            views, created = await self._submit(request, specs, numbered=True)
        except (SubmissionError, IdempotencyConflict) as exc:
            return _refused(exc)
        if not created:
            return shown(request, {"jobs": views}, status=200, headers={"Idempotent-Replayed": "true"})
        log.info("batch submitted", extra={"jobs": len(views), "key": request["api_key"].name})
        return shown(request, {"jobs": views}, status=201)

    async def list_jobs(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            state = q.get("state")
            if state is not None and state not in {s.value for s in JobState}:
                raise SubmissionError("state", f"state must be one of {', '.join(s.value for s in JobState)}")
            queue = q.get("queue")
            if queue is not None and queue not in TIERS and queue not in ALL_QUEUES:
                raise SubmissionError("queue", "queue must be a tier (live/default/batch) or a queue name")
            label = _label_param(q.get("label"))
            limit = _int_param(request, "limit", 50, 1, 500)
            cursor = _int_param(request, "cursor", 0, 0, 2**62)
        except SubmissionError as exc:
            return error(422, "invalid_field", exc.message, exc.field)
        jobs, nxt = await self.run(
            list_views,
            self.conn,
            state=state,
            queue=queue,
            node=q.get("node"),
            label=label,
            cursor=cursor,
            limit=limit,
        )
        return shown(request, {"jobs": jobs, "next_cursor": str(nxt) if nxt is not None else None})

    async def get_job(self, request: web.Request) -> web.Response:
        view = await self.run(get_view, self.conn, request.match_info["id"])
        if view is None:
            return error(404, "not_found", f"no job {request.match_info['id']}")
        return shown(request, view)

    async def job_logs(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        view = await self.run(get_view, self.conn, job_id)
        if view is None:
            return error(404, "not_found", f"no job {job_id}")
        raw = await self.run(self.conn.hgetall, logs_key(job_id))
        attempts = {text(k): text(v) for k, v in sorted(raw.items())}
        return shown(request, {"id": job_id, "state": view["state"], "attempts": attempts})

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
        return shown(request, {"outcome": outcome, "job": view}, status=200 if outcome == "canceled" else 202)

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
        return shown(request, {"outcome": outcome, "job": view}, status=202)

    # --- nodes and queues ------------------------------------------------------------------
    async def nodes(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            state = q.get("state")
            if state is not None and state not in NODE_STATES:
                raise SubmissionError("state", f"state must be one of {', '.join(NODE_STATES)}")
            draining = q.get("draining")
            if draining is not None and draining not in ("true", "false"):
                raise SubmissionError("draining", "draining must be true or false")
            encoder = q.get("encoder")
            if encoder is not None and not NODE_NAME.fullmatch(encoder):
                raise SubmissionError("encoder", "encoder must be an FFmpeg encoder name (e.g. h264_nvenc)")
            cursor = q.get("cursor", "")
            if cursor and not NODE_NAME.fullmatch(cursor):
                raise SubmissionError("cursor", "cursor must be a node name (next_cursor of a page)")
            limit = _int_param(request, "limit", 1000, 1, 1000)
        except SubmissionError as exc:
            return error(422, "invalid_field", exc.message, exc.field)
        keep = NodeFilter(state, None if draining is None else draining == "true", encoder)
        nodes, nxt = await self.run(
            page_nodes, self.conn, self.cfg.heartbeat_timeout, keep=keep, after=cursor, limit=limit
        )
        return web.json_response({"nodes": nodes, "next_cursor": nxt})

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
        await self.run(set_draining, self.conn, name, drain, who)
        log.info("node %s", "drain requested" if drain else "undrained", extra={"node": name, "key": who})
        return web.json_response(await self.run(get_node, self.conn, name, self.cfg.heartbeat_timeout))

    async def queues(self, _request: web.Request) -> web.Response:
        return web.json_response({"queues": await self.run(self.metrics.queue_stats)})

    # --- service --------------------------------------------------------------------------
    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__})

    async def ready(self, _request: web.Request) -> web.Response:
        ok = await self.run(ping, self.conn)
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def metrics_handler(self, _request: web.Request) -> web.Response:
        # the probe runs outside the Redis threads, which a frozen Redis may all be holding
        if await asyncio.to_thread(self.metrics.redis_answers):
            body = await self.run(generate_latest, self.metrics.registry)
        else:
            body = self.metrics.exposition_while_down()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, _request: web.Request) -> web.Response:
        return web.json_response(openapi_spec())


def _label_param(raw: str | None) -> tuple[str, str] | None:
    """``?label=key=value``: the one label a listing filters on."""
    if raw is None:
        return None
    key, sep, value = raw.partition("=")
    if not sep or not LABEL_KEY.match(key) or len(value) > 128:
        raise SubmissionError(
            "label", "label must be key=value (a label key, a value of at most 128 characters)"
        )
    return key, value


_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")


def _idempotency_key(request: web.Request) -> str | None:
    """The request's Idempotency-Key header: 1-128 visible ASCII characters, or absent."""
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(value):
        raise SubmissionError("Idempotency-Key", "must be 1-128 visible ASCII characters")
    return value


API: web.AppKey[Api] = web.AppKey("api", Api)


def build_app(cfg: CoordinatorConfig, conn: redis.Redis) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, limit_middleware, auth_middleware, ids_middleware],
        client_max_size=MAX_BATCH_BODY,
    )
    app[CFG] = cfg
    api = Api(cfg, conn)
    app[API] = api
    if cfg.limits is not None:
        app[LIMITER] = RateLimiter(conn, cfg.limits)
    console = Console(api)
    for route in ROUTES:
        app.router.add_route(
            route.method, route.path, getattr(console if route.console else api, route.handler)
        )

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
        if cfg.webhooks.enabled:
            hooks = Webhooks(conn, cfg.webhooks, cfg.heartbeat_timeout)

            async def start_webhooks(app: web.Application) -> None:
                app[WEBHOOK_TASK] = asyncio.create_task(hooks.loop(lambda: recovery.is_leader))

            async def stop_webhooks(app: web.Application) -> None:
                app[WEBHOOK_TASK].cancel()
                await asyncio.gather(app[WEBHOOK_TASK], return_exceptions=True)

            app.on_startup.append(start_webhooks)
            app.on_cleanup.append(stop_webhooks)
    return app


__all__ = ["ApiKey", "CoordinatorConfig", "build_app"]
