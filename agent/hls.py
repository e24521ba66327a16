"""The HLS master playlist told the truth (RFC 8216, 4.3.4.2): FFmpeg writes each variant's
``BANDWIDTH`` as its nominal bit rate, which the first segments of a constrained encode exceed;
after the encode each variant's segments are measured and its ``BANDWIDTH`` becomes the peak
segment bit rate, with ``AVERAGE-BANDWIDTH`` and ``FRAME-RATE`` added."""

from __future__ import annotations

import contextlib
import math
import os
import re
from dataclasses import dataclass

_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')
MIN_SEGMENT_S = 0.001  # a shorter EXTINF is not a duration to divide by


@dataclass(frozen=True)
class Rates:
    peak_bps: int
    average_bps: int


def safe_relative(uri: str) -> bool:
    """A playlist entry that stays inside the playlist's directory (no absolute path, no
    parent, no URL)."""
    return not (uri.startswith("/") or ".." in uri.split("/") or "://" in uri)


def _segments(playlist: str) -> tuple[list[tuple[float, float]], float]:
    """(bits, seconds) of each measurable segment of a media playlist, and its target duration."""
    base = os.path.dirname(playlist)
    with open(playlist) as fh:
        lines = [ln.strip() for ln in fh]
    out: list[tuple[float, float]] = []
    target, duration = 0.0, None
    for ln in lines:
        if ln.startswith("#EXT-X-TARGETDURATION:"):
            with contextlib.suppress(ValueError):
                target = float(ln.split(":", 1)[1])
        elif ln.startswith("#EXTINF:"):
            try:
                duration = float(ln[8:].split(",", 1)[0])
            except ValueError:
                duration = None
        elif ln and not ln.startswith("#"):
            ok = duration is not None and MIN_SEGMENT_S <= duration < 1e6 and safe_relative(ln)
            if ok:
                with contextlib.suppress(OSError):  # not there: not measured (verify checks it)
                    out.append((os.path.getsize(os.path.join(base, ln)) * 8.0, duration))  # type: ignore[arg-type]
            duration = None
    return out, target


def segment_rates(playlist: str) -> Rates | None:
    """Peak and average bit rate of a media playlist's segments, or None when it names none
    that can be measured. The peak is RFC 8216's peak segment bit rate: the highest rate of
    any run of consecutive segments lasting 0.5 to 1.5 target durations (so a one-frame tail
    segment does not count alone); without such a run, the highest single segment's."""
    segs, target = _segments(playlist)
    if not segs:
        return None
    peak = 0.0
    for i in range(len(segs)):
        bits = seconds = 0.0
        for b, d in segs[i:]:
            bits, seconds = bits + b, seconds + d
            if target and seconds > 1.5 * target:
                break
            if not target or seconds >= 0.5 * target:
                peak = max(peak, bits / seconds)
                if not target:
                    break
    if peak == 0.0:
        peak = max(b / d for b, d in segs)
    total_bits, total_s = sum(b for b, _ in segs), sum(d for _, d in segs)
    return Rates(math.ceil(peak), math.ceil(total_bits / total_s))


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
