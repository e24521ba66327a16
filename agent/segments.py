"""Segmented encoding's pieces that are not the lifecycle: where segments live on the output
root, where the input is cut, the concat list the join reads, and the sweep that removes what a
finished segmented job left behind.

Layout (the output root must be the same shared storage on every agent):
``<output root>/.ffrtmp-segments/<parent id>/r<run>/s<index>.mp4`` for the encoded segments
(MP4: other intermediates shift timestamps at the joins), ``list.txt`` beside them for the
join. Each run of a job (a manual retry starts one) has its own directory, so a late segment of
an earlier run can never be joined into a later one. User outputs may not name that directory
(``ffrtmp.model``).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import re
import subprocess
import time

import redis

from ffrtmp import keys, lifecycle
from ffrtmp.model import RESERVED_OUTPUT_DIR
from ffrtmp.rqjob import fetch_job
from ffrtmp.rundir import remove_path

from .pipeline import Segment, input_guard

log = logging.getLogger("ffrtmp.agent.segments")

SEGMENTS_DIR = RESERVED_OUTPUT_DIR
MIN_AUTO_S, MAX_AUTO_S = 30.0, 120.0
MAX_SEGMENTS = 1000  # a longer input gets longer segments
ORPHAN_AGE_S = 3600.0  # a segment directory whose job is gone is removed once this old
RUN_NAME = re.compile(r"r(\d{1,9})")
EVERY_RUN = 1 << 40  # the job is gone: every run's segments may go


class CutError(Exception):
    """The input cannot be planned (ffprobe could not read it)."""


def parse_place(job_id: str, raw: object) -> Segment | None:
    """A segment job's place (its job function's second argument, untrusted): None unless it
    is well formed and names this very job (a job cannot write another job's segment)."""
    if not isinstance(raw, dict):
        return None
    parent, i, s, e = raw.get("parent"), raw.get("index"), raw.get("start"), raw.get("end")
    run = raw.get("run", 0)
    if not (isinstance(run, int) and not isinstance(run, bool) and 0 <= run < 1_000_000):
        return None
    nums = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (s, e))
    if not (isinstance(parent, str) and keys.JOB_ID.fullmatch(parent) and not keys.is_child_id(parent)):
        return None
    if not (isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 100_000 and nums):
        return None
    start, end = float(s), float(e)  # type: ignore[arg-type]
    if not 0 <= start < end < 1e7 or job_id != keys.child_id(parent, i, run):
        return None
    return Segment(parent, i, start, end, relative_path(parent, i, run))


def segment_dir(output_root: str, parent_id: str) -> str:
    """A job's segments, all its runs (what the sweep removes)."""
    return os.path.join(output_root, SEGMENTS_DIR, parent_id)


def run_dir(output_root: str, parent_id: str, run: int) -> str:
    """The segments of one run of a job (what its join reads)."""
    return os.path.join(segment_dir(output_root, parent_id), f"r{run}")


def segment_name(index: int) -> str:
    return f"s{index:05d}.mp4"


def relative_path(parent_id: str, index: int, run: int = 0) -> str:
    """A segment's file, relative to the output root."""
    return os.path.join(SEGMENTS_DIR, parent_id, f"r{run}", segment_name(index))


def default_seconds(duration: float) -> float:
    """About 16 segments, each 30-120 s: enough to spread, few enough to join cheaply."""
    return max(MIN_AUTO_S, min(MAX_AUTO_S, duration / 16))


def video_times(path: str, ffprobe: str = "ffprobe", timeout: float = 600) -> tuple[list[float], list[float]]:
    """(every video packet's time, the keyframes' times) of the input, sorted; read by ffprobe
    demuxing only (no decode), under the same confinement FFmpeg reads the input with."""
    argv = [ffprobe, "-v", "error", *input_guard(path), "-select_streams", "v:0"]
    argv += ["-show_entries", "packet=pts_time,flags", "-of", "csv=p=0", "file:" + path]
    try:
        res = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CutError(f"ffprobe could not read the input's packets: {exc}") from None
    if res.returncode != 0:
        raise CutError(f"ffprobe could not read the input: {res.stderr.decode(errors='replace')[-300:]}")
    times, keyframes = [], []
    for line in res.stdout.decode(errors="replace").splitlines():
        pts, _, flags = line.partition(",")
        try:
            t = float(pts)
        except ValueError:
            continue  # a packet without a timestamp
        times.append(t)
        if flags.startswith("K"):
            keyframes.append(t)
    return sorted(times), sorted(keyframes)


