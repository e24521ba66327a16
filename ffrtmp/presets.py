"""Named scenarios: the typed defaults each preset expands from.

A preset only fills in what the submitter left out; the FFmpeg pipeline itself is built by
``agent.pipeline`` from the merged, validated parameters.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    kind: str  # "file" (one output file or RTMP push), "hls" (a directory), "restream" (RTMP push)
    width: int
    height: int
    fps: float
    codec: str
    bitrate_kbps: int
    preset: str
    realtime: bool = False  # read the input at its native rate (-re): live work
    default_duration: float = 10.0  # seconds of test pattern when no input is given
    ladder: tuple[tuple[int, int, int], ...] = ()  # (width, height, kbps) renditions for HLS


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("1080p-h264", "1920x1080 H.264 file", "file", 1920, 1080, 30, "h264", 5000, "veryfast"),
        Preset("720p-h264", "1280x720 H.264 file", "file", 1280, 720, 30, "h264", 2800, "veryfast"),
        Preset("480p-h264", "854x480 H.264 file", "file", 854, 480, 30, "h264", 1400, "veryfast"),
        Preset("4k-h265", "3840x2160 H.265 file", "file", 3840, 2160, 30, "h265", 12000, "ultrafast"),
        Preset(
            "live-4k",
            "3840x2160 H.264 live encode at the input's native rate (file or RTMP push)",
            "file",
            3840,
            2160,
            30,
            "h264",
            10000,
            "ultrafast",
            realtime=True,
        ),
        Preset(
            "hls-ladder",
            "HLS VOD ladder: 1080p/720p/480p H.264 renditions with a master playlist",
            "hls",
            1920,
            1080,
            30,
            "h264",
            5000,
            "veryfast",
            ladder=((1920, 1080, 5000), (1280, 720, 2800), (854, 480, 1400)),
        ),
        Preset(
            "rtmp-restream",
            "pull an input (or a test pattern) and push it to an RTMP URL as H.264/AAC",
            "restream",
            1280,
            720,
            30,
            "h264",
            2500,
            "veryfast",
            realtime=True,
        ),
    )
}

# Encoder families a job may ask for, and the codecs each family has an FFmpeg encoder for.
HW_FAMILIES: dict[str, tuple[str, ...]] = {
    "nvenc": ("h264", "h265", "av1"),
    "qsv": ("h264", "h265", "vp9", "av1"),
    "vaapi": ("h264", "h265", "vp9", "av1"),
}

CPU_ENCODERS: dict[str, tuple[str, ...]] = {
    # codec -> FFmpeg encoders that can serve it on a CPU, best first
    "h264": ("libx264",),
    "h265": ("libx265",),
    "vp9": ("libvpx-vp9",),
    "av1": ("libsvtav1", "libaom-av1"),
}

HW_ENCODER_NAMES: dict[tuple[str, str], str] = {
    ("nvenc", "h264"): "h264_nvenc",
    ("nvenc", "h265"): "hevc_nvenc",
    ("nvenc", "av1"): "av1_nvenc",
    ("qsv", "h264"): "h264_qsv",
    ("qsv", "h265"): "hevc_qsv",
    ("qsv", "vp9"): "vp9_qsv",
    ("qsv", "av1"): "av1_qsv",
    ("vaapi", "h264"): "h264_vaapi",
    ("vaapi", "h265"): "hevc_vaapi",
    ("vaapi", "vp9"): "vp9_vaapi",
    ("vaapi", "av1"): "av1_vaapi",
}

X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)

# Container extensions allowed for file outputs, and the codecs each can carry.
FILE_CONTAINERS: dict[str, tuple[str, ...]] = {
    ".mp4": ("h264", "h265", "av1", "vp9"),
    ".mkv": ("h264", "h265", "av1", "vp9"),
    ".mov": ("h264", "h265"),
    ".ts": ("h264", "h265"),
    ".flv": ("h264",),
    ".webm": ("vp9", "av1"),
}

DEFAULT_EXT = {"h264": ".mp4", "h265": ".mp4", "vp9": ".webm", "av1": ".mkv"}
