"""ffprobe checks: an output is only `completed` once ffprobe agrees it is what was asked for."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from .hls import rewrite_master, safe_relative
from .outcome import DURATION_TOLERANCE_RATIO, DURATION_TOLERANCE_S, duration_ok
from .pipeline import PROBE_CODEC_NAMES, Plan, input_guard


class VerifyError(Exception):
    reason = "output_invalid"


class IncompleteOutput(VerifyError):
    """The output is valid media but shorter (or longer) than the run should have made."""

    reason = "output_incomplete"


def ffprobe_json(
    path: str, ffprobe: str = "ffprobe", timeout: float = 60, guard: list[str] | None = None
) -> dict[str, Any]:
    argv = [ffprobe, "-v", "error", *(guard or []), "-print_format", "json", "-show_format", "-show_streams"]
    argv.append(path)
    try:
        res = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VerifyError(f"ffprobe could not run: {exc}") from None
    if res.returncode != 0:
        raise VerifyError(
            f"ffprobe rejected the output: {res.stderr.decode(errors='replace').strip()[-500:]}"
        )
    return json.loads(res.stdout or b"{}")


def media_duration(path: str, ffprobe: str = "ffprobe") -> float | None:
    """The duration of an input, probed under the same confinement FFmpeg runs it with."""
    try:
        info = ffprobe_json(path, ffprobe, timeout=30, guard=input_guard(path))
        return float(info.get("format", {}).get("duration"))
    except (VerifyError, TypeError, ValueError):
        return None


def _check_media(
    path: str, plan: Plan, ffprobe: str, want_size: tuple[int, int] | None, expected_s: float | None
) -> dict[str, Any]:
    info = ffprobe_json(path, ffprobe)
    video = [s for s in info.get("streams", []) if s.get("codec_type") == "video"]
    if not video:
        raise VerifyError(f"{os.path.basename(path)} has no video stream")
    v = video[0]
    want_codec = PROBE_CODEC_NAMES[plan.codec]
    if v.get("codec_name") != want_codec:
        raise VerifyError(f"video codec is {v.get('codec_name')}, expected {want_codec}")
    w, h = int(v.get("width", 0)), int(v.get("height", 0))
    if want_size and (w, h) != want_size:
        raise VerifyError(f"video is {w}x{h}, expected {want_size[0]}x{want_size[1]}")
    try:
        duration = float(info.get("format", {}).get("duration"))
    except (TypeError, ValueError):
        duration = None
    if duration is not None and duration <= 0:
        raise VerifyError("output has zero duration")
    if not duration_ok(duration, expected_s):
        raise IncompleteOutput(
            f"{os.path.basename(path)} lasts {duration if duration is not None else 'unknown'}s, expected "
            f"{expected_s:g}s (tolerance {DURATION_TOLERANCE_S:g}s or {DURATION_TOLERANCE_RATIO:.0%})"
        )
    return {
        "codec": v.get("codec_name"),
        "width": w,
        "height": h,
        "duration_s": duration,
        "audio": any(s.get("codec_type") == "audio" for s in info.get("streams", [])),
    }


def _variants(master_path: str) -> list[str]:
    with open(master_path) as fh:
        lines = [ln.strip() for ln in fh]
    if not lines or lines[0] != "#EXTM3U":
        raise VerifyError("master playlist does not start with #EXTM3U")
    out = []
    for i, ln in enumerate(lines):
        if (
            ln.startswith("#EXT-X-STREAM-INF")
            and i + 1 < len(lines)
            and lines[i + 1]
            and not lines[i + 1].startswith("#")
        ):
            out.append(lines[i + 1])
    if not out:
        raise VerifyError("master playlist lists no variants")
    return out


def verify_output(plan: Plan, ffprobe: str = "ffprobe", expected_s: float | None = None) -> dict[str, Any]:
    """Check the temporary output before it is renamed into place: codec, size, and a duration
    within tolerance of ``expected_s`` (the requested duration or the input's) when known."""
    assert plan.tmp_output is not None
    if plan.kind == "file":
        if not os.path.isfile(plan.tmp_output) or os.path.getsize(plan.tmp_output) == 0:
            raise VerifyError("FFmpeg exited 0 but wrote no output file")
        result = _check_media(plan.tmp_output, plan, ffprobe, (plan.width, plan.height), expected_s)
        result["size_bytes"] = os.path.getsize(plan.tmp_output)
        return result
    master = os.path.join(plan.tmp_output, "master.m3u8")
    if not os.path.isfile(master):
        raise VerifyError("no master.m3u8 was written")
    renditions = []
    for rel in _variants(master):
        if not safe_relative(rel):
            raise VerifyError(f"unexpected variant path {rel}")
        variant = os.path.join(plan.tmp_output, rel)
        if not os.path.isfile(variant):
            raise VerifyError(f"variant playlist {rel} is missing")
        renditions.append({"playlist": rel, **_check_media(variant, plan, ffprobe, None, expected_s)})
    rates = rewrite_master(master, plan.fps)  # BANDWIDTH: the peak segment rate, measured
    for r in renditions:
        if r["playlist"] in rates:
            r.update(peak_bps=rates[r["playlist"]].peak_bps, average_bps=rates[r["playlist"]].average_bps)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(plan.tmp_output) for f in files)
    return {
        "master": "master.m3u8",
        "renditions": renditions,
        "size_bytes": size,
        "codec": renditions[0]["codec"],
        "width": renditions[0]["width"],
        "height": renditions[0]["height"],
        "duration_s": renditions[0]["duration_s"],
    }
