"""A small HTTP client for the coordinator API, with transport retries."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from tenacity import RetryError

from ..retrying import transport_retry

RETRYABLE_STATUS = {429, 502, 503, 504}
MAX_RETRY_AFTER_S = 30.0  # a longer Retry-After is an error to report, not a wait


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
    def __init__(self, cause: str, wait: float = 0.0) -> None:
        super().__init__(cause)
        self.cause = cause
        self.wait = wait  # what the server asked for (Retry-After)


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, _Transient)


def _server_wait(exc: BaseException | None) -> float:
    return exc.wait if isinstance(exc, _Transient) else 0.0


def _ssl_reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc).replace("_", " ").lower()


@dataclass
class Client:
    url: str
    api_key: str | None
    timeout: float = 30.0
    retry_initial: float = 1.0
    retries: int = 3
    tls: ssl.SSLContext | None = None  # for https:// with a private CA or a client certificate

    def _once(
        self, method: str, path: str, body: Any | None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.tls) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            wait = _retry_after(exc.headers.get("Retry-After"))
            if exc.code in RETRYABLE_STATUS and wait <= MAX_RETRY_AFTER_S:
                raise _Transient(f"HTTP {exc.code} from the coordinator", wait) from None
            try:
                err = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                err = {"code": "http_error", "message": raw.decode(errors="replace")[:300] or exc.reason}
            raise ApiError(
                exc.code, err.get("code", "http_error"), err.get("message", ""), err.get("field")
            ) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLError):  # a wrong CA, a refused client certificate
                raise TransportError(f"TLS with {self.url} failed: {_ssl_reason(reason)}") from None
            if isinstance(
                reason, ConnectionRefusedError | ConnectionResetError | TimeoutError | socket.timeout
            ):
                raise _Transient(f"{self.url}: {reason.strerror or reason}") from None
            if isinstance(reason, OSError) and not isinstance(reason, socket.gaierror):
                raise _Transient(f"{self.url}: {reason}") from None
            raise TransportError(f"cannot reach the coordinator at {self.url}: {reason}") from None
        except ssl.SSLError as exc:
            raise TransportError(f"TLS with {self.url} failed: {_ssl_reason(exc)}") from None
        except (ConnectionResetError, TimeoutError, EOFError) as exc:
            raise _Transient(f"{self.url}: {exc}") from None
        except (ValueError, http.client.InvalidURL) as exc:  # a URL or an id that cannot be sent
            raise TransportError(f"cannot send this request: {exc}") from None

    def request(
        self, method: str, path: str, body: Any | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        """One API call, retried on transport errors and 502/503/504. A retried POST must carry
        an Idempotency-Key (the CLI's job submission does) or it may act twice."""
        call = transport_retry(
            _is_transient, initial=self.retry_initial, retries=self.retries, server_wait=_server_wait
        )(self._once)
        try:
            return call(method, path, body, headers)[1]
        except _Transient as exc:
            hint = "is the coordinator running?"
            if self.url.startswith("https:") and "closed" in exc.cause:
                hint += " Does it require a client certificate (--client-cert)?"
            raise TransportError(f"gave up after {self.retries} retries: {exc.cause} ({hint})") from None
        except RetryError as exc:  # pragma: no cover - reraise=True makes this unreachable
            raise TransportError(str(exc)) from None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any | None = None) -> Any:
        return self.request("POST", path, body if body is not None else {})
