"""``ffrtmp-agent``: probe the host, register it, run and supervise N worker slots, heartbeat,
and serve /health, /ready and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import click
import psutil
import redis
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ffrtmp import __version__, options, stats
from ffrtmp.auth import KeyFileError, KeyRing, read_key_file
from ffrtmp.durations import DURATION
from ffrtmp.keys import SCHEMA_VERSION
from ffrtmp.logs import reopen_logs, setup_logging
from ffrtmp.model import NODE_NAME
from ffrtmp.networks import parse_networks
from ffrtmp.nodes import drain_key, write_heartbeat
from ffrtmp.presets import HW_ENCODER_NAMES
from ffrtmp.queues import planner_queues, slot_queues
from ffrtmp.redisconn import connect, ping, redis_retry
from ffrtmp.rundir import RunDir
from ffrtmp.timing import orphan_deadline, renewal_interval

from . import cgroups, disk, segments
from .adopt import adopt, sweep_partials
from .config import AgentConfig
from .context import ENV as CONTEXT_ENV
from .context import dump_context
from .metrics import AgentCollector
from .pipeline import AgentContext
from .probe import ProbeError, probe, test_encode

log = logging.getLogger("ffrtmp.agent")
MIN_FREE_DISK_RATIO = 0.10
HW_ENCODERS = frozenset(HW_ENCODER_NAMES.values())


@dataclass
class Slot:
    index: int
    name: str
    queues: list[str]
    planner: bool = False  # follows segmented jobs; not a transcoding slot
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started: float = 0.0


@dataclass
class Agent:
    cfg: AgentConfig
    boot_id: str = field(default_factory=lambda: secrets.token_hex(3))
    info: dict[str, Any] = field(default_factory=dict)
    slots: list[Slot] = field(default_factory=list)
    stopping: bool = False
    conn: redis.Redis | None = None
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    started_at: float = field(default_factory=time.time)
    last_heartbeat: float = 0.0
    slot_restarts: int = 0
    hw_proven: list[str] = field(default_factory=list)
    draining: bool = False
    handover: bool = False
    adopted: list[threading.Thread] = field(default_factory=list)
    accepting: asyncio.Event = field(default_factory=asyncio.Event)
    holds: dict[str, str] = field(default_factory=dict)  # why no job is taken now -> detail
    disk: list[disk.RootSpace] = field(default_factory=list)
    metrics_keys: KeyRing | None = None

    def __post_init__(self) -> None:
        self.registry.register(AgentCollector(self))

    # --- probe and record ---------------------------------------------------------------
    def context(self, encoders: dict[str, bool] | None = None) -> AgentContext:
        return AgentContext(
            node=self.cfg.name,
            input_roots=self.cfg.input_roots,
            output_roots=self.cfg.output_roots,
            work_dir=self.cfg.work_dir,
            encoders=self.info["encoders"] if encoders is None else encoders,
            vaapi_device=self.info.get("vaapi_device"),
            ffmpeg=self.cfg.ffmpeg,
            ffprobe=self.cfg.ffprobe,
            heartbeat_interval=self.cfg.heartbeat_interval,
            allow_url_networks=self.cfg.allow_url_networks,
            stall_after=self.cfg.stall_after,
        )

    def active_runs(self) -> list[dict[str, Any]]:
        """FFmpeg runs alive on this host (the same scan re-adoption uses)."""
        out = []
        for rd in RunDir.live(self.cfg.work_dir):
            st = rd.started() or {}
            out.append(
                {
                    "job": rd.job_id,
                    "attempt": rd.attempt,
                    "ffmpeg_pid": st.get("ffmpeg_pid"),
                    "run_dir": rd.path,
                }
            )
        return out

    def disk_free_ratio(self) -> float:
        usage = shutil.disk_usage(self.cfg.work_dir)
        return usage.free / usage.total if usage.total else 0.0

    def busy_slots(self) -> int:
        assert self.conn is not None
        with self.conn.pipeline() as pipe:
            for s in self.slots:
                if not s.planner:
                    pipe.hget(f"rq:worker:{s.name}", "state")
            states = pipe.execute()
        return sum(1 for st in states if st in (b"busy", "busy"))

    def record(self) -> dict[str, Any]:
        runs = self.active_runs()
        load1, _, _ = os.getloadavg()
        return {
            "schema": SCHEMA_VERSION,
            "name": self.cfg.name,
            "version": __version__,
            "boot_id": self.boot_id,
            "hostname": socket.gethostname(),
            "slots": self.cfg.slots,
            "live_slots": self.cfg.live_slots,
            "slots_busy": self.busy_slots(),
            "slot_queues": {s.name: s.queues for s in self.slots},
            "capabilities": self.info["capabilities"],
            "cpu_codecs": self.info["cpu_codecs"],
            "encoders": self.info["encoders"],
            "encoder_failures": self.info["encoder_failures"],
            "gpus": self.info["gpus"],
            "dri_render_nodes": self.info["dri_render_nodes"],
            "ffmpeg_version": self.info["ffmpeg_version"],
            "cpu_threads": self.info["cpu_threads"],
            "memory_bytes": self.info["memory_bytes"],
            "load1": load1,
            "cpu_percent": psutil.cpu_percent(interval=None),
            "memory_percent": psutil.virtual_memory().percent,
            "disk_free_ratio": round(self.disk_free_ratio(), 4),
            "disk": [
                {"path": d.path, "free_bytes": d.free_bytes, "full": d.full, "why": d.why} for d in self.disk
            ],
            "holds": dict(self.holds),
            "running": runs,
            "draining": self.stopping or self.draining,
            "metrics_port": self.cfg.metrics_port,
            "started_at": self.info.get("started_at"),
        }

    @redis_retry()
    def heartbeat(self, **extra: Any) -> None:
        assert self.conn is not None
        rec = self.record()
        rec.update(extra)
        write_heartbeat(self.conn, rec)
        self.last_heartbeat = time.time()

    # --- slots --------------------------------------------------------------------------
    def plan_slots(self) -> None:
        caps = self.info["capabilities"]
        for i in range(self.cfg.slots):
            live_only = i < self.cfg.live_slots
            self.slots.append(
                Slot(i, f"{self.cfg.name}.s{i}.{self.boot_id}", slot_queues(caps, live_only, self.cfg.name))
            )
        for j in range(self.cfg.planner_slots):
            name = f"{self.cfg.name}.plan{j}.{self.boot_id}"
            self.slots.append(Slot(self.cfg.slots + j, name, planner_queues(), planner=True))

    async def start_slot(self, slot: Slot) -> None:
        env = dict(os.environ)
        env.update(
            {
                "FFRTMP_SLOT_NAME": slot.name,
                "FFRTMP_SLOT_QUEUES": ",".join(slot.queues),
                "FFRTMP_REDIS_URL": self.cfg.redis_url,
                "FFRTMP_WORKER_TTL": str(max(5, int(self.cfg.heartbeat_interval))),
                # running jobs' executions are renewed every 1-2 s (see agent.task.execution_ttl)
                "FFRTMP_JOB_MONITORING_INTERVAL": str(renewal_interval(self.cfg.heartbeat_interval)),
                "FFRTMP_HEARTBEAT_INTERVAL": str(self.cfg.heartbeat_interval),
                "FFRTMP_LOG_LEVEL": self.cfg.log_level,
                "FFRTMP_LOG_DIR": self.cfg.log_dir or "",
                "FFRTMP_AGENT_PID": str(os.getpid()),
                CONTEXT_ENV: dump_context(self.context()),
            }
        )
        slot.proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent.slot", env=env)
        slot.started = time.monotonic()
        log.info("started slot %s (pid %s)", slot.name, slot.proc.pid)

    async def supervise_slot(self, slot: Slot) -> None:
        while not self.stopping:
            await self.accepting.wait()  # drained: no worker at all, so nothing is dequeued
            if self.stopping:
                return
            await self.start_slot(slot)
            assert slot.proc is not None
            rc = await slot.proc.wait()
            if self.stopping:
                return
            if not self.accepting.is_set():
                log.info("slot %s stopped: %s", slot.name, ", ".join(self.holds))
                continue
            self.slot_restarts += 1
            if not await asyncio.to_thread(ping, self.conn):
                # Redis is away: every slot would die at once again. Wait for it, then restart
                # at once: the back-off is for slots that crash, not for an outage.
                log.warning(
                    "slot %s exited with %s while Redis is unreachable; waiting for it", slot.name, rc
                )
                while not self.stopping and not await asyncio.to_thread(ping, self.conn):
                    await asyncio.sleep(0.5)
                slot.restarts = 0
                continue
            slot.restarts = slot.restarts + 1 if time.monotonic() - slot.started < 60 else 1
            delay = min(30.0, 2.0 ** (slot.restarts - 1))
            log.warning("slot %s exited with %s; restarting in %.0fs", slot.name, rc, delay)
            await asyncio.sleep(delay)

    async def sweep_runs(self) -> None:
        """Now and then (5-30 s): remove partial outputs and cgroups dead runs of this node left
        behind, and the segments of segmented jobs that ended."""
        assert self.conn is not None
        quiet = 2 * orphan_deadline(self.cfg.heartbeat_interval)
        every = max(5.0, min(30.0, quiet / 2))
        while not self.stopping:
            await asyncio.to_thread(self._sweep_cgroups)
            try:
                await asyncio.to_thread(sweep_partials, self.conn, self.cfg.work_dir, quiet)
                if self.cfg.output_roots:
                    await asyncio.to_thread(segments.sweep, self.conn, self.cfg.output_roots[0])
            except (redis.RedisError, OSError) as exc:
                log.warning("cannot sweep dead runs now: %s", exc)
            await asyncio.sleep(every)

    def _sweep_cgroups(self) -> None:
        """Remove the cgroups of this node's runs whose supervisor died before it could."""
        with contextlib.suppress(cgroups.CgroupsBusy, OSError):
            if lay := cgroups.layout():
                keep = {
                    cgroups.run_name(self.cfg.name, rd.job_id, rd.attempt)
                    for rd in RunDir.all(self.cfg.work_dir)
                    if rd.runner_alive()
                }
                cgroups.sweep(lay, self.cfg.name, keep)

    async def watch_drain(self) -> None:
        """Follow the node's drain flag (set through the API): draining stops every slot's RQ
        worker warmly (an idle one at once, a busy one after its job), so no new job is taken
        while running ones finish; undraining starts them again."""
        assert self.conn is not None
        while not self.stopping:
            try:
                drained = bool(await asyncio.to_thread(self.conn.exists, drain_key(self.cfg.name)))
            except (redis.RedisError, OSError):
                drained = self.draining  # keep the last known state through a Redis blip
            if drained != self.draining:
                self.draining = drained
                await self.set_hold("draining", "drained through the API" if drained else None)
            await self.check_disks()
            await asyncio.sleep(1.0)

    async def check_disks(self) -> None:
        """A full work dir or output root stops the node taking jobs (each would fail) until
        space is back; /ready and the node record say which one."""
        self.disk = await asyncio.to_thread(
            disk.check, self.cfg.work_dir, self.cfg.output_roots, self.cfg.min_free_space
        )
        full = [f"{d.path}: {d.why}" for d in self.disk if d.full]
        await self.set_hold("disk_full", "; ".join(full) if full else None)

    async def set_hold(self, reason: str, detail: str | None) -> None:
        """Stop taking jobs while any hold is on (drain, a full disk): every slot's RQ worker is
        stopped warmly (an idle one at once, a busy one after its job); they start again when
        the last hold is lifted."""
        was = bool(self.holds)
        if detail is None:
            if self.holds.pop(reason, None) is None:
                return
            log.info("%s lifted", reason)
        else:
            if self.holds.get(reason) == detail:
                return
            self.holds[reason] = detail
            log.warning("taking no new jobs: %s (%s); running jobs finish", reason, detail)
        if self.holds and not was:
            self.accepting.clear()
            for s in self.slots:
                if s.proc and s.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        s.proc.send_signal(signal.SIGTERM)
        elif not self.holds and was:
            self.accepting.set()
            log.info("taking jobs again")
        with contextlib.suppress(redis.RedisError, OSError):
            await asyncio.to_thread(self.heartbeat)

    async def wait_adopted(self, drain_timeout: float) -> None:
        """Adopted runs drain like the slots' jobs do; past the drain timeout they are left to
        the next start of this agent (or stop themselves and get requeued)."""
        deadline = time.monotonic() + drain_timeout
        for t in self.adopted:
            await asyncio.to_thread(t.join, max(0.0, deadline - time.monotonic()))

    async def stop_slots(self, drain_timeout: float) -> None:
        """Warm shutdown: idle slots stop at once, busy ones finish their job (bounded by the
        drain timeout). A second SIGTERM after the timeout is RQ's cold shutdown: it kills the
        horse, while FFmpeg's own supervisor keeps running in its own session."""
        procs = [s.proc for s in self.slots if s.proc and s.proc.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), drain_timeout)
        except TimeoutError:
            log.warning("drain timeout (%.0fs) reached with jobs still running", drain_timeout)
            await asyncio.sleep(1.5)  # RQ ignores a second SIGTERM within 1 s
            for p in procs:
                if p.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.send_signal(signal.SIGTERM)
            await asyncio.gather(*(p.wait() for p in procs))

    def request_handover(self, stop: asyncio.Event) -> None:
        """SIGUSR1: stop at once without waiting for running jobs. Their FFmpeg runs carry on
        under their supervisors and the next agent (of any version) re-adopts them: this is how
        a restart or an upgrade happens under live streams."""
        self.handover = True
        stop.set()

    # --- http ---------------------------------------------------------------------------
    async def h_health(self, _req: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": self.cfg.name, "version": __version__})

    async def h_ready(self, _req: web.Request) -> web.Response:
        problems = []
        if not shutil.which(self.cfg.ffmpeg):
            problems.append("ffmpeg not found")
        ratio = self.disk_free_ratio()
        if ratio < MIN_FREE_DISK_RATIO:
            problems.append(f"work dir disk only {ratio:.1%} free (< {MIN_FREE_DISK_RATIO:.0%})")
        problems.extend(f"disk full: {d.path}: {d.why}" for d in self.disk if d.full)
        try:
            assert self.conn is not None
            await asyncio.to_thread(self.conn.ping)
        except (redis.RedisError, OSError) as exc:
            problems.append(f"redis unreachable: {exc}")
        if self.stopping:
            problems.append("stopping")
        alive = sum(1 for s in self.slots if s.proc and s.proc.returncode is None)
        if alive < len(self.slots) and not self.holds:
            problems.append(f"{len(self.slots) - alive} slot(s) not running")
        # A drain is the operator's hold, not a fault: a drained agent that restarts is ready
        # (its slots wait for the undrain), and the body says it is drained.
        body = {
            "ready": not problems,
            "problems": problems,
            "node": self.cfg.name,
            "version": __version__,
            "draining": self.draining,
        }
        return web.json_response(body, status=200 if not problems else 503)

    def refused(self, req: web.Request) -> web.Response | None:
        """With --metrics-api-keys-file, a request without one of its keys gets a 401."""
        if self.metrics_keys is None:
            return None
        scheme, _, token = req.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip() and self.metrics_keys.lookup(token.strip()):
            return None
        message = "missing or invalid key (Authorization: Bearer <key>)"
        return web.json_response(
            {"error": {"code": "unauthorized", "message": message}},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="ffrtmp-agent"'},
        )

    async def h_violations(self, req: web.Request) -> web.Response:
        """The last SLA violations of jobs that ran here, newest first."""
        if (no := self.refused(req)) is not None:
            return no
        assert self.conn is not None
        try:
            items = await asyncio.to_thread(stats.read_violations, self.conn, self.cfg.name)
        except (redis.RedisError, OSError) as exc:
            return web.json_response(
                {"error": {"code": "redis_unavailable", "message": str(exc)}}, status=503
            )
        return web.json_response({"node": self.cfg.name, "targets_s": stats.SLA_WAIT_S, "violations": items})

    async def h_metrics(self, req: web.Request) -> web.Response:
        if (no := self.refused(req)) is not None:
            return no
        body = await asyncio.to_thread(generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def reopen_logs(self) -> None:
        """SIGHUP (logrotate): reopen our log file and have every slot reopen its own."""
        reopen_logs()
        for s in self.slots:
            if s.proc and s.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    s.proc.send_signal(signal.SIGHUP)
        log.info("log files reopened")

    def recheck_encoders(self) -> None:
        """Re-run the test encode of each hardware encoder that passed at start, so a GPU that
        falls off the bus (driver crash, Xid error) shows as ffrtmp_agent_encoder_up 0."""
        for name in self.hw_proven:
            ok, why = test_encode(self.cfg.ffmpeg, name, self.info.get("vaapi_device"))
            if ok != self.info["encoders"].get(name):
                level = logging.INFO if ok else logging.ERROR
                log.log(
                    level, "encoder %s is %s (%s)", name, "working again" if ok else "no longer working", why
                )
            self.info["encoders"][name] = ok

    # --- main ---------------------------------------------------------------------------
    async def run(self) -> int:
        cfg = self.cfg
        os.makedirs(cfg.work_dir, exist_ok=True)
        self.conn = connect(cfg.redis_url, socket_timeout=10)
        # First of all, before the (slow) probe: runs a previous life of this agent left behind
        # stop themselves once nobody watches them for 2 heartbeat intervals.
        try:
            self.adopted = await asyncio.to_thread(adopt, self.conn, self.context(encoders={}))
        except (redis.RedisError, OSError) as exc:
            log.error("cannot look for runs to adopt (Redis: %s); they will be requeued", exc)
        try:
            self.info = await asyncio.to_thread(probe, cfg.ffmpeg, cfg.ffprobe)
        except ProbeError as exc:
            log.error("%s", exc)
            return 2
        self.info["started_at"] = time.time()
        self.hw_proven = [n for n, ok in self.info["encoders"].items() if ok and n in HW_ENCODERS]
        last_recheck = time.monotonic()
        log.info(
            "probe: capabilities=%s cpu_codecs=%s",
            self.info["capabilities"],
            self.info["cpu_codecs"],
            extra={"node": cfg.name},
        )
        self.plan_slots()
        self.accepting.set()
        await self.check_disks()
        await asyncio.to_thread(self.heartbeat)

        app = web.Application()
        app.router.add_get("/health", self.h_health)
        app.router.add_get("/ready", self.h_ready)
        app.router.add_get("/metrics", self.h_metrics)
        app.router.add_get("/violations", self.h_violations)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, cfg.metrics_host, cfg.metrics_port).start()

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, self.request_handover, stop)
        loop.add_signal_handler(signal.SIGHUP, self.reopen_logs)
        supervisors = [asyncio.create_task(self.supervise_slot(s)) for s in self.slots]
        supervisors.append(asyncio.create_task(self.watch_drain()))
        supervisors.append(asyncio.create_task(self.sweep_runs()))
        log.info("agent %s up: %d slots, metrics on :%d", cfg.name, cfg.slots, cfg.metrics_port)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), cfg.heartbeat_interval)
            if stop.is_set():
                break
            if self.hw_proven and time.monotonic() - last_recheck >= cfg.encoder_recheck:
                last_recheck = time.monotonic()
                await asyncio.to_thread(self.recheck_encoders)
            try:
                await asyncio.to_thread(self.heartbeat)
            except (redis.RedisError, OSError) as exc:
                log.error("heartbeat failed after retries: %s", exc)
        drain_timeout = 0.0 if self.handover else cfg.drain_timeout
        if self.handover:
            log.info("handing over: stopping now; running jobs are left to the next agent")
        else:
            log.info("stopping: no new jobs; waiting up to %.0fs for running jobs", drain_timeout)
        self.stopping = True
        self.accepting.set()  # wake supervisors parked by a drain so they can exit
        with contextlib.suppress(redis.RedisError, OSError):
            await asyncio.to_thread(self.heartbeat)
        await self.stop_slots(drain_timeout)
        await self.wait_adopted(drain_timeout)
        if self.handover:  # the next agent gets a whole orphan deadline from now to adopt them
            for rd in await asyncio.to_thread(RunDir.live, cfg.work_dir):
                rd.touch_owner()
        for t in supervisors:
            t.cancel()
        with contextlib.suppress(redis.RedisError, OSError):
            await asyncio.to_thread(self.heartbeat, stopped=True)
        await runner.cleanup()
        log.info("agent stopped")
        return 0


