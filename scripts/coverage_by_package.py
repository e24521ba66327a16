"""Print line and branch coverage per package from the .coverage data pytest-cov wrote."""

from __future__ import annotations

import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import coverage

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ffrtmp", "agent", "coordinator")


def main() -> int:
    cov = coverage.Coverage(data_file=str(ROOT / ".coverage"))
    cov.load()
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "coverage.json"
        cov.json_report(outfile=str(out))
        files = json.loads(out.read_text())["files"]
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # lines, hit, branches, taken
    for name, data in files.items():
        pkg = Path(name).parts[0]
        if pkg not in PACKAGES:
            continue
        summary, t = data["summary"], totals[pkg]
        t[0] += summary["num_statements"]
        t[1] += summary["covered_lines"]
        t[2] += summary.get("num_branches", 0)
        t[3] += summary.get("covered_branches", 0)
    print(f"{'package':<12} {'lines':>14} {'branches':>14}")
    for pkg in PACKAGES:
        lines, hit, branches, taken = totals[pkg]
        lp = 100 * hit / lines if lines else 0.0
        bp = 100 * taken / branches if branches else 0.0
        print(f"{pkg:<12} {lp:6.1f}% of {lines:<5} {bp:6.1f}% of {branches:<5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
