"""Wrong API keys from one address, as a guesser sends them, then the right key from the same
address: shows the failed-auth budget at work (401s, then 429 with Retry-After for everything).

    ffrtmp up &                              # or any coordinator with its default limits
    .venv/bin/python bench/auth_flood.py URL RIGHT_KEY [--requests 2000]
"""

from __future__ import annotations

import argparse
import collections
import time
import urllib.error
import urllib.request


def status(url: str, key: str) -> tuple[int, str | None]:
    req = urllib.request.Request(url + "/jobs?limit=1", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, None
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Retry-After")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("key")
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args()
    counts: collections.Counter[int] = collections.Counter()
    retry_after = None
    t0 = time.perf_counter()
    for i in range(args.requests):
        code, retry_after = status(args.url, f"ffr_wrong_{i}")
        counts[code] += 1
    rate = args.requests / (time.perf_counter() - t0)
    right, _ = status(args.url, args.key)
    print(f"{dict(counts)} at {rate:.0f}/s; last Retry-After {retry_after}; the right key then: {right}")


if __name__ == "__main__":
    main()
