"""``ffrtmp loadtest``: submit a stream of jobs at a set rate to a running fleet, watch them
end, and report what it cost: submit latency, queue wait and run time per tier, completion
rate, failures by reason, the CPU and memory of the fleet's processes on this host, and every
agent's host CPU, memory, load and busy slots from its own heartbeats (remote agents too).

The jobs are ordinary ones (test-pattern input, each labelled ``loadtest=<run id>``), so they
go through the same API, queues, agents and FFmpeg as any other; the run finds them again by
that label. The report is Markdown and JSON, and a PNG chart where matplotlib is installed
(``pip install 'ffrtmp[report]'``).
"""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..terms import TERMINAL_STATES

TERMINAL = tuple(sorted(s.value for s in TERMINAL_STATES))
KINDS = {  # a fleet process, by what its command line starts with
    "coordinator": ("ffrtmp-coordinator", "coordinator.main"),
    "agent": ("ffrtmp-agent", "agent.main"),
    "slot": ("agent.slot",),
    "supervisor": ("agent.runner", "agent.standby"),
    "ffmpeg": ("ffmpeg ", "/ffmpeg"),
}


@dataclass(frozen=True)
class Mode:
    jobs: int
    rate: float  # submissions per second


MODES = {
    "quick": Mode(10, 5),
    "standard": Mode(100, 10),
    "stress": Mode(1000, 50),
    "scale": Mode(500, 20),  # for a fleet of several agents
}


@dataclass
class Plan:
    jobs: int
    rate: float
    scenarios: list[str]  # cycled through: a mix is a list with repeats
    duration_s: float
    resolution: str | None
    queue: str | None
    wait_s: float  # how long to wait for the last job to end
    run_id: str = field(default_factory=lambda: "lt" + secrets.token_hex(4))

    def body(self, i: int) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "scenario": self.scenarios[i % len(self.scenarios)],
            "duration": self.duration_s,
            "labels": {"loadtest": self.run_id},
        }
        if self.resolution:
            spec["resolution"] = self.resolution
        if self.queue:
            spec["queue"] = self.queue
        return spec


def parse_mix(values: tuple[str, ...]) -> list[str]:
    """``--scenario 720p-h264=3 --scenario 480p-h264`` -> a cycle with weights 3 and 1."""
    out: list[str] = []
    for v in values:
        name, _, weight = v.partition("=")
        try:
            n = int(weight) if weight else 1
        except ValueError:
            raise ValueError(f"--scenario {v}: the weight after '=' must be a whole number") from None
        if not 1 <= n <= 100:
            raise ValueError(f"--scenario {v}: the weight must be 1 to 100")
        out += [name] * n
    return out


@dataclass
class Submitted:
    index: int
    at: float  # since the start of the run
    latency_s: float
    job_id: str | None = None
    error: str | None = None


class Sampler(threading.Thread):
    """The fleet's processes on this host, once a second: host CPU, and per kind (coordinator,
    agent, slot, supervisor, FFmpeg) the resident memory and the CPU seconds used so far (the
    most each process was seen to have used, so one that ran between two samples is missed:
    a lower bound for short FFmpeg runs)."""

    def __init__(self, start: float) -> None:
        super().__init__(daemon=True)
        self.t0 = start
        self.samples: list[dict[str, Any]] = []
        self.cpu_s: dict[int, tuple[str, float]] = {}  # pid -> (kind, CPU seconds used in the run)
        self.before: dict[int, float] = {}  # CPU seconds of processes already running at the start
        self.halt = threading.Event()

    def run(self) -> None:
        import psutil

        psutil.cpu_percent(None)
        for p in psutil.process_iter(["cmdline", "cpu_times"]):
            if _kind(p.info.get("cmdline") or []) and p.info.get("cpu_times") is not None:
                self.before[p.pid] = p.info["cpu_times"].user + p.info["cpu_times"].system
        while not self.halt.wait(1.0):
            rss: dict[str, float] = {}
            for p in psutil.process_iter(["pid", "cmdline", "cpu_times", "memory_info"]):
                kind = _kind(p.info.get("cmdline") or [])
                if kind is None or p.info.get("cpu_times") is None or p.info.get("memory_info") is None:
                    continue
                t = p.info["cpu_times"]
                used = t.user + t.system - self.before.get(p.pid, 0.0)
                self.cpu_s[p.pid] = (kind, max(self.cpu_s.get(p.pid, ("", 0.0))[1], used))
                rss[kind] = rss.get(kind, 0.0) + p.info["memory_info"].rss / 2**20
            cpu_by_kind: dict[str, float] = {}
            for kind, sec in self.cpu_s.values():
                cpu_by_kind[kind] = cpu_by_kind.get(kind, 0.0) + sec
            self.samples.append(
                {
                    "t": round(time.monotonic() - self.t0, 2),
                    "host_cpu_pct": psutil.cpu_percent(None),
                    "rss_mb": {k: round(v, 1) for k, v in rss.items()},
                    "cpu_s": {k: round(v, 2) for k, v in cpu_by_kind.items()},
                }
            )


