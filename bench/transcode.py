"""A full transcode through the fleet against the same FFmpeg argv run bare, in interleaved
pairs (fleet, bare, fleet, bare, ...) so that noise hits both alike.

    .venv/bin/python bench/transcode.py [--pairs 5] [--seconds 20] [--size 1280x720]

One clip (``ffrtmp.media.make_clip``: H.264/AAC) is transcoded with the ``720p-h264`` scenario by
a one-slot agent: wall time from ``POST /jobs`` to the job's ``ended_at`` (claim, plan,
supervisor, FFmpeg, ffprobe verification, publish). Bare: ffrtmp's own argv for that job (read from its
``cmd.json``), writing to a scratch file, run by ``subprocess.run`` from this process (its CPU,
user + system, is printed beside it). Prints each pair and the median ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dispatch import Stack, iso, run_dirs

from ffrtmp import media


async def fleet_run(base: str, key: str, clip: Path, out: str) -> tuple[float, str]:
    """Submit -> completed (the job record's own ``ended_at``), in seconds, and the job's id.
    Polled five times a second: a tight poll loop would load the coordinator, and so the
    CPU FFmpeg runs on, far more than any real client does."""
    spec = {"scenario": "720p-h264", "input": str(clip), "output": out, "overwrite": True}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
        t0 = time.time()
        async with s.post(base + "/jobs", json=spec) as r:
            job = await r.json()
            assert r.status == 201, job
        while True:
            await asyncio.sleep(0.2)
            async with s.get(f"{base}/jobs/{job['id']}") as r:
                view = await r.json()
            if view["state"] in ("completed", "failed", "rejected"):
                break
    assert view["state"] == "completed", view
    return iso(view["ended_at"]) - t0, job["id"]


def ffmpeg_span(run: Path) -> float:
    """The fleet's FFmpeg start -> exit, from its supervisor's own records."""
    started, ended = (json.loads((run / f).read_text())["time"] for f in ("started.json", "exit.json"))
    return float(ended) - float(started)


def bare_run(argv: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def bare_argv(work: Path, job_id: str, scratch: Path) -> list[str]:
    argv = json.loads((run_dirs(work, job_id)[0] / "cmd.json").read_text())["argv"]
    return [*argv[:-1], f"file:{scratch}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--size", default="1280x720")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ffr-bench-tc-"))
    st = Stack(tmp)
    inputs, outputs = tmp / "in", tmp / "out"
    inputs.mkdir()
    outputs.mkdir()
    clip = media.make_clip(inputs / "clip.mp4", args.seconds, args.size, 25)
    pairs: list[tuple[float, float, float]] = []
    try:
        st.redis()
        base = st.coordinator_unlimited()
        st.agent("--input-root", str(inputs), "--output-root", str(outputs))
        _, first = asyncio.run(fleet_run(base, st.key, clip, "warm.mp4"))
        argv = bare_argv(tmp / "agent", first, tmp / "bare.mp4")
        for i in range(args.pairs):
            fleet, job_id = asyncio.run(fleet_run(base, st.key, clip, f"out{i}.mp4"))
            bare, cpu = bare_run(argv)
            pairs.append((fleet, bare, cpu))
            ff = ffmpeg_span(run_dirs(tmp / "agent", job_id)[0])
            print(
                f"pair {i + 1}: fleet {fleet:.3f} s (its FFmpeg {ff:.3f} s), bare {bare:.3f} s "
                f"(CPU {cpu:.2f} s), x{fleet / bare:.3f}"
            )
    finally:
        st.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = [f / b for f, b, _ in pairs]
    print(f"{args.seconds:g} s of {args.size} H.264/AAC -> 720p-h264, {args.pairs} interleaved pairs")
    print(f"  fleet median {statistics.median(f for f, _, _ in pairs):.3f} s (submit -> completed)")
    print(f"  bare  median {statistics.median(b for _, b, _ in pairs):.3f} s (the same argv)")
    print(f"  ratio median x{statistics.median(ratios):.3f} (min x{min(ratios):.3f}, max x{max(ratios):.3f})")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
