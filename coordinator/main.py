"""``ffrtmp-coordinator``: serve the API and run the recovery loop."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click
from aiohttp import web

from ffrtmp import options
from ffrtmp.auth import ApiKey, KeyFileError, KeyRing, hash_key, parse_key_file
from ffrtmp.durations import DURATION
from ffrtmp.jobs import Retention, SubmitDefaults
from ffrtmp.logs import reopen_on_sighup, setup_logging
from ffrtmp.redisconn import connect

from .app import build_app
from .config import CoordinatorConfig

log = logging.getLogger("ffrtmp.coordinator")


def load_keys(keys_file: str | None) -> KeyRing:
    keys: list[ApiKey] = []
    if keys_file:
        try:
            with open(keys_file) as fh:
                keys += parse_key_file(fh.read())
        except OSError as exc:
            raise click.UsageError(f"cannot read --api-keys-file: {exc.strerror}") from None
        except KeyFileError as exc:
            raise click.UsageError(f"--api-keys-file {keys_file}: {exc}") from None
    env_key = os.environ.get("FFRTMP_API_KEY")
    if env_key:
        keys.append(ApiKey("env-admin", "admin", hash_key(env_key)))
    if not keys:
        raise click.UsageError(
            "no API keys: set FFRTMP_API_KEY or give --api-keys-file "
            "(create one with: ffrtmp keys new NAME --role admin)"
        )
    return KeyRing(keys)


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
@options.logging("coordinator")
def main(**kw: Any) -> None:
    """Run the ffrtmp coordinator (REST API, recovery loop, metrics)."""
    setup_logging("coordinator", kw["log_level"], kw["log_dir"])
    reopen_on_sighup()
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
    )
    # Handlers run their Redis work in a small thread pool (coordinator.app.Api.run), never on
    # the event loop; a stalled Redis is bounded by the socket timeout.
    conn = connect(cfg.redis_url, socket_timeout=5)
    app = build_app(cfg, conn)
    log.info("coordinator listening on %s:%s (%d API keys)", kw["host"], kw["port"], len(keys))
    web.run_app(
        app,
        host=kw["host"],
        port=kw["port"],
        access_log=None,
        print=None,
        handle_signals=True,
        shutdown_timeout=5,
    )
    sys.exit(0)


if __name__ == "__main__":
    main()
