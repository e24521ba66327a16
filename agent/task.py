"""The one allow-listed job function. It runs in the RQ work horse, starts the attempt's
detached supervisor (``agent.runner``), watches its run directory and mirrors progress, logs
and the outcome into Redis.

Failure classes (DESIGN §4):
- ``WorkloadError`` (FFmpeg exited non-zero, bad input, invalid output, canceled, timed out,
  rejected): terminal. The worker's exception handler zeroes RQ's retries.
- ``PlatformError`` (no working encoder here, root not mounted, FFmpeg could not start): RQ's
  Retry requeues the job up to ``max_attempts``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC
from typing import Any

import psutil
import redis
from pydantic import ValidationError
from rq import get_current_job
from rq.utils import now as rq_now

from ffrtmp import stats
from ffrtmp.jobs import PENDING, cancel_key, history_entry, history_key, lease_key, logs_key, utcnow_iso
from ffrtmp.model import JobSpec, is_url
from ffrtmp.redisconn import transport_retry

from .context import load_context
from .limits import apply_limits, systemd_run_path
from .pipeline import AgentContext, Plan, PlanError, build_plan
from .runner import read_json, reap, remove_path, spawn_detached, touch_owner, with_percent
from .verify import VerifyError, media_duration, verify_output

log = logging.getLogger("ffrtmp.agent.task")

POLL_S = 0.2
PROGRESS_SAVE_S = 1.0
CANCEL_POLL_S = 0.5
START_DEADLINE_S = 30.0
LOG_TAIL_BYTES = 16 * 1024


def orphan_deadline(heartbeat_interval: float) -> float:
    """A run nobody watches for this long stops itself: the heartbeat timeout (3 intervals), so
    an agent restarted within the heartbeat timeout still finds its runs alive and adopts them."""
    return max(3.0 * heartbeat_interval, 4.0)


def renewal_interval(heartbeat_interval: float) -> int:
    """How often workers renew a running job's RQ execution (whole seconds, RQ's unit)."""
    return int(min(2.0, max(1.0, heartbeat_interval / 2)))


def execution_ttl(heartbeat_interval: float) -> int:
    """How long an attempt's RQ execution lives without renewal before recovery may requeue the
    job: the orphan deadline plus one renewal interval plus the run's 3 s stop. Even if the last
    renewal came a whole renewal interval before the horse died, the execution expires only
    after the orphaned run has stopped: a run never overlaps its retry. At the default 30 s
    interval: 95 s, so a dead node's job is requeued within 95 s plus one recovery tick."""
    return int(orphan_deadline(heartbeat_interval) + renewal_interval(heartbeat_interval) + 3)


class TerminalJobError(Exception):
    """Ends the job for good: never retried automatically."""

    def __init__(self, outcome: str, reason: str, message: str) -> None:
        super().__init__(f"{outcome}: {reason}: {message}")
        self.outcome = outcome
        self.reason = reason


class Fenced(Exception):
    """This attempt is no longer the job's current one: it must not write anything."""


class PlatformError(Exception):
    """This node could not run the job; RQ may retry it elsewhere."""


def _last_state(conn: Any, job_id: str) -> str | None:
    raw = conn.lindex(history_key(job_id), -1)
    return json.loads(raw)["to"] if raw else None


def _tail(path: str, nbytes: int = LOG_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - nbytes))
            data = fh.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", "replace")
    return text if size <= nbytes else text.split("\n", 1)[-1]


def _remove(path: str | None) -> None:
    if path:
        remove_path(path)


def _remove_stale_parts(plan: Plan, job_id: str, attempt: int) -> None:
    """Temporary outputs of this job's earlier attempts are dead by construction (a run stops
    itself before its job is requeued): remove them so none is ever left behind."""
    if not plan.tmp_output:
        return
    d = os.path.dirname(plan.tmp_output)
    mine = os.path.basename(plan.tmp_output)
    marker = f".{job_id}-a"
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(d):
            if name != mine and marker in name and ".part" in name:
                _remove(os.path.join(d, name))


