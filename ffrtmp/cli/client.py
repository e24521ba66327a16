"""A small HTTP client for the coordinator API, with transport retries."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from tenacity import RetryError

from ..redisconn import transport_retry

RETRYABLE_STATUS = {502, 503, 504}


class ApiError(Exception):
    """The coordinator answered with an error (4xx/5xx)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class TransportError(Exception):
    """The coordinator could not be reached, after retries."""


class _Transient(Exception):
    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, _Transient)


@dataclass
class Client:
    url: str
    api_key: str | None
    timeout: float = 30.0
    retry_initial: float = 1.0
    retries: int = 3

    def _once(self, method: str, path: str, body: Any | None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            if exc.code in RETRYABLE_STATUS:
                raise _Transient(f"HTTP {exc.code} from the coordinator") from None
            try:
                err = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                err = {"code": "http_error", "message": raw.decode(errors="replace")[:300] or exc.reason}
            raise ApiError(
                exc.code, err.get("code", "http_error"), err.get("message", ""), err.get("field")
            ) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(
                reason, ConnectionRefusedError | ConnectionResetError | TimeoutError | socket.timeout
            ):
                raise _Transient(f"{self.url}: {reason.strerror or reason}") from None
            if isinstance(reason, OSError) and not isinstance(reason, socket.gaierror):
                raise _Transient(f"{self.url}: {reason}") from None
            raise TransportError(f"cannot reach the coordinator at {self.url}: {reason}") from None
        except (ConnectionResetError, TimeoutError, EOFError) as exc:
            raise _Transient(f"{self.url}: {exc}") from None

    def request(self, method: str, path: str, body: Any | None = None) -> Any:
        call = transport_retry(_is_transient, initial=self.retry_initial, retries=self.retries)(self._once)
        try:
            return call(method, path, body)[1]
        except _Transient as exc:
            raise TransportError(
                f"gave up after {self.retries} retries: {exc.cause} (is the coordinator running?)"
            ) from None
        except RetryError as exc:  # pragma: no cover - reraise=True makes this unreachable
            raise TransportError(str(exc)) from None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any | None = None) -> Any:
        return self.request("POST", path, body if body is not None else {})
