"""Whether a job's URL input may be opened at all, checked before anything runs: the address
policy of ``agent.egress`` applied to the URL the job names, and SRT listener mode refused (an
agent does not open ports for jobs). HTTP(S) inputs are checked again on every connection
FFmpeg makes (redirects, playlist entries, re-resolved names) by the run's egress proxy.

The refusal says "destination not allowed" and nothing else, whatever is or is not listening
there, so a job's error is never a port scan."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from ffrtmp.networks import DestinationRefused, allowed_addresses, parse_networks

from .pipeline import PlanError

DEFAULT_PORTS = {"rtmp": 1935, "rtmps": 443, "srt": 9000, "http": 80, "https": 443}


def check_url_input(url: str, allowed: list[str]) -> None:
    """Raise PlanError unless every address ``url``'s host resolves to may be reached."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "srt" and "listener" in (v.lower() for v in parse_qs(parts.query).get("mode", [])):
        raise PlanError("srt_listener_refused", "SRT listener mode is not allowed: give the caller's address")
    host = parts.hostname
    if not host:
        raise PlanError("destination_not_allowed", "destination not allowed")
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme, 0)
        allowed_addresses(host, port, parse_networks(allowed))
    except ValueError:
        raise PlanError("destination_not_allowed", "destination not allowed") from None
    except DestinationRefused as exc:
        if exc.unresolvable:
            raise PlanError("input_unresolvable", "the input's host name does not resolve") from None
        raise PlanError("destination_not_allowed", "destination not allowed") from None
