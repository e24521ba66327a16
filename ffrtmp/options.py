"""Command-line options the agent and the coordinator share: one spelling, one environment
variable and one default for each, so the systemd env files the roles write mean the same to both."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from .durations import DURATION

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _apply(f: F, *decorators: Callable[[F], F]) -> F:
    for d in reversed(decorators):  # the first listed comes first in --help
        f = d(f)
    return f


def redis_url(f: F) -> F:
    return click.option(
        "--redis-url", envvar="FFRTMP_REDIS_URL", default=DEFAULT_REDIS_URL, show_default=True
    )(f)


def heartbeat_interval(help: str | None = None) -> Callable[[F], F]:
    return click.option(
        "--heartbeat-interval",
        envvar="FFRTMP_HEARTBEAT_INTERVAL",
        type=DURATION,
        default="30s",
        show_default=True,
        help=help,
    )


def roots(input_help: str, output_help: str, path_type: click.ParamType | None = None) -> Callable[[F], F]:
    """--input-root / --output-root (repeatable; FFRTMP_INPUT_ROOTS / FFRTMP_OUTPUT_ROOTS)."""

    def decorate(f: F) -> F:
        return _apply(
            f,
            click.option(
                "--input-root",
                "input_roots",
                envvar="FFRTMP_INPUT_ROOTS",
                multiple=True,
                type=path_type,
                help=input_help,
            ),
            click.option(
                "--output-root",
                "output_roots",
                envvar="FFRTMP_OUTPUT_ROOTS",
                multiple=True,
                type=path_type,
                help=output_help,
            ),
        )

    return decorate


def logging(component: str) -> Callable[[F], F]:
    """--log-dir (JSON log file <dir>/<component>.log, reopened on SIGHUP) and --log-level."""

    def decorate(f: F) -> F:
        return _apply(
            f,
            click.option(
                "--log-dir",
                envvar="FFRTMP_LOG_DIR",
                default=None,
                type=click.Path(file_okay=False),
                help=f"Also write JSON logs to <dir>/{component}.log (reopened on SIGHUP).",
            ),
            click.option(
                "--log-level",
                envvar="FFRTMP_LOG_LEVEL",
                default="info",
                show_default=True,
                type=click.Choice(["debug", "info", "warning", "error"]),
            ),
        )

    return decorate