def _publish(final: str, tmp: str) -> None:
    """Move a verified output into place. Files are replaced atomically; an HLS directory that
    already exists is moved aside first and removed after the swap."""
    if os.path.isdir(tmp):
        old = None
        if os.path.exists(final):
            old = f"{final}.old-{os.getpid()}-{int(time.time())}"
            os.rename(final, old)
        os.rename(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)


class Attempt:
    """One attempt of a job: started by a horse (``run``), or taken over from a horse that died
    by a restarted agent (``adopted=True``, then ``resume``)."""

    def __init__(
        self, job: Any, spec_dict: dict[str, Any], ctx: AgentContext | None = None, adopted: bool = False
    ) -> None:
        self.job = job
        self.conn = job.connection
        self.spec_dict = spec_dict
        self.ctx = ctx or load_context()
        meta = job.meta
        self.adopted = adopted
        if adopted:
            self.slot = meta.get("slot") or ""
            self.attempt = int(meta.get("attempt", 1))
        else:
            self.slot = os.environ.get("FFRTMP_SLOT_NAME", "")
            self.attempt = int(meta.get("attempt", 0)) + 1
        self.timeout = float(meta.get("timeout") or 6 * 3600)
        self.grace = float(meta.get("cancel_grace") or 30)
        self.run_dir = os.path.join(self.ctx.work_dir, "runs", job.id, str(self.attempt))
        self.tier = spec_dict.get("queue", "default")
        self.priority = spec_dict.get("priority", "medium")
        self.t_start = time.time()
        self.input_bytes = 0
        self.token = f"{self.ctx.node}/{self.slot}/{self.attempt}"
        self.redis_lost_at: float | None = None
        self.log = logging.LoggerAdapter(log, {"job": job.id, "attempt": self.attempt, "node": self.ctx.node})

    # --- bookkeeping -------------------------------------------------------------------
    def _history(
        self, to: str, reason: str, ttl: int | None = None, extra: Callable[[Any], None] | None = None
    ) -> None:
        frm = _last_state(self.conn, self.job.id)
        with self.conn.pipeline() as pipe:
            pipe.rpush(history_key(self.job.id), history_entry(frm, to, reason, self.ctx.node, self.attempt))
            if ttl:
                pipe.expire(history_key(self.job.id), ttl)
                pipe.expire(logs_key(self.job.id), ttl)
            if extra:
                extra(pipe)
            pipe.execute()

    def _save_logs(self) -> None:
        text = _tail(os.path.join(self.run_dir, "stderr.log"))
        transport_retry()(self.conn.hset)(logs_key(self.job.id), str(self.attempt), text)

    def start(self, plan: Plan | None) -> bool:
        """Record the attempt as running in one round trip: meta, the attempt's fencing lease,
        the history line; and read the cancel signal. Returns True if a cancel is pending."""
        meta = self.job.meta
        meta.update(
            attempt=self.attempt,
            node=self.ctx.node,
            slot=self.slot,
            started_at=utcnow_iso(),
            ended_at=None,
            progress=None,
            error=None,
            outcome=None,
            result=None,
            run_dir=self.run_dir,
            output=plan.final_output if plan else None,
            encoder=plan.encoder if plan else None,
        )
        entry = history_entry("queued", "running", "started", self.ctx.node, self.attempt)
        enqueued = self.job.enqueued_at
        wait = max(0.0, self.t_start - enqueued.replace(tzinfo=UTC).timestamp()) if enqueued else 0.0
        with self.conn.pipeline() as pipe:
            stats.observe(pipe, "queue_wait", self.tier, wait)
            if wait > stats.SLA_WAIT_S.get(self.tier, float("inf")):
                stats.record_violation(
                    pipe,
                    self.ctx.node,
                    self.job.id,
                    self.tier,
                    "queue_wait",
                    f"waited {wait:.1f}s (target {stats.SLA_WAIT_S[self.tier]:g}s)",
                    wait,
                )
            pipe.hset(self.job.key, "meta", self.job.serializer.dumps(meta))
            # Fencing token for this attempt; recovery and late writers compare against it.
            pipe.set(
                lease_key(self.job.id),
                self.token,
                ex=int(self.timeout + self.grace + 3600),
            )
            pipe.rpush(history_key(self.job.id), entry)
            pipe.zrem(PENDING, self.job.id)
            pipe.exists(cancel_key(self.job.id))
            canceled = pipe.execute()[-1]
        self.log.info(
            "attempt started",
            extra={"queue_wait_s": round(wait, 3), "encoder": plan.encoder if plan else None},
        )
        return bool(canceled)

    def _fenced_write(self, write: Callable[[Any], None]) -> None:
        """Run ``write(pipe)`` in a transaction that only commits while this attempt holds the
        job's lease: a late writer from an attempt that was given up on changes nothing."""
        from redis.exceptions import WatchError

        with self.conn.pipeline() as pipe:
            try:
                pipe.watch(lease_key(self.job.id))
                lease = pipe.get(lease_key(self.job.id))
                if lease is None or lease.decode() != self.token:
                    raise Fenced(f"lease is {lease.decode() if lease else 'gone'} at the end of {self.token}")
                pipe.multi()
                write(pipe)
                pipe.execute()
            except WatchError:
                raise Fenced(f"lease changed while {self.token} was reporting") from None

    def end(
        self,
        outcome: str,
        reason: str,
        message: str,
        *,
        exit_code: int | None = None,
        stderr_tail: str | None = None,
    ) -> None:
        meta = self.job.meta
        meta["outcome"] = outcome
        meta["ended_at"] = utcnow_iso()
        if outcome != "completed":
            meta["error"] = {
                "reason": reason,
                "message": message,
                "exit_code": exit_code,
                "stderr_tail": stderr_tail,
            }
        ttl = self.job.result_ttl if outcome == "completed" else self.job.failure_ttl
        run_s = time.time() - self.t_start
        result = meta.get("result") or {}

        def add_stats(pipe: Any) -> None:
            stats.record_finished(pipe, self.tier, self.priority, outcome, reason)
            stats.observe(pipe, "run", self.tier, run_s)
            if result.get("size_bytes"):
                pipe.hincrby(stats.node_stats_key(self.ctx.node), "bytes_out", int(result["size_bytes"]))
            if self.input_bytes:
                pipe.hincrby(stats.node_stats_key(self.ctx.node), "bytes_in", self.input_bytes)
            if meta.get("stop"):
                pipe.hincrby(stats.CANCELS, "forced" if "forced" in meta["stop"] else "graceful", 1)

        def write(pipe: Any) -> None:
            frm = _last_state(self.conn, self.job.id)
            pipe.hset(self.job.key, "meta", self.job.serializer.dumps(meta))
            pipe.rpush(
                history_key(self.job.id), history_entry(frm, outcome, reason, self.ctx.node, self.attempt)
            )
            if ttl and ttl > 0:
                pipe.expire(history_key(self.job.id), ttl)
                pipe.expire(logs_key(self.job.id), ttl)
            pipe.delete(lease_key(self.job.id))
            add_stats(pipe)

        # the outcome must not be lost to a Redis blip: retry it (1 s, 2 s, 4 s)
        transport_retry()(self._fenced_write)(write)
        self.log.info(
            "attempt ended: %s (%s)",
            outcome,
            reason,
            extra={"outcome": outcome, "reason": reason, "run_s": round(run_s, 3)},
        )

    # --- the run ----------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        try:
            spec = JobSpec.model_validate(self.spec_dict)
        except ValidationError as exc:
            self.start(None)
            self.end("rejected", "invalid_spec", str(exc).splitlines()[0])
            raise TerminalJobError("rejected", "invalid_spec", str(exc)) from None
        try:
            plan = build_plan(spec, self.job.id, self.attempt, self.ctx)
            plan.argv = apply_limits(
                plan.argv,
                self.job.id,
                self.attempt,
                spec.max_cpu_percent,
                spec.max_memory_mb,
                systemd_run_path(),
            )
        except PlanError as exc:
            self.start(None)
            if exc.platform:
                self._platform_failure(exc.reason, exc.message)
            outcome = "failed" if exc.reason == "input_not_found" else "rejected"
            self.end(outcome, exc.reason, exc.message)
            raise TerminalJobError(outcome, exc.reason, exc.message) from None
        if self.start(plan):
            self.end("canceled", "canceled", "canceled before FFmpeg started")
            raise TerminalJobError("canceled", "canceled", "canceled before start")
        _remove_stale_parts(plan, self.job.id, self.attempt)
        self.runner_pid = spawn_detached(
            self.run_dir,
            plan.argv,
            orphan_after=orphan_deadline(self.ctx.heartbeat_interval),
            tmp_output=plan.tmp_output,
        )
        if spec.input and not is_url(spec.input):
            with contextlib.suppress(OSError):
                self.input_bytes = os.path.getsize(plan.input_desc)
        if plan.duration is None and spec.input and not is_url(spec.input):
            # for percent and ETA; probed after FFmpeg started, so it adds no dispatch latency
            plan.duration = media_duration(plan.input_desc, self.ctx.ffprobe)
        return self._watch(plan)

    def _platform_failure(self, reason: str, message: str) -> None:
        retrying = bool(self.job.retries_left and self.job.retries_left > 0)
        if retrying:
            self.job.meta["error"] = {
                "reason": reason,
                "message": message,
                "exit_code": None,
                "stderr_tail": None,
            }
            self.job.save_meta()

            def add_stats(pipe: Any) -> None:
                pipe.rpush(
                    history_key(self.job.id),
                    history_entry("retrying", "queued", "requeued", None, self.attempt),
                )
                pipe.hincrby(stats.REQUEUES, reason, 1)
                pipe.zadd(PENDING, {self.job.id: time.time()})
                stats.record_violation(
                    pipe, self.ctx.node, self.job.id, self.tier, "platform_failure", f"{reason}: {message}"
                )

            self._history("retrying", reason, None, add_stats)
            self.log.warning("platform failure, requeued: %s: %s", reason, message)
            raise PlatformError(f"{reason}: {message}")
        with self.conn.pipeline() as pipe:
            stats.record_violation(
                pipe,
                self.ctx.node,
                self.job.id,
                self.tier,
                "platform_failure",
                f"{reason}: {message} (no attempts left)",
            )
            pipe.execute()
        self.end("failed", reason, message)
        raise TerminalJobError("failed", reason, message)

    def _check_lease(self, plan: Plan) -> bool:
        """One round trip: is a cancel pending, and is this attempt still the job's current one?
        A voided lease (recovery gave up on this attempt and requeued the job) or Redis out of
        reach for longer than the orphan deadline means another attempt may run now: stop FFmpeg
        and leave without writing anything (``Fenced``)."""
        try:
            with self.conn.pipeline(transaction=False) as pipe:
                pipe.exists(cancel_key(self.job.id))
                pipe.get(lease_key(self.job.id))
                canceled, lease = pipe.execute()
            self.redis_lost_at = None
        except (redis.RedisError, OSError) as exc:
            self.redis_lost_at = self.redis_lost_at or time.monotonic()
            if time.monotonic() - self.redis_lost_at > orphan_deadline(self.ctx.heartbeat_interval):
                self._give_up(plan, f"Redis unreachable for too long ({exc})")
            return False
        if lease is None or lease.decode() != self.token:
            self._give_up(plan, f"lease is now {lease.decode() if lease else 'gone'}, not {self.token}")
        return bool(canceled)

    def _give_up(self, plan: Plan, why: str) -> None:
        self.log.warning("attempt fenced: %s; stopping FFmpeg without reporting", why)
        self._signal_ffmpeg(signal.SIGTERM)
        deadline = time.monotonic() + 3
        while read_json(os.path.join(self.run_dir, "exit.json")) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        self._signal_ffmpeg(signal.SIGKILL)
        _remove(plan.tmp_output)
        raise Fenced(why)

    def _signal_ffmpeg(self, sig: int) -> None:
        started = read_json(os.path.join(self.run_dir, "started.json"))
        if not started or read_json(os.path.join(self.run_dir, "exit.json")):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(started["ffmpeg_pid"]), sig)

    def _runner_gone(self) -> bool:
        if not self.adopted:
            return reap(self.runner_pid)  # our child: reap it
        try:
            return psutil.Process(self.runner_pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    def _rq_heartbeat(self) -> None:
        """What the dead worker did for its execution: keep RQ from declaring it abandoned."""
        ttl = execution_ttl(self.ctx.heartbeat_interval)
        with contextlib.suppress(redis.RedisError, OSError), self.conn.pipeline() as pipe:
            for execution in self.job.get_executions():
                execution.heartbeat(self.job.started_job_registry, ttl, pipeline=pipe)
            self.job.heartbeat(rq_now(), ttl, pipeline=pipe, xx=True)
            pipe.execute()

    def resume(self, runner_pid: int, started_wall: float) -> dict[str, Any]:
        """Watch a run a dead horse started, to its end, as that horse would have."""
        spec = JobSpec.model_validate(self.spec_dict)
        plan = build_plan(spec, self.job.id, self.attempt, self.ctx)  # the same paths as when it started
        self.runner_pid = runner_pid
        self.t_start = started_wall
        if plan.duration is None and spec.input and not is_url(spec.input):
            plan.duration = media_duration(plan.input_desc, self.ctx.ffprobe)
        self.log.info("attempt adopted after an agent restart")
        return self._watch(plan)

    def _watch(self, plan: Plan) -> dict[str, Any]:
        t0 = time.monotonic()
        stop_reason: str | None = None
        kill_at = 0.0
        forced = False
        last_progress_mtime = 0.0
        last_save = 0.0
        last_cancel_poll = 0.0
        progress_path = os.path.join(self.run_dir, "progress.json")
        exit_path = os.path.join(self.run_dir, "exit.json")
        started_seen = False
        last_touch = 0.0
        last_rq_heartbeat = 0.0
        if self.adopted:  # the attempt began before this process: keep its clock for the timeout
            t0 -= max(0.0, time.time() - self.t_start)
        while True:
            now_wall = time.time()
            exit_info = read_json(exit_path)
            if exit_info is not None:
                break
            if now_wall - last_touch >= 1.0:
                touch_owner(self.run_dir)
                last_touch = now_wall
            if self.adopted and now_wall - last_rq_heartbeat >= self.ctx.heartbeat_interval:
                last_rq_heartbeat = now_wall
                self._rq_heartbeat()
            if self._runner_gone():
                exit_info = read_json(exit_path)  # it may have written the file just before exiting
                if exit_info is not None:
                    break
                self._platform_failure("runner_died", "the run supervisor died without an exit status")
            now = time.monotonic()
            if not started_seen:
                started_seen = os.path.exists(os.path.join(self.run_dir, "started.json"))
                if not started_seen and now - t0 > START_DEADLINE_S:
                    self._platform_failure("runner_not_started", "the run supervisor did not start FFmpeg")
            try:
                mtime = os.stat(progress_path).st_mtime
            except FileNotFoundError:
                mtime = 0.0
            if mtime != last_progress_mtime and now - last_save >= PROGRESS_SAVE_S:
                prog = read_json(progress_path)
                if prog is not None:
                    self.job.meta["progress"] = with_percent(prog, plan.duration)
                    with contextlib.suppress(redis.RedisError, OSError):  # a blip: try again next time
                        self.job.save_meta()
                    last_progress_mtime, last_save = mtime, now
            if now - last_cancel_poll >= CANCEL_POLL_S:
                last_cancel_poll = now
                canceled = self._check_lease(plan)
                if stop_reason is None and canceled:
                    stop_reason = "canceled"
                elif stop_reason is None and now - t0 > self.timeout:
                    stop_reason = "timed_out"
                if stop_reason:
                    self.log.info("%s: sending SIGTERM to FFmpeg", stop_reason)
                    self._signal_ffmpeg(signal.SIGTERM)
                    kill_at = now + self.grace
            if stop_reason and not forced and now >= kill_at:
                self.log.warning("FFmpeg outlived the %ss grace, sending SIGKILL", self.grace)
                self._signal_ffmpeg(signal.SIGKILL)
                forced = True
            time.sleep(POLL_S)
        deadline = time.monotonic() + 5
        while not self._runner_gone() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._finish(plan, exit_info, stop_reason, forced)

    def _finish(
        self, plan: Plan, exit_info: dict[str, Any], stop_reason: str | None, forced: bool
    ) -> dict[str, Any]:
        self._save_logs()
        rc = int(exit_info.get("returncode", 1))
        tail_text = _tail(os.path.join(self.run_dir, "stderr.tail"), 4096)
        prog = read_json(os.path.join(self.run_dir, "progress.json"))
        if prog is not None:
            self.job.meta["progress"] = with_percent(prog, plan.duration)
        if stop_reason:
            _remove(plan.tmp_output)
            how = "forced (SIGKILL after grace)" if forced else "graceful (SIGTERM)"
            self.job.meta["stop"] = how
            msg = (
                "canceled by request"
                if stop_reason == "canceled"
                else f"ran past its {self.timeout:g}s timeout"
            )
            self.end(stop_reason, stop_reason, f"{msg}; stop was {how}", exit_code=rc, stderr_tail=tail_text)
            raise TerminalJobError(stop_reason, stop_reason, msg)
        if exit_info.get("runner_error"):
            _remove(plan.tmp_output)
            self._platform_failure("ffmpeg_not_started", str(exit_info["runner_error"]))
        if exit_info.get("orphaned"):
            # the run stopped itself because this attempt stopped watching it (a stall longer
            # than the orphan deadline): a platform failure, never the workload's fault
            _remove(plan.tmp_output)
            self._platform_failure("lost_ownership", "the run stopped itself: its watcher stalled too long")
        if rc != 0:
            _remove(plan.tmp_output)
            first = next((ln for ln in tail_text.splitlines() if ln.strip()), "")
            msg = f"FFmpeg exited with code {rc}" + (f": {tail_text.splitlines()[-1]}" if first else "")
            self.end("failed", "ffmpeg_error", msg, exit_code=rc, stderr_tail=tail_text)
            raise TerminalJobError("failed", "ffmpeg_error", msg)
        result: dict[str, Any] = {"output": plan.final_output, "encoder": plan.encoder}
        if plan.tmp_output is not None:
            try:
                result.update(verify_output(plan, self.ctx.ffprobe))
            except VerifyError as exc:
                _remove(plan.tmp_output)
                self.end("failed", "output_invalid", str(exc), exit_code=rc, stderr_tail=tail_text)
                raise TerminalJobError("failed", "output_invalid", str(exc)) from None
            self._check_lease(plan)  # a fenced attempt never replaces a good output
            _publish(plan.final_output, plan.tmp_output)
        self.job.meta["result"] = result
        self.end("completed", "ffmpeg_exit_0", "completed")
        return result


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_job must run inside an RQ worker")
    try:
        return Attempt(job, spec).run()
    except Fenced:
        # Another attempt owns the job now: leave without a word, so that RQ's worker records
        # nothing for this one either (a horse that exits 0 is not reported by its worker).
        logging.shutdown()
        os._exit(0)
