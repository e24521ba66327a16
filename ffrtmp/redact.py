"""Secrets in what a job shows: the password of a URL's user info, an RTMP stream key (the last
path segment of an rtmp(s) URL), and query parameters that carry credentials (SRT passphrase,
signed-URL tokens). Non-admin keys see every URL in a job's view, history, error and FFmpeg logs
with those replaced by ``***``; the agent and admins see the real ones."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
SECRET_PARAMS = re.compile(
    r"(pass(word|phrase)?|secret|token|key|auth|sig(nature)?|credential|streamid|x-amz-[a-z-]+)",
    re.IGNORECASE,
)
# a URL inside free text: scheme://, then anything up to whitespace or a quote
URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,15}://[^\s'\"<>]+")
STREAM_KEY_SCHEMES = {"rtmp", "rtmps", "rtmpt", "rtmpe", "rtmpte", "rtmpts"}


def _netloc(parts: Any) -> str:
    host = parts.netloc.rpartition("@")[2]
    if "@" not in parts.netloc:
        return host
    user, sep, _ = parts.netloc.rpartition("@")[0].partition(":")
    return f"{user}:{MASK}@{host}" if sep else f"{MASK}@{host}"


def _path(scheme: str, path: str) -> str:
    if scheme not in STREAM_KEY_SCHEMES:
        return path
    app, sep, key = path.rstrip("/").rpartition("/")
    return f"{app}/{MASK}" if sep and app and key else path  # rtmp://host/app/<stream key>


def redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK  # a URL too broken to parse may hide anything
    if not parts.scheme or not parts.netloc:
        return url
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if SECRET_PARAMS.search(k) else v) for k, v in pairs], safe="*")
    scheme = parts.scheme.lower()
    fragment = MASK if parts.fragment else ""  # an SRT streamid "#!::r=…,u=…" lands here
    return urlunsplit((parts.scheme, _netloc(parts), _path(scheme, parts.path), query, fragment))


def redact_text(text: str) -> str:
    """Every URL in ``text`` redacted; the rest untouched."""
    if "://" not in text:
        return text
    return URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with every string redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value