def _networks(values: tuple[str, ...]) -> list[str]:
    try:
        return [str(n) for n in parse_networks(list(values))]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _node_name(value: str) -> str:
    if not NODE_NAME.fullmatch(value):
        raise click.BadParameter(
            f"{value!r}: use 1-63 letters, digits, '.', '-' or '_', starting with a letter or digit"
        )
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@options.redis_url
@click.option(
    "--name",
    envvar="FFRTMP_NODE_NAME",
    default=socket.gethostname,
    show_default="host name",
    callback=lambda _c, _p, v: _node_name(v),
    help="The node's name: letters, digits, '.', '-' and '_' (it is part of every lease token).",
)
@click.option("--slots", envvar="FFRTMP_SLOTS", type=click.IntRange(1, 256), default=2, show_default=True)
@click.option(
    "--live-slots",
    envvar="FFRTMP_LIVE_SLOTS",
    type=click.IntRange(0, 256),
    default=None,
    help="Slots that take live.* work only [default: 1 when --slots > 1, else 0]",
)
@click.option(
    "--planner-slots",
    envvar="FFRTMP_PLANNER_SLOTS",
    type=click.IntRange(0, 16),
    default=1,
    show_default=True,
    help="Slots that plan and join segmented jobs (they wait on their segments, encoding nothing "
    "meanwhile, so they are not transcoding slots). 0: this agent takes none.",
)
@click.option("--metrics-host", envvar="FFRTMP_METRICS_HOST", default="0.0.0.0", show_default=True)
@click.option(
    "--metrics-port",
    envvar="FFRTMP_METRICS_PORT",
    type=click.IntRange(0, 65535),
    default=9091,
    show_default=True,
)
@click.option(
    "--metrics-api-keys-file",
    envvar="FFRTMP_METRICS_API_KEYS_FILE",
    type=click.Path(dir_okay=False),
    help="Keys as for the coordinator (ffrtmp keys new): /metrics and /violations then need one "
    "(Authorization: Bearer, any role). /health and /ready stay open for probes.",
)
@options.heartbeat_interval()
@click.option(
    "--drain-timeout", envvar="FFRTMP_DRAIN_TIMEOUT", type=DURATION, default="1h", show_default=True
)
@options.roots(
    "Directory inputs may come from (repeatable)",
    "Directory outputs go to (repeatable; first is default)",
    click.Path(file_okay=False),
)
@click.option(
    "--work-dir",
    envvar="FFRTMP_WORK_DIR",
    default="/var/lib/ffrtmp/agent",
    show_default=True,
    type=click.Path(file_okay=False),
)
@click.option(
    "--stall-after",
    envvar="FFRTMP_STALL_AFTER",
    type=DURATION,
    default="120s",
    show_default=True,
    help="A run whose progress has not moved for this long is stopped and retried (input_stalled); "
    "0 never stops one.",
)
@click.option(
    "--encoder-recheck",
    envvar="FFRTMP_ENCODER_RECHECK",
    type=DURATION,
    default="10m",
    show_default=True,
    help="How often hardware encoders that passed at start are tested again.",
)
@click.option(
    "--min-free-space",
    envvar="FFRTMP_MIN_FREE_SPACE",
    type=click.IntRange(0),
    default=256,
    show_default=True,
    help="MiB that must stay free on the work dir and every output root, or no job is taken.",
)
@click.option(
    "--allow-url-network",
    "allow_url_networks",
    envvar="FFRTMP_ALLOW_URL_NETWORKS",
    multiple=True,
    callback=lambda _c, _p, v: _networks(v),
    help="CIDR inside the network that URL inputs may reach (repeatable; default: none, only public "
    "addresses). The env twin takes them space-separated.",
)
@click.option("--ffmpeg", envvar="FFRTMP_FFMPEG", default="ffmpeg", show_default=True)
@click.option("--ffprobe", envvar="FFRTMP_FFPROBE", default="ffprobe", show_default=True)
@options.logging("agent")
def main(**kw: Any) -> None:
    """Run an ffrtmp agent on this host."""
    setup_logging("agent", kw["log_level"], kw["log_dir"])
    if kw["live_slots"] is None:
        kw["live_slots"] = 1 if kw["slots"] > 1 else 0
    if kw["live_slots"] > kw["slots"]:
        raise click.BadParameter("cannot exceed --slots", param_hint="--live-slots")
    work = os.path.abspath(kw["work_dir"])
    # Configured roots may be mounts: never create them (a missing mount must show, not be hidden
    # by an empty directory). The defaults under the work dir are ours to create.
    for key, default in (("input_roots", "inputs"), ("output_roots", "outputs")):
        if kw[key]:
            kw[key] = [os.path.abspath(p) for p in kw[key]]
        else:
            kw[key] = [os.path.join(work, default)]
            os.makedirs(kw[key][0], exist_ok=True)
    kw["work_dir"] = work
    kw["min_free_space"] = kw["min_free_space"] * 1024 * 1024
    cfg = AgentConfig(**kw)
    agent = Agent(cfg)
    if cfg.metrics_api_keys_file:
        try:
            agent.metrics_keys = KeyRing(read_key_file(cfg.metrics_api_keys_file))
        except KeyFileError as exc:
            raise click.BadParameter(str(exc), param_hint="--metrics-api-keys-file") from None
    sys.exit(asyncio.run(agent.run()))


if __name__ == "__main__":
    main()