def plan_cuts(times: list[float], keyframes: list[float], end: float, target: float) -> list[float]:
    """Cut points ``0 = c0 < c1 < ... < cn = end``: at the first source keyframe at least
    ``target`` after the last cut when one comes within half a target more; otherwise (a GOP
    too long to use) at the source frame nearest the target, which the encode turns into a
    keyframe anyway (each segment starts its own encoder). A last piece shorter than a quarter
    target joins the one before it."""
    target = max(target, end / MAX_SEGMENTS)
    first = min(times) if times else 0.0
    keys_ = sorted(k - first for k in keyframes)
    frames = sorted(t - first for t in times)
    cuts = [0.0]
    while end - cuts[-1] > target * 1.25:
        want = cuts[-1] + target
        k = bisect.bisect_left(keys_, want)
        if k < len(keys_) and keys_[k] <= want + target / 2 and keys_[k] < end:
            cut = keys_[k]
        else:  # the source frame nearest the target
            f = bisect.bisect_left(frames, want)
            near = [t for t in frames[max(0, f - 1) : f + 1] if cuts[-1] < t < end]
            cut = min(near, key=lambda t: abs(t - want)) if near else want
        if cut <= cuts[-1] or end - cut < target / 4:
            break
        cuts.append(round(cut, 6))
    cuts.append(round(end, 6))
    return cuts


def places(cuts: list[float], run: int = 0) -> list[dict[str, float | int]]:
    """The child jobs' places (``{"index", "start", "end", "run"}``) between consecutive cuts."""
    return [{"index": i, "start": cuts[i], "end": cuts[i + 1], "run": run} for i in range(len(cuts) - 1)]


def write_list(directory: str, count: int) -> str:
    """The concat demuxer's list of the segments, by relative name (nothing outside the
    directory can be named), written atomically; returns its path."""
    path = os.path.join(directory, "list.txt")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write("ffconcat version 1.0\n")
        fh.writelines(f"file '{segment_name(i)}'\n" for i in range(count))
    os.replace(tmp, path)
    return path


def missing_segments(directory: str, count: int) -> list[int]:
    return [i for i in range(count) if not os.path.isfile(os.path.join(directory, segment_name(i)))]


def _removable(conn: redis.Redis, parent_id: str, age_s: float) -> int | None:
    """Up to which run may this job's segments go? None while the job or a segment of its
    last run is open (a segment still running is canceled first, and its files go on a later
    sweep); the run the ended job was in, read with its state, so that a manual retry between
    this read and the removal keeps its own, later run's files."""
    job = fetch_job(conn, parent_id)
    if job is None:
        return EVERY_RUN if age_s > ORPHAN_AGE_S else None
    meta = job.meta if isinstance(job.meta, dict) else {}
    if lifecycle.state_of(job, meta) not in lifecycle.TERMINAL:
        return None
    children = lifecycle.segment_children(meta)
    states = lifecycle.states_of(conn, children)
    open_ = [c for c, st in zip(children, states, strict=True) if st not in lifecycle.TERMINAL]
    for child in open_:
        with contextlib.suppress(redis.RedisError):
            lifecycle.cancel(conn, child, f"sweep (parent {parent_id} ended)")
    return None if open_ else lifecycle.segment_run(meta)


def remove_runs(path: str, upto: int) -> bool:
    """Remove a job's segment directories of runs up to ``upto`` (everything when the job is
    gone), then the job's directory once nothing else is in it. True if anything went."""
    if upto >= EVERY_RUN:
        remove_path(path)
        return True
    gone = False
    for name in os.listdir(path):
        m = RUN_NAME.fullmatch(name)
        if m and int(m.group(1)) <= upto:
            remove_path(os.path.join(path, name))
            gone = True
    with contextlib.suppress(OSError):
        os.rmdir(path)  # fails while a later run (or anything else) is in it
    return gone


def sweep(conn: redis.Redis, output_root: str) -> int:
    """Remove the segment directories of segmented jobs that ended (whatever ended them: a
    parent canceled while waiting, one out of attempts). Returns how many were removed."""
    base = os.path.join(output_root, SEGMENTS_DIR)
    try:
        names = os.listdir(base)
    except OSError:
        return 0
    removed = 0
    for name in names:
        path = os.path.join(base, name)
        if not keys.JOB_ID.fullmatch(name) or keys.is_child_id(name) or os.path.islink(path):
            continue
        try:
            upto = _removable(conn, name, time.time() - os.stat(path).st_mtime)
            if upto is not None and remove_runs(path, upto):
                log.info("removed the segments of ended job %s", name)
                removed += 1
        except (OSError, redis.RedisError) as exc:
            log.warning("segment directory %s not swept: %s", path, exc)
    return removed
