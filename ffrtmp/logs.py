"""Structured logging: one JSON object per line on stdout and, when configured, in
``<log dir>/<component>.log`` (reopened on SIGHUP, so logrotate can move it away)."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

_STD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": self.component,
            "pid": record.process,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class ReopeningFileHandler(logging.FileHandler):
    """Appends to its file; ``reopen()`` (on SIGHUP) starts writing to a fresh file at the same
    path after logrotate has moved the old one away."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


def _fallback_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "ffrtmp" / "log"


def _open_handler(component: str, log_dir: str) -> tuple[ReopeningFileHandler | None, list[str]]:
    problems = []
    for d in (Path(log_dir), _fallback_dir()):
        try:
            d.mkdir(parents=True, exist_ok=True)
            return ReopeningFileHandler(d / f"{component}.log", encoding="utf-8"), problems
        except OSError as exc:
            problems.append(f"{d}: {exc.strerror or exc}")
    return None, problems


def setup_logging(component: str, level: str = "info", log_dir: str | None = None) -> str | None:
    """Configure the root logger; return the log file path in use, if any."""
    formatter = JsonFormatter(component)
    stdout = logging.StreamHandler(sys.stdout)
    stdout.setFormatter(formatter)
    handlers: list[logging.Handler] = [stdout]
    path = None
    problems: list[str] = []
    if log_dir:
        fh, problems = _open_handler(component, log_dir)
        if fh is not None:
            fh.setFormatter(formatter)
            handlers.append(fh)
            path = fh.baseFilename
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel("WARNING")
    if problems:
        logging.getLogger("ffrtmp.logs").warning(
            "log dir %s is not writable; %s",
            log_dir,
            f"writing to {path} instead" if path else "logging to stdout only",
            extra={"problems": problems},
        )
    return path


def reopen_logs() -> None:
    for h in logging.getLogger().handlers:
        if isinstance(h, ReopeningFileHandler):
            h.reopen()


def reopen_on_sighup() -> None:
    """For processes without an event loop (slots): reopen the log file on SIGHUP."""
    signal.signal(signal.SIGHUP, lambda _s, _f: reopen_logs())
