"""The HLS master playlist told the truth (RFC 8216, 4.3.4.2): FFmpeg writes each variant's
``BANDWIDTH`` as its nominal bit rate, which the first segments of a constrained encode exceed;
after the encode each variant's segments are measured and its ``BANDWIDTH`` becomes the peak
segment bit rate, with ``AVERAGE-BANDWIDTH`` and ``FRAME-RATE`` added."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


@dataclass(frozen=True)
class Rates:
    peak_bps: int
    average_bps: int


def segment_rates(playlist: str) -> Rates | None:
    """Peak and average bit rate of a media playlist's segments (size over EXTINF), or None
    when it names none that can be measured."""
    base = os.path.dirname(playlist)
    with open(playlist) as fh:
        lines = [ln.strip() for ln in fh]
    peak, bits, seconds = 0.0, 0.0, 0.0
    duration: float | None = None
    for ln in lines:
        if ln.startswith("#EXTINF:"):
            try:
                duration = float(ln[8:].split(",", 1)[0])
            except ValueError:
                duration = None
        elif ln and not ln.startswith("#") and duration and duration > 0:
            if ln.startswith("/") or ".." in ln.split("/") or "://" in ln:
                duration = None
                continue
            try:
                size = os.path.getsize(os.path.join(base, ln)) * 8.0
            except OSError:  # not there: not measured (the playlist check is verify's)
                duration = None
                continue
            peak, bits, seconds = max(peak, size / duration), bits + size, seconds + duration
            duration = None
    if seconds <= 0:
        return None
    return Rates(math.ceil(peak), math.ceil(bits / seconds))


def _attributes(line: str) -> dict[str, str]:
    return dict(_ATTR.findall(line.split(":", 1)[1])) if ":" in line else {}


def rewrite_master(master: str, fps: float) -> dict[str, Rates]:
    """Measure every variant of ``master`` and write its true rates into it (atomically).
    Returns the rates by variant playlist."""
    with open(master) as fh:
        lines = fh.read().splitlines()
    measured: dict[str, Rates] = {}
    for i, ln in enumerate(lines[:-1]):
        uri = lines[i + 1].strip()
        if not ln.startswith("#EXT-X-STREAM-INF:") or not uri or uri.startswith("#"):
            continue
        rates = segment_rates(os.path.join(os.path.dirname(master), uri))
        if rates is None:
            continue
        attrs = _attributes(ln)
        attrs["BANDWIDTH"] = str(rates.peak_bps)
        attrs["AVERAGE-BANDWIDTH"] = str(rates.average_bps)
        attrs["FRAME-RATE"] = f"{fps:.3f}"
        lines[i] = "#EXT-X-STREAM-INF:" + ",".join(f"{k}={v}" for k, v in attrs.items())
        measured[uri] = rates
    tmp = master + ".tmp"
    with open(tmp, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, master)
    return measured
