"""``ffrtmp-coordinator``: serve the API and run the recovery loop."""

from __future__ import annotations

import logging
import os
import signal
import ssl
import sys
from typing import Any
from urllib.parse import urlsplit

import click
from aiohttp import web
from limits import RateLimitItem

from ffrtmp import options
from ffrtmp.auth import ApiKey, KeyFileError, KeyRing, hash_key, read_key_file
from ffrtmp.durations import DURATION
from ffrtmp.keys import Retention
from ffrtmp.logs import reopen_logs, setup_logging
from ffrtmp.networks import parse_networks
from ffrtmp.redisconn import connect
from ffrtmp.submit import SubmitDefaults
from ffrtmp.tls import ServerTls, TlsError, server_tls

from .app import build_app
from .config import CoordinatorConfig
from .ratelimit import Limits, parse_limit
from .webhooks import WebhookConfig

log = logging.getLogger("ffrtmp.coordinator")


def load_keys(keys_file: str | None) -> KeyRing:
    keys: list[ApiKey] = []
    if keys_file:
        try:
            keys += read_key_file(keys_file)
        except KeyFileError as exc:
            raise click.UsageError(f"--api-keys-file: {exc}") from None
    env_key = os.environ.get("FFRTMP_API_KEY")
    if env_key:
        keys.append(ApiKey("env-admin", "admin", hash_key(env_key)))
    if not keys:
        raise click.UsageError(
            "no API keys: set FFRTMP_API_KEY or give --api-keys-file "
            "(create one with: ffrtmp keys new NAME --role admin)"
        )
    return KeyRing(keys)


def _limit(_ctx: click.Context, param: click.Parameter, value: str) -> RateLimitItem | None:
    try:
        return parse_limit(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def _limits(kw: dict[str, Any]) -> Limits:
    try:
        proxies = tuple(parse_networks(list(kw["trusted_proxies"])))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--trusted-proxy") from None
    return Limits(kw["rate_limit_key"], kw["rate_limit_address"], kw["rate_limit_failed_auth"], proxies)


def on_sighup(tls: ServerTls | None, ctx: ssl.SSLContext | None) -> None:
    """SIGHUP reopens the log file and reloads the TLS certificate and key (rotation without a
    restart: handshakes after it use the new pair; a bad pair keeps the old one, logged)."""

    def handle(_signum: int, _frame: Any) -> None:
        reopen_logs()
        if tls and ctx:
            try:
                tls.reload(ctx)
                log.info("TLS certificate reloaded from %s", tls.cert)
            except TlsError as exc:
                log.error("TLS certificate not reloaded, the old one stays: %s", exc)

    signal.signal(signal.SIGHUP, handle)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--host", envvar="FFRTMP_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="FFRTMP_PORT", type=click.IntRange(0, 65535), default=8080, show_default=True)
