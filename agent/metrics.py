"""Agent metrics, computed when Prometheus scrapes (never stale), every family labelled with the
node name. Families that only apply to some hardware (NVIDIA GPUs) are always declared, with
samples only where the hardware exists."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

import psutil
import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from ffrtmp import __version__, stats
from ffrtmp.presets import HW_ENCODER_NAMES
from ffrtmp.rundir import RunDir

from .probe import nvidia_gpus

if TYPE_CHECKING:
    from .config import AgentConfig
    from .disk import RootSpace


class AgentStatus(Protocol):
    """What the metrics read of the running agent (``agent.main.Agent`` is one)."""

    cfg: AgentConfig
    conn: redis.Redis | None
    info: dict[str, Any]
    last_heartbeat: float
    started_at: float
    disk: list[RootSpace]

    def active_runs(self) -> list[dict[str, Any]]: ...

    def busy_slots(self) -> int: ...

    def disk_free_ratio(self) -> float: ...


_FAMILY = {name: fam for (fam, _codec), name in HW_ENCODER_NAMES.items()}


def run_stats(runs: list[dict[str, Any]], work_dir: str, stall_after_s: float) -> dict[str, float]:
    """Speed and stall figures over the runs alive on this host."""
    now = time.time()
    speeds = []
    stalled = 0
    for r in runs:
        rd = RunDir(r["run_dir"])
        prog = rd.progress()
        started = rd.started() or {}
        last = (prog or {}).get("time") or started.get("time") or now
        if now - float(last) > stall_after_s:
            stalled += 1
        if prog and prog.get("speed"):
            speeds.append(float(prog["speed"]))
    return {"speed_sum": sum(speeds), "speed_count": len(speeds), "stalled": stalled}


class AgentCollector:
    def __init__(self, agent: AgentStatus) -> None:
        self.agent = agent

    def _g(self, name: str, doc: str, value: float, extra: dict[str, str] | None = None) -> GaugeMetricFamily:
        labels = {"node": self.agent.cfg.name, **(extra or {})}
        g = GaugeMetricFamily(name, doc, labels=list(labels))
        g.add_metric(list(labels.values()), value)
        return g

    def collect(self):  # type: ignore[no-untyped-def]
        a = self.agent
        node = a.cfg.name
        info = InfoMetricFamily("ffrtmp_agent_build", "Agent version", labels=["node"])
        info.add_metric([node], {"version": __version__})
        yield info
        yield self._g(
            "ffrtmp_agent_start_time_seconds", "When this agent process started (unix time)", a.started_at
        )
        yield self._g(
            "ffrtmp_agent_last_heartbeat_timestamp_seconds",
            "Last heartbeat written (unix time)",
            a.last_heartbeat,
        )
        yield self._g("ffrtmp_agent_slots", "Job slots on this agent", a.cfg.slots)
        try:
            busy = a.busy_slots()
            redis_ok = 1
        except (redis.RedisError, OSError):
            busy, redis_ok = 0, 0
        yield self._g("ffrtmp_agent_slots_busy", "Slots running a job", busy)
        yield self._g("ffrtmp_agent_redis_up", "1 if the agent can reach Redis", redis_ok)
        runs = a.active_runs()
        rs = run_stats(runs, a.cfg.work_dir, a.cfg.stall_after)
        yield self._g("ffrtmp_agent_runs_active", "FFmpeg runs alive on this host", len(runs))
        yield self._g(
            "ffrtmp_agent_runs_stalled",
            f"Runs whose progress has not moved for {a.cfg.stall_after:g}s",
            rs["stalled"],
        )
        yield self._g(
            "ffrtmp_agent_ffmpeg_speed_ratio_sum",
            "Sum of FFmpeg speed (x realtime) over running "
            "jobs that report one; divide by ffrtmp_agent_ffmpeg_speed_samples",
            rs["speed_sum"],
        )
        yield self._g(
            "ffrtmp_agent_ffmpeg_speed_samples", "Running jobs that report a speed", rs["speed_count"]
        )
        yield self._g("ffrtmp_agent_cpu_usage_ratio", "Host CPU use, 0-1", psutil.cpu_percent(None) / 100)
        yield self._g(
            "ffrtmp_agent_memory_usage_ratio", "Host memory use, 0-1", psutil.virtual_memory().percent / 100
        )
        yield self._g(
            "ffrtmp_agent_work_dir_free_ratio",
            "Free fraction of the work dir's file system",
            a.disk_free_ratio(),
        )
        full = GaugeMetricFamily(
            "ffrtmp_agent_disk_full",
            "1 while the work dir or this output root is too full to take jobs",
            labels=["node", "path"],
        )
        for d in a.disk:
            full.add_metric([node, d.path], 1 if d.full else 0)
        yield full
        enc = GaugeMetricFamily(
            "ffrtmp_agent_encoder_up",
            "1 if the last test encode with this encoder passed",
            labels=["node", "encoder", "family"],
        )
        for name, ok in sorted(a.info.get("encoders", {}).items()):
            enc.add_metric([node, name, _FAMILY.get(name, "cpu")], 1 if ok else 0)
        yield enc
        util = GaugeMetricFamily(
            "ffrtmp_agent_gpu_utilization_ratio",
            "GPU utilisation, 0-1 (nvidia-smi)",
            labels=["node", "gpu", "model"],
        )
        sessions = GaugeMetricFamily(
            "ffrtmp_agent_gpu_encoder_sessions", "Active NVENC sessions (nvidia-smi)", labels=["node", "gpu"]
        )
        for gpu in nvidia_gpus() if a.info.get("gpus") else []:
            if gpu.get("utilization_percent") is not None:
                util.add_metric([node, gpu["index"], gpu["model"]], gpu["utilization_percent"] / 100)
            if gpu.get("encoder_sessions") is not None:
                sessions.add_metric([node, gpu["index"]], gpu["encoder_sessions"])
        yield util
        yield sessions
        try:
            raw = a.conn.hgetall(stats.node_stats_key(node)) if a.conn is not None else {}
        except (redis.RedisError, OSError):
            raw = {}
        for field, doc in (
            ("bytes_in", "Bytes of local input files read by completed jobs"),
            ("bytes_out", "Bytes of verified output written by completed jobs"),
        ):
            c = CounterMetricFamily(f"ffrtmp_agent_{field}", doc, labels=["node"])
            c.add_metric([node], float(raw.get(field.encode(), 0)))
            yield c
