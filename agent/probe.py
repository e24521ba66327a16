"""Start-up probe: what this host can really do. An encoder is advertised only after a tiny real
test encode succeeds; FFmpeg listing an encoder proves nothing (nvenc/qsv/vaapi are listed on
hosts without the hardware)."""

from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil

from ffrtmp.presets import CPU_ENCODERS, HW_ENCODER_NAMES

CANDIDATE_ENCODERS = sorted(
    {n for names in CPU_ENCODERS.values() for n in names} | set(HW_ENCODER_NAMES.values())
)


class ProbeError(Exception):
    pass


def _run(argv: list[str], timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def tool_version(binary: str) -> str:
    path = shutil.which(binary) if "/" not in binary else binary
    if not path:
        raise ProbeError(f"{binary} not found on PATH (install it: apt-get install ffmpeg)")
    res = _run([path, "-hide_banner", "-version"])
    if res.returncode != 0:
        raise ProbeError(f"{binary} -version failed: {res.stderr.decode(errors='replace')[-300:]}")
    first = res.stdout.decode(errors="replace").splitlines()[0] if res.stdout else ""
    return first


def listed_encoders(ffmpeg: str) -> set[str]:
    res = _run([ffmpeg, "-hide_banner", "-encoders"])
    names = set()
    started = False
    for line in res.stdout.decode(errors="replace").splitlines():
        if line.strip().startswith("------"):
            started = True
            continue
        if started and line.strip():
            parts = line.split()
            if len(parts) >= 2:
                names.add(parts[1])
    return names


def render_nodes() -> list[str]:
    return sorted(glob.glob("/dev/dri/renderD*"))


def test_encode(ffmpeg: str, encoder: str, vaapi_device: str | None) -> tuple[bool, str]:
    argv = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error"]
    vf: list[str] = []
    if encoder.endswith("_vaapi"):
        if not vaapi_device:
            return False, "no /dev/dri render node"
        argv += ["-vaapi_device", vaapi_device]
        vf = ["-vf", "format=nv12,hwupload"]
    elif encoder.endswith("_qsv"):
        argv += ["-init_hw_device", "qsv=hw", "-filter_hw_device", "hw"]
        vf = ["-vf", "format=nv12,hwupload=extra_hw_frames=16"]
    argv += [
        "-f",
        "lavfi",
        "-i",
        "color=c=black:s=256x144:r=10:d=0.3",
        *vf,
        "-frames:v",
        "3",
        "-c:v",
        encoder,
        "-f",
        "null",
        "-",
    ]
    try:
        res = _run(argv, timeout=30)
    except subprocess.TimeoutExpired:
        return False, "test encode timed out"
    if res.returncode == 0:
        return True, "ok"
    err = res.stderr.decode(errors="replace").strip().splitlines()
    return False, (err[-1] if err else f"exit {res.returncode}")[:300]


def nvidia_gpus() -> list[dict[str, Any]]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        res = _run(
            [
                smi,
                "--query-gpu=index,name,memory.total,utilization.gpu,driver_version,encoder.stats.sessionCount",
                "--format=csv,noheader,nounits",
            ],
            timeout=15,
        )
    except (subprocess.TimeoutExpired, OSError):
        return []
    return parse_nvidia_smi(res.stdout.decode(errors="replace"))


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    """Rows of ``index, name, memory.total, utilization.gpu, driver_version, encoder sessions``."""

    def num(v: str) -> int | None:
        return int(v) if v.isdigit() else None

    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 6:
            gpus.append(
                {
                    "vendor": "nvidia",
                    "index": parts[0],
                    "model": parts[1],
                    "memory_mb": num(parts[2]),
                    "utilization_percent": num(parts[3]),
                    "driver": parts[4],
                    "encoder_sessions": num(parts[5]),
                }
            )
    return gpus


def probe(ffmpeg: str = "ffmpeg", ffprobe: str = "ffprobe") -> dict[str, Any]:
    ffmpeg_version = tool_version(ffmpeg)
    ffprobe_version = tool_version(ffprobe)
    listed = listed_encoders(ffmpeg)
    dri = render_nodes()
    vaapi_device = dri[0] if dri else None
    candidates = [e for e in CANDIDATE_ENCODERS if e in listed]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(
            zip(candidates, pool.map(lambda e: test_encode(ffmpeg, e, vaapi_device), candidates), strict=True)
        )
    encoders = {e: ok for e, (ok, _) in results.items()}
    failures = {e: why for e, (ok, why) in results.items() if not ok}
    families = sorted({fam for (fam, _codec), name in HW_ENCODER_NAMES.items() if encoders.get(name)})
    codecs = sorted({c for c, names in CPU_ENCODERS.items() if any(encoders.get(n) for n in names)})
    return {
        "ffmpeg_version": ffmpeg_version,
        "ffprobe_version": ffprobe_version,
        "encoders": encoders,
        "encoder_failures": failures,
        "capabilities": families,
        "cpu_codecs": codecs,
        "gpus": nvidia_gpus(),
        "dri_render_nodes": dri,
        "vaapi_device": vaapi_device,
        "cpu_threads": os.cpu_count() or 1,
        "memory_bytes": psutil.virtual_memory().total,
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
    }