@options.redis_url
@click.option(
    "--api-keys-file",
    envvar="FFRTMP_API_KEYS_FILE",
    type=click.Path(dir_okay=False),
    help="Lines of '<name> <role> sha256:<hex>' (ffrtmp keys new). FFRTMP_API_KEY adds one admin key.",
)
@click.option(
    "--max-retries",
    envvar="FFRTMP_MAX_RETRIES",
    type=click.IntRange(0, 9),
    default=2,
    show_default=True,
    help="Requeues after a platform failure (node lost, agent killed) for jobs that do not set "
    "max_attempts: a job gets max-retries + 1 attempts. Workload failures are never retried.",
)
@click.option(
    "--scheduler-interval",
    envvar="FFRTMP_SCHEDULER_INTERVAL",
    type=DURATION,
    default="10s",
    show_default=True,
    help="How often the recovery loop runs.",
)
@options.heartbeat_interval("The agents' heartbeat interval.")
@click.option(
    "--heartbeat-timeout",
    envvar="FFRTMP_HEARTBEAT_TIMEOUT",
    type=DURATION,
    default=None,
    help="A node is dead after this long without a heartbeat [default: 3 x heartbeat interval]",
)
@click.option(
    "--cancel-grace",
    envvar="FFRTMP_CANCEL_GRACE",
    type=DURATION,
    default="30s",
    show_default=True,
    help="SIGTERM to SIGKILL grace when a job is canceled or times out.",
)
@click.option(
    "--default-timeout",
    envvar="FFRTMP_DEFAULT_TIMEOUT",
    type=DURATION,
    default="6h",
    show_default=True,
    help="Timeout of jobs that set neither timeout nor duration.",
)
@click.option(
    "--result-ttl",
    envvar="FFRTMP_RESULT_TTL",
    type=DURATION,
    default="168h",
    show_default=True,
    help="How long completed jobs are kept.",
)
@click.option(
    "--failure-ttl",
    envvar="FFRTMP_FAILURE_TTL",
    type=DURATION,
    default="720h",
    show_default=True,
    help="How long failed, canceled and timed-out jobs are kept.",
)
@options.roots(
    "Absolute input paths must be under one of these (checked again on the agent).",
    "Absolute output paths must be under one of these (checked again on the agent).",
)
@click.option(
    "--tls-cert",
    envvar="FFRTMP_TLS_CERT",
    type=click.Path(dir_okay=False),
    help="Serve HTTPS with this certificate (PEM, chain included); reloaded on SIGHUP.",
)
@click.option("--tls-key", envvar="FFRTMP_TLS_KEY", type=click.Path(dir_okay=False), help="Its private key.")
@click.option(
    "--tls-client-ca",
    envvar="FFRTMP_TLS_CLIENT_CA",
    type=click.Path(dir_okay=False),
    help="Require client certificates signed by this CA (mTLS): others fail the handshake.",
)
@click.option(
    "--rate-limit-key",
    envvar="FFRTMP_RATE_LIMIT_KEY",
    default="200/second",
    show_default=True,
    callback=_limit,
    help="Requests per API key, shared by every coordinator through Redis ('off' for none).",
)
@click.option(
    "--rate-limit-address",
    envvar="FFRTMP_RATE_LIMIT_ADDRESS",
    default="400/second",
    show_default=True,
    callback=_limit,
    help="Requests per client address that need a key ('off' for none).",
)
@click.option(
    "--rate-limit-failed-auth",
    envvar="FFRTMP_RATE_LIMIT_FAILED_AUTH",
    default="30/minute",
    show_default=True,
    callback=_limit,
    help="Wrong or missing keys per client address; past it the address gets 429 for everything.",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    envvar="FFRTMP_TRUSTED_PROXIES",
    multiple=True,
    help="A proxy (address or CIDR) whose X-Forwarded-For names the client (HAProxy in front). Repeatable.",
)
@click.option(
    "--header-timeout",
    envvar="FFRTMP_HEADER_TIMEOUT",
    type=DURATION,
    default="15s",
    show_default=True,
    help="A connection that has not sent a whole request head within this is closed; an idle "
    "keep-alive connection too.",
)
@click.option(
    "--webhook-secret",
    envvar="FFRTMP_WEBHOOK_SECRET",
    default="",
    help="HMAC key that signs webhook deliveries; without it no webhook is sent and jobs with a "
    "callback_url are refused.",
)
@click.option(
    "--webhook-url",
    "webhook_urls",
    envvar="FFRTMP_WEBHOOK_URLS",
    multiple=True,
    help="An http(s) URL that gets every job's end (job.completed, job.failed, ...). Repeatable.",
)
@click.option(
    "--allow-webhook-network",
    "webhook_networks",
    envvar="FFRTMP_ALLOW_WEBHOOK_NETWORKS",
    multiple=True,
    help="A network inside (CIDR) the --webhook-url receivers may be in; by default only public "
    "addresses. Repeatable.",
)
@click.option(
    "--allow-callback-network",
    "callback_networks",
    envvar="FFRTMP_ALLOW_CALLBACK_NETWORKS",
    multiple=True,
    help="A network inside (CIDR) a job's callback_url may reach (any operator chooses those); by "
    "default only public addresses. Repeatable.",
)
@click.option(
    "--webhook-retry-base",
    envvar="FFRTMP_WEBHOOK_RETRY_BASE",
    type=DURATION,
    default="2s",
    show_default=True,
    help="First back-off between delivery attempts (doubling, at most 10 min; 8 attempts).",
)
@options.logging("coordinator")
def main(**kw: Any) -> None:
    """Run the ffrtmp coordinator (REST API, recovery loop, metrics)."""
    setup_logging("coordinator", kw["log_level"], kw["log_dir"])
    try:
        tls = server_tls(kw["tls_cert"], kw["tls_key"], kw["tls_client_ca"])
        ssl_context = tls.context() if tls else None
    except TlsError as exc:
        raise click.UsageError(str(exc)) from None
    on_sighup(tls, ssl_context)
    keys = load_keys(kw["api_keys_file"])
    hb = kw["heartbeat_interval"]
    cfg = CoordinatorConfig(
        redis_url=kw["redis_url"],
        keys=keys,
        defaults=SubmitDefaults(
            max_attempts=kw["max_retries"] + 1,
            default_timeout_s=kw["default_timeout"],
            cancel_grace_s=kw["cancel_grace"],
            retention=Retention(finished_s=int(kw["result_ttl"]), failed_s=int(kw["failure_ttl"])),
        ),
        heartbeat_interval=hb,
        heartbeat_timeout=kw["heartbeat_timeout"] or 3 * hb,
        scheduler_interval=max(0.5, kw["scheduler_interval"]),
        input_roots=[os.path.normpath(p) for p in kw["input_roots"]],
        output_roots=[os.path.normpath(p) for p in kw["output_roots"]],
        limits=_limits(kw),
        webhooks=_webhooks(kw),
    )
    # Handlers run their Redis work in a small thread pool (coordinator.app.Api.run), never on
    # the event loop; a stalled Redis is bounded by the socket timeout.
    conn = connect(cfg.redis_url, socket_timeout=5)
    app = build_app(cfg, conn)
    scheme = "https" if ssl_context else "http"
    if ssl_context and kw["tls_client_ca"]:
        scheme += " with client certificates"
    log.info("coordinator listening on %s:%s, %s (%d API keys)", kw["host"], kw["port"], scheme, len(keys))
    web.run_app(
        app,
        host=kw["host"],
        port=kw["port"],
        ssl_context=ssl_context,
        keepalive_timeout=max(1.0, kw["header_timeout"]),
        access_log=None,
        print=None,
        handle_signals=True,
        shutdown_timeout=5,
    )
    sys.exit(0)


def _webhooks(kw: dict[str, Any]) -> WebhookConfig:
    urls = [u for v in kw["webhook_urls"] for u in v.split()]
    for url in urls:
        try:
            parts = urlsplit(url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 1) > 0
        except ValueError:  # a port that is not a number or out of range
            ok = False
        if not ok:
            raise click.UsageError(f"--webhook-url: '{url}' is not an http(s) URL")
    if urls and not kw["webhook_secret"]:
        raise click.UsageError("--webhook-url needs --webhook-secret (deliveries are signed)")
    nets = {name: [n for v in kw[key] for n in v.split()] for name, key in _NETWORK_OPTIONS}
    for name, value in nets.items():
        try:
            parse_networks(value)
        except ValueError as exc:
            raise click.UsageError(f"{name}: {exc}") from None
    return WebhookConfig(
        kw["webhook_secret"],
        urls,
        nets["--allow-webhook-network"],
        kw["webhook_retry_base"],
        nets["--allow-callback-network"],
    )


_NETWORK_OPTIONS = (
    ("--allow-webhook-network", "webhook_networks"),
    ("--allow-callback-network", "callback_networks"),
)


if __name__ == "__main__":
    main()
