"""Where FFmpeg's HTTP(S) requests may go, enforced on every connection it opens, with the
address policy of ``ffrtmp.networks.allowed_addresses`` (opened with ``--allow-url-network``).

Checking the URL a job names is not enough: FFmpeg follows HTTP redirects and playlist entries
itself and resolves each name again when it connects (DNS rebinding). So an HTTP(S) input runs
through ``EgressProxy``, a forward proxy the run's supervisor starts on loopback for the run's
lifetime (it lives as long as FFmpeg does, across agent restarts). FFmpeg sends every request
there (``http_proxy``): plain HTTP in absolute form, HTTPS as a ``CONNECT`` tunnel (TLS stays
end to end, SNI included). For each request the proxy resolves the name once, checks the
addresses and connects to the address it checked, never to a name, so a redirect to an
inside address or a name that re-resolves inside is refused (403, no detail) and recorded; the
run then ends as ``destination_not_allowed``.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ffrtmp.networks import DestinationRefused, allowed_addresses, parse_networks

HEAD_LIMIT = 64 * 1024  # bytes of request head the proxy reads before giving up
CONNECT_TIMEOUT_S = 15.0
MAX_TUNNELS = 64  # connections one run may hold open through its proxy


def _split_host_port(authority: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit("//" + authority)
    if not parts.hostname:
        raise ValueError("no host")
    return parts.hostname, parts.port or default_port


def parse_request_head(head: bytes) -> tuple[str, int, bytes | None]:
    """(host, port, head to forward) of a proxy request; the head is None for CONNECT (the
    tunnel carries the client's own bytes). ValueError for anything else."""
    line, _, rest = head.partition(b"\r\n")
    method, target, version = line.decode("latin-1").split(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError("not HTTP/1.x")
    if method == "CONNECT":
        host, port = _split_host_port(target, 443)
        return host, port, None
    url = urlsplit(target)
    if url.scheme != "http" or not url.netloc:
        raise ValueError("a proxy request must name an absolute http:// URL")
    host, port = _split_host_port(url.netloc, 80)
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    return host, port, f"{method} {path} {version}\r\n".encode("latin-1") + rest


def _read_head(sock: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk or len(buf) + len(chunk) > HEAD_LIMIT:
            raise ValueError("incomplete request head")
        buf += chunk
    return buf


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


class _Handler(socketserver.BaseRequestHandler):
    server: EgressProxy

    def handle(self) -> None:
        client: socket.socket = self.request
        client.settimeout(CONNECT_TIMEOUT_S)
        try:
            head = _read_head(client)
            host, port, forward = parse_request_head(head)
        except (OSError, ValueError):
            with contextlib.suppress(OSError):
                client.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        try:
            addrs = allowed_addresses(host, port, self.server.nets)
        except DestinationRefused as exc:
            self.server.refused(host, port, exc.unresolvable)
            with contextlib.suppress(OSError):
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        upstream = self._connect(addrs)
        if upstream is None:
            with contextlib.suppress(OSError):
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        with upstream:
            if forward is None:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream.sendall(forward)
            client.settimeout(None)
            upstream.settimeout(None)
            back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
            back.start()
            _pipe(client, upstream)
            back.join()

    @staticmethod
    def _connect(addrs: list[tuple[Any, ...]]) -> socket.socket | None:
        for addr in addrs:  # the checked addresses themselves: the name is never resolved again
            family = socket.AF_INET6 if ":" in str(addr[0]) else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(CONNECT_TIMEOUT_S)
            try:
                sock.connect(addr)
                return sock
            except OSError:
                sock.close()
        return None


class EgressProxy(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """The run's forward proxy on 127.0.0.1 (an ephemeral port); ``on_refused`` hears of each
    refused destination."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, allowed: list[str], on_refused: Callable[[dict[str, Any]], None]) -> None:
        self.nets = parse_networks(allowed)
        self._on_refused = on_refused
        self._slots = threading.BoundedSemaphore(MAX_TUNNELS)
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def refused(self, host: str, port: int, unresolvable: bool) -> None:
        self._on_refused({"host": host, "port": port, "unresolvable": unresolvable, "time": time.time()})

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def start(self) -> EgressProxy:
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True).start()
        return self
