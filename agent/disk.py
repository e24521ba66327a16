"""Free space on the places a node writes to: its work dir and every output root. A node whose
output disk is full must stop taking jobs (each would fail) and say so, until space is back.

An attempt that hit ENOSPC leaves a marker naming the directory and how much its partial output
had taken when the disk filled up: the directory counts as full until it has that much free
again (plus the configured minimum), or for ``MARKER_MAX_AGE_S`` at most; and any place below
the configured minimum counts as full."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass

from .pipeline import under_root

MARKERS = "disk-full"
MARKER_MAX_AGE_S = 30 * 60


@dataclass(frozen=True)
class RootSpace:
    path: str
    free_bytes: int
    total_bytes: int
    full: bool
    why: str = ""


def _marker_path(work_dir: str, root: str) -> str:
    return os.path.join(work_dir, MARKERS, hashlib.sha1(root.encode()).hexdigest()[:16] + ".json")


def _free(path: str) -> tuple[int, int]:
    try:
        u = shutil.disk_usage(path)
        return int(u.free), int(u.total)
    except OSError:
        return 0, 0


def mark_full(work_dir: str, output_path: str, needed_bytes: int) -> None:
    """Called by an attempt that failed with ENOSPC writing ``output_path`` after it had
    written ``needed_bytes`` (and needed more)."""
    if "://" in output_path:
        return
    d = os.path.dirname(os.path.realpath(output_path))
    os.makedirs(os.path.join(work_dir, MARKERS), exist_ok=True)
    with contextlib.suppress(OSError), open(_marker_path(work_dir, d), "w") as fh:
        json.dump({"path": d, "needed_bytes": needed_bytes, "time": time.time()}, fh)


def _markers(work_dir: str) -> list[dict]:
    out = []
    with contextlib.suppress(OSError):
        for name in os.listdir(os.path.join(work_dir, MARKERS)):
            with contextlib.suppress(OSError, ValueError), open(os.path.join(work_dir, MARKERS, name)) as fh:
                data = json.load(fh)
                if isinstance(data, dict) and isinstance(data.get("path"), str):
                    data["_file"] = os.path.join(work_dir, MARKERS, name)
                    out.append(data)
    return out


def check(work_dir: str, output_roots: list[str], min_free_bytes: int) -> list[RootSpace]:
    """The space of the work dir and of every output root; clears markers whose root has room
    again."""
    markers = _markers(work_dir)
    out = []
    for path in [work_dir, *output_roots]:
        free, total = _free(path)
        why = ""
        if total == 0:
            why = "not reachable"
        elif free < min_free_bytes:
            why = f"only {free // (1024 * 1024)} MiB free (< {min_free_bytes // (1024 * 1024)} MiB)"
        for m in markers:
            if under_root(m["path"], [path]) is None:
                continue
            needed = m.get("needed_bytes") if isinstance(m.get("needed_bytes"), int) else 0
            fresh = time.time() - float(m.get("time") or 0) < MARKER_MAX_AGE_S
            if fresh and free < needed + min_free_bytes:
                why = why or (
                    f"a job ran out of space here; {free // (1024 * 1024)} MiB free, "
                    f"needs {(needed + min_free_bytes) // (1024 * 1024)} MiB"
                )
            else:
                with contextlib.suppress(OSError):
                    os.unlink(m["_file"])
        out.append(RootSpace(path, free, total, bool(why), why))
    return out