NODE_FIELDS = ("cpu_percent", "memory_percent", "load1", "slots_busy", "slots", "last_heartbeat")


def node_sample(get: Callable[[str], Any], t: float) -> dict[str, Any]:
    """Every agent's own last heartbeat, wherever it runs: its host's CPU and memory use, its
    load and busy slots (numbers only: a record is untrusted)."""
    nodes: dict[str, dict[str, float]] = {}
    for n in get("/nodes?limit=1000").get("nodes", []):
        name = n.get("name") if isinstance(n, dict) else None
        if isinstance(name, str):
            nodes[name] = {k: n[k] for k in NODE_FIELDS if _number(n.get(k))}
    return {"t": round(t, 2), "nodes": nodes}


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def agents_summary(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per agent over the run: host CPU % mean and max, memory % and load max, slots busy max,
    each heartbeat counted once (an agent writes them every heartbeat interval)."""
    out: dict[str, dict[str, Any]] = {}
    for name in sorted({n for x in samples for n in x["nodes"]}):
        rows = [x["nodes"][name] for x in samples if name in x["nodes"]]
        seen = list({r.get("last_heartbeat"): r for r in rows}.values())

        def col(key: str, rows: list[dict[str, float]] = seen) -> list[float]:
            return [r[key] for r in rows if key in r]

        cpu, load = col("cpu_percent"), col("load1")
        out[name] = {
            "heartbeats": len(seen),
            "cpu_pct_mean": round(sum(cpu) / len(cpu), 1) if cpu else None,
            "cpu_pct_max": max(cpu, default=None),
            "memory_pct_max": max(col("memory_percent"), default=None),
            "load1_max": round(max(load), 2) if load else None,
            "slots_busy_max": max(col("slots_busy"), default=None),
            "slots": max(col("slots"), default=None),
        }
    return out


def _kind(cmdline: list[str]) -> str | None:
    head = " ".join(cmdline[:4])  # "python -P -m agent.runner" names itself 4th
    for kind, names in KINDS.items():
        if any(n in head for n in names):
            return kind
    return None


def submit_all(
    plan: Plan, post: Callable[[dict[str, Any], str], dict[str, Any]], t0: float
) -> list[Submitted]:
    """Submit ``plan.jobs`` at ``plan.rate`` per second (each POST on its own thread from a
    pool, so a slow answer does not slow the rate), with an Idempotency-Key each."""
    out: list[Submitted] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        start = time.monotonic()
        rec = Submitted(i, round(start - t0, 4), 0.0)
        try:
            rec.job_id = post(plan.body(i), f"{plan.run_id}-{i}")["id"]
        except Exception as exc:  # reported per job: one refusal does not end the run
            rec.error = str(exc)[:200]
        rec.latency_s = round(time.monotonic() - start, 5)
        with lock:
            out.append(rec)

    # enough threads that answers as slow as a second do not hold the rate back
    with ThreadPoolExecutor(max_workers=max(16, min(256, math.ceil(plan.rate)))) as pool:
        for i in range(plan.jobs):
            due = t0 + i / plan.rate
            if (delay := due - time.monotonic()) > 0:
                time.sleep(delay)
            pool.submit(one, i)
    return sorted(out, key=lambda r: r.index)


def collect(get: Callable[[str], Any], run_id: str) -> dict[str, dict[str, Any]]:
    """Every job of the run, as the API shows it, by id (listed by its label, page by page)."""
    jobs: dict[str, dict[str, Any]] = {}
    cursor: Any = None
    while True:
        path = f"/jobs?label=loadtest={run_id}&limit=500" + (f"&cursor={cursor}" if cursor else "")
        page = get(path)
        for j in page.get("jobs", []):
            jobs[j["id"]] = j
        cursor = page.get("next_cursor")
        if not cursor:
            return jobs


def _ts(iso: str | None) -> float | None:
    from datetime import datetime

    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    v = sorted(values)

    def at(q: float) -> float:
        return round(v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))], 4)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(v[-1], 4)}


def summarize(
    plan: Plan,
    subs: list[Submitted],
    jobs: dict[str, dict[str, Any]],
    samples: list[dict[str, Any]],
    wall_s: float,
    node_samples: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What the report says, from the submissions, the jobs' views, the process samples of
    this host and the agents' heartbeats."""
    ended = [j for j in jobs.values() if j.get("state") in TERMINAL]
    per_tier: dict[str, dict[str, list[float]]] = {}
    for j in ended:
        created, started, end = _ts(j.get("created_at")), _ts(j.get("started_at")), _ts(j.get("ended_at"))
        tier = per_tier.setdefault(str(j.get("queue")), {"queue_wait_s": [], "run_s": []})
        if created and started:
            tier["queue_wait_s"].append(max(0.0, started - created))
        if started and end:
            tier["run_s"].append(max(0.0, end - started))
    reasons = Counter(
        str((j.get("error") or {}).get("reason") or j["state"]) for j in ended if j["state"] != "completed"
    )
    refused = Counter(s.error for s in subs if s.error)
    completed = sum(1 for j in ended if j["state"] == "completed")
    last = samples[-1] if samples else {"cpu_s": {}}
    host = [x["host_cpu_pct"] for x in samples]
    processes = {
        k: {
            "cpu_s": last["cpu_s"].get(k, 0.0),
            "cores_mean": round(last["cpu_s"].get(k, 0.0) / max(wall_s, 1e-9), 3),
            "rss_mb_max": max((x["rss_mb"].get(k, 0.0) for x in samples), default=0.0),
        }
        for k in sorted({k for x in samples for k in x["rss_mb"]} | set(last["cpu_s"]))
    }
    return {
        "run_id": plan.run_id,
        "plan": {k: v for k, v in asdict(plan).items() if k != "run_id"},
        "wall_s": round(wall_s, 2),
        "submitted": sum(1 for s in subs if s.job_id),
        "refused_at_submit": dict(refused),
        "submit_latency_s": percentiles([s.latency_s for s in subs if s.job_id]),
        "submit_rate_achieved": _rate([s.at for s in subs]),
        "ended": len(ended),
        "completed": completed,
        "completion_rate": round(completed / len(subs), 4) if subs else 0.0,
        "not_ended": sorted(j for j in jobs if jobs[j].get("state") not in TERMINAL),
        "failures_by_reason": dict(reasons),
        "per_tier": {
            t: {"jobs": len(v["run_s"]), **{m: percentiles(x) for m, x in v.items()}}
            for t, v in per_tier.items()
        },
        "processes": processes,
        "agents": agents_summary(node_samples or []),
        "host_cpu_pct": {"mean": round(sum(host) / len(host), 1), "max": max(host)} if host else None,
    }


def _rate(times: list[float]) -> float | None:
    """Submissions per second between the first and the last (n - 1 gaps over the span)."""
    span = max(times) - min(times) if len(times) > 1 else 0.0
    return round((len(times) - 1) / span, 2) if span > 0 else None


def _fmt(v: Any) -> str:
    """Seconds as a reader wants them: ms below one second, seconds above."""
    if v is None:
        return "—"
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"


def markdown(summary: dict[str, Any], chart: str | None) -> str:
    p = summary["plan"]
    lat = summary["submit_latency_s"]
    lines = [
        f"# ffrtmp load test {summary['run_id']}",
        "",
        f"{p['jobs']} jobs at {p['rate']}/s ({', '.join(sorted(set(p['scenarios'])))}, "
        f"{p['duration_s']} s each), {summary['wall_s']} s in all.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| submitted | {summary['submitted']} of {p['jobs']} |",
        f"| submit rate reached | {summary['submit_rate_achieved'] or '—'}/s |",
        f"| submit latency p50 / p95 / p99 | {_fmt(lat['p50'])} / {_fmt(lat['p95'])} / {_fmt(lat['p99'])} |",
        f"| completed | {summary['completed']} ({summary['completion_rate']:.1%}) |",
        f"| ended otherwise | {summary['ended'] - summary['completed']} |",
        f"| not ended when the run stopped | {len(summary['not_ended'])} |",
        "",
        "## Per tier",
        "",
        "| tier | jobs | queue wait p50 / p95 / p99 | run time p50 / p95 / p99 |",
        "|---|---|---|---|",
    ]
    for tier, t in sorted(summary["per_tier"].items()):
        qw, rt = t["queue_wait_s"], t["run_s"]
        lines.append(
            f"| {tier} | {t['jobs']} | {_fmt(qw['p50'])} / {_fmt(qw['p95'])} / {_fmt(qw['p99'])} "
            f"| {_fmt(rt['p50'])} / {_fmt(rt['p95'])} / {_fmt(rt['p99'])} |"
        )
    lines += ["", "## Failures by reason", ""]
    fails = {
        **summary["failures_by_reason"],
        **{f"refused: {k}": v for k, v in summary["refused_at_submit"].items()},
    }
    lines += [f"- {k}: {v}" for k, v in sorted(fails.items())] or ["none"]
    lines += ["", "## Processes on this host (sampled each second)", ""]
    if summary["host_cpu_pct"]:
        h = summary["host_cpu_pct"]
        lines += [f"Host CPU: {h['mean']} % mean, {h['max']} % max (all cores = 100 %).", ""]
    if summary["processes"]:
        lines += ["| kind | CPU seconds | cores (mean) | RSS max (MiB) |", "|---|---|---|---|"]
        for k, v in summary["processes"].items():
            lines.append(f"| {k} | {v['cpu_s']} | {v['cores_mean']} | {v['rss_mb_max']} |")
    else:
        lines.append("none found: the fleet runs on other hosts (see their /metrics)")
    lines += ["", "## Agents (their own heartbeats, wherever they run)", ""]
    if summary["agents"]:
        lines += ["Host figures as each agent reported them, once per heartbeat interval.", ""]
        lines += [
            "| agent | heartbeats | host CPU % mean / max | memory % max | load max | busy max / slots |",
            "|---|---|---|---|---|---|",
        ]
        for name, a in summary["agents"].items():
            lines.append(
                f"| {name} | {a['heartbeats']} | {a['cpu_pct_mean']} / {a['cpu_pct_max']} "
                f"| {a['memory_pct_max']} | {a['load1_max']} | {a['slots_busy_max']} / {a['slots']} |"
            )
    else:
        lines.append("none seen")
    lines += [
        "",
        f"![submitted and completed over time]({chart})" if chart else "(no chart: matplotlib missing)",
    ]
    return "\n".join(lines) + "\n"


def chart(
    path: Path, subs: list[Submitted], timeline: list[tuple[float, int, int]], summary: dict[str, Any]
) -> bool:
    """Submitted and completed over time, and the latency percentiles, as a PNG; False when
    matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    left.plot([s.at for s in subs], range(1, len(subs) + 1), label="submitted")
    left.plot([t for t, _, _ in timeline], [c for _, _, c in timeline], label="ended")
    left.set_xlabel("seconds")
    left.set_ylabel("jobs")
    left.legend()
    left.set_title("jobs over time")
    rows = [("submit", summary["submit_latency_s"])]
    rows += [(f"{t} wait", v["queue_wait_s"]) for t, v in sorted(summary["per_tier"].items())]
    rows += [(f"{t} run", v["run_s"]) for t, v in sorted(summary["per_tier"].items())]
    width = 0.25
    for k, q in enumerate(("p50", "p95", "p99")):
        right.bar([i + k * width for i in range(len(rows))], [r[1][q] or 0 for r in rows], width, label=q)
    right.set_xticks([i + width for i in range(len(rows))], [r[0] for r in rows], rotation=30, ha="right")
    right.set_ylabel("seconds")
    right.set_yscale("log")
    right.legend()
    right.set_title("latency percentiles")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(
    out: Path,
    summary: dict[str, Any],
    subs: list[Submitted],
    jobs: dict[str, Any],
    samples: list[Any],
    timeline: Any,
    node_samples: list[Any] | None = None,
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    drawn = chart(out / "chart.png", subs, timeline, summary)
    raw = {
        "summary": summary,
        "submissions": [asdict(s) for s in subs],
        "jobs": list(jobs.values()),
        "samples": samples,
        "node_samples": node_samples or [],
        "timeline": timeline,
    }
    (out / "loadtest.json").write_text(json.dumps(raw, indent=1, default=str))
    (out / "report.md").write_text(markdown(summary, "chart.png" if drawn else None))
    return [out / "report.md", out / "loadtest.json", *([out / "chart.png"] if drawn else [])]
