"""Generated media: the test clips `ffrtmp demo` transcodes and the tests feed to the fleet."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_clip(
    path: Path, seconds: float = 2, size: str = "640x360", fps: int = 25, ffmpeg: str = "ffmpeg"
) -> Path:
    """Write a real H.264/AAC MP4 (a moving test pattern and a tone) with FFmpeg; the index is
    at the front (faststart), so it also streams over plain HTTP. Raises CalledProcessError
    with FFmpeg's stderr when FFmpeg fails."""
    subprocess.run(
        [
            ffmpeg,
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={size}:rate={fps}:duration={seconds:g}",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:duration={seconds:g}",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
            "-movflags",
            "+faststart",
            str(path),
        ],
        check=True,
        capture_output=True,
    )
    return path
