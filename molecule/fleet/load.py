"""API load through HAProxy for the whole upgrade scenario: reads and small submissions in a
loop, each request counted against the phase named in PHASE_FILE, until STOP_FILE exists.
Writes a JSON summary: requests and failures per phase, the failures themselves, and the ids
of the jobs it submitted (the scenario then checks that every one completed).

  python3 load.py URL KEY WORKDIR [CA_FILE]
"""

import http.client
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

url, key, work = sys.argv[1], sys.argv[2], sys.argv[3]
tls = ssl.create_default_context(cafile=sys.argv[4]) if len(sys.argv) > 4 else None
phase_file, stop_file = os.path.join(work, "phase"), os.path.join(work, "stop")
summary: dict = {"phases": {}, "failures": [], "submitted": []}


def phase() -> str:
    try:
        with open(phase_file) as fh:
            return fh.read().strip() or "steady"
    except OSError:
        return "steady"


def call(method: str, path: str, body: dict | None = None) -> dict | None:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    req.add_header("Content-Type", "application/json")
    p = phase()
    stats = summary["phases"].setdefault(p, {"requests": 0, "failed": 0})
    stats["requests"] += 1
    try:
        with urllib.request.urlopen(req, timeout=15, context=tls) as resp:
            return json.loads(resp.read() or b"null")
    # http.client's own errors (IncompleteRead: a response cut short) are not OSErrors
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        stats["failed"] += 1
        error = f"{type(exc).__name__}: {exc}"
        failure = {"time": time.time(), "phase": p, "request": f"{method} {path}", "error": error}
        summary["failures"].append(failure)
        return None


with open(os.path.join(work, "started"), "w") as fh:  # the scenario waits for this
    fh.write(f"{os.getpid()}\n")
i = 0
give_up = time.monotonic() + 3600  # a failed scenario never creates the stop file
while not os.path.exists(stop_file) and time.monotonic() < give_up:
    call("GET", "/jobs?limit=5")
    call("GET", "/nodes")
    if i % 4 == 0:  # a submission every ~2 s: bounded, and each must complete
        job = call("POST", "/jobs", {"scenario": "480p-h264", "duration": 1, "resolution": "64x64"})
        if job and "id" in job:
            summary["submitted"].append(job["id"])
    i += 1
    time.sleep(0.5)
with open(os.path.join(work, "summary.json"), "w") as fh:
    json.dump(summary, fh)
