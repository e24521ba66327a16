"""One attempt of a job: started by a horse (``run``), or taken over from a horse that died by
a restarted agent (``resume``). It starts the run supervisor, watches the run directory, and
reports every change through ``ffrtmp.lifecycle`` under its lease; it writes no job key itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import redis
from pydantic import ValidationError
from rq.executions import Execution

from ffrtmp import lifecycle, timing
from ffrtmp.lifecycle import Ending, Lease, Refused
from ffrtmp.model import JobSpec, is_url
from ffrtmp.redisconn import redis_retry, until_redis_answers
from ffrtmp.rundir import RunDir, process_alive, remove_path, used_bytes, write_json_atomic

from . import cgroups, disk
from .limits import enforcers, limited_argv, run_cgroup
from .outcome import Verdict, classify_exit, input_signature
from .pipeline import AgentContext, Plan, PlanError, Segment, build_plan, needs_egress_proxy
from .publish import OutputExists, publish, taken
from .runner import reap, with_percent
from .standby import launch
from .urlpolicy import check_url_input
from .verify import VerifyError, media_duration, verify_output

log = logging.getLogger("ffrtmp.agent.attempt")


class Fenced(Exception):
    """This attempt no longer holds its job's lease: it must not write anything."""


class LeftToRecovery(Fenced):
    """The run could not be proven stopped: the attempt writes nothing more; the run's own
    watchdog kills FFmpeg once nobody watches it, and recovery requeues the job after that."""


class RedisLost(Exception):
    """Redis stayed out of reach past the orphan deadline: FFmpeg was stopped."""


@dataclass
class WatchState:
    """What the watch loop tracks between two looks at the run directory."""

    t0: float
    stop_reason: str | None = None
    kill_at: float = 0.0
    forced: bool = False
    progress_mtime: float = 0.0
    last_save: float = 0.0
    last_lease_poll: float = 0.0
    last_touch: float = 0.0
    last_renewal: float = 0.0
    started_seen: bool = False
    held_at: float = 0.0  # wall clock of the last look that found the lease still ours
    progress_mark: Any = None  # what FFmpeg's progress said last (frame, out_time)
    stall_mtime: float = -1.0  # the progress file's mtime when progress_mark was read
    stall_look: float = 0.0  # monotonic: the last stall check (a long gap: this watcher froze)
    output_mtime: float = 0.0  # the temporary output's mtime at that check
    moved_at: float = 0.0  # monotonic: when it last changed (or the watch began)


def remove_stale_parts(plan: Plan, job_id: str, attempt: int) -> None:
    """Temporary outputs of this job's earlier attempts are dead by construction (a run is
    killed before its job is requeued): remove them so none is ever left behind. Only lower
    attempt numbers: an attempt that woke up late never touches a newer one's output."""
    if not plan.tmp_output:
        return
    d = os.path.dirname(plan.tmp_output)
    pattern = re.compile(rf"\.{re.escape(job_id)}-a(\d+)\.part")
    with contextlib.suppress(OSError):
        for name in os.listdir(d):
            m = pattern.search(name)
            if m and int(m.group(1)) < attempt:
                remove_path(os.path.join(d, name))


class Attempt:
    def __init__(
        self,
        job: Any,
        lease: Lease,
        spec_dict: dict[str, Any],
        ctx: AgentContext,
        segment: Segment | None = None,
    ) -> None:
        self.job = job
        self.segment = segment  # what this attempt encodes when its job is a segment of another
        self.conn: redis.Redis = job.connection
        self.lease = lease
        self.spec_dict = spec_dict
        self.ctx = ctx
        meta = job.meta or {}
        self.timeout = float(meta.get("timeout") or 6 * 3600)
        self.grace = float(meta.get("cancel_grace") or 30)
        self.tier = spec_dict.get("queue", "default")
        self.t_start = time.time()
        self.t_launch = self.t_start  # when the run was handed to its supervisor
        self.rd: RunDir | None = None
        self.runner_pid = 0
        self.own_runner = False  # started by this process (reaped here), not by a standby
        self._pidfd: int | None = None  # the supervisor's, while the run is watched
        self.adopted = False
        self.input_sig: tuple[int, int, int] | None = None
        self.input_bytes = 0
        self.expected_s: float | None = None
        self.cgroup_dirs: list[str] = []  # the run's own cgroup, where its limits are enforced
        self._cgroup_layout: cgroups.Layout | None = None
        self.log = logging.LoggerAdapter(log, {"job": job.id, "attempt": lease.attempt, "node": lease.node})

    # --- reporting ------------------------------------------------------------------------
    def _report(self, fn: Any, *args: Any) -> Any:
        """A lifecycle write that must not be lost: retried until Redis answers again (within
        the lease's lifetime). ``Refused`` means fenced."""
        try:
            return until_redis_answers(self._patience())(fn)(self.conn, self.lease, *args)
        except Refused as exc:
            raise Fenced(str(exc)) from None

    def _patience(self) -> float:
        """How long a write that must not be lost is retried through a Redis outage: the
        lease's lifetime (a finished encode is not thrown away for an outage)."""
        return float(timing.lease_ttl(self.timeout, self.grace))

    def _end(self, end: Ending) -> None:
        end.run_s = time.time() - self.t_start
        end.bytes_in = self.input_bytes
        self._save_logs()
        self._report(lifecycle.finish, end)
        self.log.info(
            "attempt ended: %s (%s)",
            end.outcome,
            end.reason,
            extra={"outcome": end.outcome, "reason": end.reason, "run_s": round(end.run_s, 3)},
        )

    def _platform(self, reason: str, message: str) -> None:
        self._save_logs()
        self._report(lifecycle.platform_failure, reason, message)

    def _save_logs(self) -> None:
        if self.rd is None:
            return
        text = self.rd.stderr_log(timing.LOG_TAIL_BYTES)
        with contextlib.suppress(redis.RedisError, OSError):
            redis_retry()(lifecycle.save_logs)(self.conn, self.lease, text)

    def abort(self) -> bool:
        """Something went wrong inside the agent: kill what this attempt started and wait until
        it is gone. True once proven (then a retry may run)."""
        return self.rd is None or self.rd.kill_run(timing.STOP_WAIT_S)

    # --- the run --------------------------------------------------------------------------
    def _valid_spec(self) -> JobSpec | None:
        """The job's spec, or None once the job ended rejected for it (untrusted data)."""
        try:
            return JobSpec.model_validate(self.spec_dict)
        except ValidationError as exc:
            self._end(Ending("rejected", "invalid_spec", str(exc).splitlines()[0]))
            return None

    def _refused(self, exc: PlanError) -> None:
        """The job cannot run as asked: a platform failure (this node's fault) or its end."""
        if exc.platform:
            self._platform(exc.reason, exc.message)
        else:
            outcome = "failed" if exc.reason in ("input_not_found", "input_unreadable") else "rejected"
            self._end(Ending(outcome, exc.reason, exc.message))

    def run(self) -> None:
        spec = self._valid_spec()
        if spec is None:
            return
        try:
            if spec.input and is_url(spec.input):
                check_url_input(spec.input, self.ctx.allow_url_networks)
            plan = build_plan(spec, self.job.id, self.lease.attempt, self.ctx, self.segment)
            if plan.tmp_output and not spec.overwrite and taken(plan.final_output, self.job.id):
                raise PlanError("output_exists", f"{plan.final_output} exists (overwrite: true replaces it)")
            self._limit(spec, plan)
        except PlanError as exc:
            self._refused(exc)
            return
        self._new_run_dir()
        if self._start(plan):
            self._end(Ending("canceled", "canceled", "canceled before FFmpeg started"))
            return
        self._launch(spec, plan)

    def _limit(self, spec: JobSpec, plan: Plan) -> None:
        """The job's CPU and memory limits around FFmpeg (PlanError where unenforceable)."""
        if spec.max_cpu_percent is None and spec.max_memory_mb is None:
            return
        run = f"{self.job.id}-{self.lease.attempt}"
        cpu, mem = spec.max_cpu_percent, spec.max_memory_mb
        plan.argv, self._cgroup_layout = limited_argv(plan.argv, run, cpu, mem, enforcers())

    def _make_cgroup(self, spec: JobSpec) -> bool:
        """The run's own cgroup where its limits need one; False once the attempt ended."""
        if self._cgroup_layout is None:
            return True
        run = (self.ctx.node, self.job.id, self.lease.attempt)
        try:
            self.cgroup_dirs = run_cgroup(self._cgroup_layout, run, spec.max_cpu_percent, spec.max_memory_mb)
        except PlanError as exc:
            self._refused(exc)
            return False
        return True

    def _new_run_dir(self) -> None:
        self.rd = RunDir.create(
            self.ctx.work_dir, self.job.id, self.lease.attempt, self.lease.execution, self.lease.token
        )

    def _launch(self, spec: JobSpec, plan: Plan) -> None:
        """Start FFmpeg under its run supervisor and watch the run to its end."""
        assert self.rd is not None
        remove_stale_parts(plan, self.job.id, self.lease.attempt)  # an earlier attempt's leftovers
        self._note_input(spec, plan)
        if not self._make_cgroup(spec):
            return
        self.t_launch = time.time()
        self.runner_pid, self.own_runner = launch(
            self.rd.path,
            plan.argv,
            orphan_after=timing.orphan_deadline(self.ctx.heartbeat_interval),
            tmp_output=plan.tmp_output,
            egress=self.ctx.allow_url_networks if needs_egress_proxy(spec.input) else None,
            cgroup_dirs=self.cgroup_dirs,
        )
        self._set_expected(spec, plan)
        self._conclude(plan)

    def resume(self, rd: RunDir) -> None:
        """Watch a run a dead horse started, to its end, as that horse would have."""
        spec = JobSpec.model_validate(self.spec_dict)
        plan = self._plan_again(spec)  # the same paths as then
        st = rd.started() or {}
        self.rd, self.adopted = rd, True
        self.runner_pid = int(st.get("runner_pid") or 0)
        self.t_start = float(st.get("time") or time.time())
        self.t_launch = time.time()  # a run adopted before FFmpeg started gets a whole deadline
        self._note_input(spec, plan)
        self._set_expected(spec, plan)
        self.log.info("attempt adopted after an agent restart")
        self._conclude(plan)

    def _plan_again(self, spec: JobSpec) -> Plan:
        return build_plan(spec, self.job.id, self.lease.attempt, self.ctx, self.segment)

    def _queue_wait(self) -> float:
        enqueued = self.job.enqueued_at
        return max(0.0, self.t_start - enqueued.replace(tzinfo=UTC).timestamp()) if enqueued else 0.0

    def _start(self, plan: Plan) -> bool:
        wait = self._queue_wait()
        fields = {
            "run_dir": self.rd.path if self.rd else None,
            "output": plan.final_output,
            "encoder": plan.encoder,
        }
        canceled = self._report(lifecycle.started, fields, self.tier, wait)
        self.log.info("attempt started", extra={"queue_wait_s": round(wait, 3), "encoder": plan.encoder})
        return bool(canceled)

    def _note_input(self, spec: JobSpec, plan: Plan) -> None:
        if spec.input and not is_url(spec.input):
            with contextlib.suppress(OSError):
                st = os.stat(plan.input_desc)
                self.input_sig, self.input_bytes = input_signature(st), int(st.st_size)

    def _set_expected(self, spec: JobSpec, plan: Plan) -> None:
        """The duration the output must have: the requested one, capped by the input's."""
        probed = None
        if spec.input and not is_url(spec.input):
            probed = media_duration(plan.input_desc, self.ctx.ffprobe)  # after FFmpeg started
        wanted = [d for d in (plan.duration, probed) if d]
        self.expected_s = min(wanted) if wanted else None
        if plan.duration is None:
            plan.duration = probed  # for percent and ETA

    # --- watching -------------------------------------------------------------------------
    def _nap(self, seconds: float) -> None:
        """Sleep until the next look at the run, or until its supervisor exits (a pidfd, so the
        end of a run is seen at once rather than on the next poll)."""
        if self._pidfd is None and self.runner_pid > 0:
            try:
                self._pidfd = os.pidfd_open(self.runner_pid)
            except OSError:  # gone already, or a kernel without pidfds: plain polling
                self._pidfd = -1
        if self._pidfd is None or self._pidfd < 0:
            time.sleep(seconds)
            return
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        poller.poll(seconds * 1000)

    def _runner_gone(self) -> bool:
        if self.own_runner:
            return reap(self.runner_pid)  # our child: reap it
        if self.adopted:
            return self.rd is None or not self.rd.runner_alive()
        return not process_alive(self.runner_pid, self.t_start)  # the slot's standby became it

    def _kill_run(self) -> None:
        """SIGKILL FFmpeg and wait (bounded) until it is gone. A run whose FFmpeg has not
        started yet never will: its launch is taken here, or, where its supervisor took it
        first (FFmpeg is starting), the supervisor's whole session is killed."""
        assert self.rd is not None
        if self.rd.started() is None and not self.rd.claim_launch("watcher"):
            self.rd.kill_run(timing.STOP_WAIT_S)
            return
        deadline = time.monotonic() + timing.STOP_WAIT_S
        while self.rd.ffmpeg_alive() and time.monotonic() < deadline:
            self.rd.signal_ffmpeg(signal.SIGKILL)
            time.sleep(0.05)

    def _record_supervisor_death(self) -> None:
        """The supervisor could not write how the run ended: write it for the run directory's
        readers, with the time FFmpeg was proven gone (never earlier than it really ended)."""
        assert self.rd is not None
        if self.rd.exit() is None:
            gone = not self.rd.ffmpeg_alive()
            write_json_atomic(
                self.rd.file("exit.json"),
                {
                    "returncode": None,
                    "signal": None,
                    "time": time.time(),
                    "supervisor_died": True,
                    "ffmpeg_gone": gone,
                },
            )
            if not gone:
                self.log.error("FFmpeg of a dead supervisor would not die: %s", self.rd.path)

    def _poll_lease(self, ws: WatchState) -> bool:
        """Is a cancel pending? Raises ``Fenced`` when the lease moved. A failed look changes
        nothing here: ``_check_contact`` decides when too long has passed without one."""
        try:
            held, canceled = lifecycle.holds(self.conn, self.lease)
        except (redis.RedisError, OSError):
            return False
        if not held:
            raise Fenced(f"the lease of attempt {self.lease.attempt} is gone")
        ws.held_at = time.time()
        return canceled

    def _check_contact(self, ws: WatchState) -> None:
        """Past the orphan deadline since the lease was last seen ours (Redis away, or this
        process frozen: the wall clock counts a freeze too), recovery may have given the job to
        another attempt: stop, and stop claiming the run (no more owner touches)."""
        if time.time() - ws.held_at <= timing.orphan_deadline(self.ctx.heartbeat_interval) - 1.0:
            return
        try:  # one last look: after a short freeze the lease may well still be ours
            held, _ = lifecycle.holds(self.conn, self.lease)
        except (redis.RedisError, OSError):
            raise RedisLost("the lease could not be confirmed within the orphan deadline") from None
        if not held:
            raise Fenced(f"the lease of attempt {self.lease.attempt} is gone")
        ws.held_at = time.time()

    def _renew_execution(self) -> None:
        """Keep the attempt's RQ execution alive (what the worker does too; for an adopted run
        the worker is dead)."""
        ttl = timing.execution_ttl(self.ctx.heartbeat_interval)
        ex = Execution(self.lease.execution, self.job.id, connection=self.conn)
        with contextlib.suppress(redis.RedisError, OSError), self.conn.pipeline() as pipe:
            ex.heartbeat(self.job.started_job_registry, ttl, pipeline=pipe)
            pipe.execute()

    def _mirror_progress(self, ws: WatchState, plan: Plan, now: float) -> None:
        assert self.rd is not None
        mtime = self.rd.progress_mtime()
        if mtime == ws.progress_mtime or now - ws.last_save < timing.PROGRESS_SAVE_S:
            return
        prog = self.rd.progress()
        if prog is None:
            return
        try:
            if not lifecycle.progress(self.conn, self.lease, with_percent(prog, plan.duration)):
                raise Fenced("progress refused: the lease moved")
        except (redis.RedisError, OSError):
            return  # a blip: next time
        ws.progress_mtime, ws.last_save = mtime, now

    def _step(self, ws: WatchState, plan: Plan) -> None:
        """One look at the run: ownership, progress, lease, cancel and timeout."""
        assert self.rd is not None
        now_wall, now = time.time(), time.monotonic()
        self._check_contact(ws)  # before touching the owner file: a woken horse claims nothing
        if now_wall - ws.last_touch >= 1.0:
            self.rd.touch_owner()
            ws.last_touch = now_wall
        if now_wall - ws.last_renewal >= timing.renewal_interval(self.ctx.heartbeat_interval):
            ws.last_renewal = now_wall  # the horse renews too: a stopped worker alone moves nothing
            self._renew_execution()
        if not ws.started_seen:
            ws.started_seen = self.rd.started() is not None
            waited = now_wall - self.t_launch
            if not ws.started_seen and waited > timing.START_DEADLINE_S:
                self._give_up_start(waited)
        self._mirror_progress(ws, plan, now)
        self._check_stall(ws, plan, now)
        if now - ws.last_lease_poll >= timing.LEASE_POLL_S:
            ws.last_lease_poll = now
            canceled = self._poll_lease(ws)
            if canceled and ws.stop_reason == "stalled":  # asked for: the end is the operator's
                ws.stop_reason = "canceled"
            if ws.stop_reason is None and (canceled or now - ws.t0 > self.timeout):
                ws.stop_reason = "canceled" if canceled else "timed_out"
                self.log.info("%s: sending SIGTERM to FFmpeg", ws.stop_reason)
                self.rd.signal_ffmpeg(signal.SIGTERM)
                ws.kill_at = now + self.grace
        if ws.stop_reason and not ws.forced and now >= ws.kill_at:
            self.log.warning("FFmpeg outlived the %ss grace, sending SIGKILL", self.grace)
            self.rd.signal_ffmpeg(signal.SIGKILL)
            ws.forced = True

    def _give_up_start(self, waited: float) -> None:
        """FFmpeg has not started in time: make sure it never will (the launch claimed here, or
        the run killed where its supervisor claimed it first but stays silent), then fail."""
        assert self.rd is not None
        if not self.rd.claim_launch("watcher"):
            if waited < 2 * timing.START_DEADLINE_S:
                return  # its supervisor is starting FFmpeg: a little longer
            if not self.rd.kill_run(timing.STOP_WAIT_S):
                raise LeftToRecovery("a supervisor that would not start FFmpeg could not be stopped")
        raise _Platform("runner_not_started", "the run supervisor did not start FFmpeg")

    def _check_stall(self, ws: WatchState, plan: Plan, now: float) -> None:
        """No progress for ``stall_after`` (an input that never arrives or stopped arriving, a
        mount that hangs): stop FFmpeg as a timeout would, and say so (``input_stalled``).
        Progress is FFmpeg's frame count and output time, or the output growing (the trailer's
        faststart rewrite reports nothing else); a watcher that was itself frozen (a long gap
        since its last look) starts counting again rather than blame FFmpeg for its own pause."""
        assert self.rd is not None
        if now - ws.stall_look > max(5.0, self.ctx.stall_after / 4):
            ws.moved_at = now
        ws.stall_look = now
        mtime = self.rd.progress_mtime()
        grown = _mtime(plan.tmp_output)
        if (mtime, grown) != (ws.stall_mtime, ws.output_mtime):
            ws.stall_mtime, ws.output_mtime = mtime, grown
            prog = self.rd.progress() or {}
            mark = (prog.get("frame"), prog.get("out_time_s"), grown)
            if mark != ws.progress_mark:
                ws.progress_mark, ws.moved_at = mark, now
        stall = self.ctx.stall_after
        if ws.stop_reason is None and stall > 0 and now - ws.moved_at > stall:
            ws.stop_reason = "stalled"
            self.log.warning("no progress for %gs: sending SIGTERM to FFmpeg", stall)
            self.rd.signal_ffmpeg(signal.SIGTERM)
            ws.kill_at = now + self.grace

    def _watch(self, plan: Plan) -> tuple[dict[str, Any], WatchState]:
        assert self.rd is not None
        ws = WatchState(t0=time.monotonic() - max(0.0, time.time() - self.t_start), held_at=time.time())
        ws.moved_at = time.monotonic()
        try:
            exit_info = self._watch_until_exit(ws, plan)
        finally:
            if self._pidfd is not None and self._pidfd >= 0:
                os.close(self._pidfd)
            self._pidfd = None
        deadline = time.monotonic() + timing.STOP_WAIT_S
        while not self._runner_gone() and time.monotonic() < deadline:
            time.sleep(0.01)
        return exit_info, ws

    def _watch_until_exit(self, ws: WatchState, plan: Plan) -> dict[str, Any]:
        assert self.rd is not None
        while True:
            exit_info = self.rd.exit()
            if exit_info is not None:
                return exit_info
            if self._runner_gone():
                exit_info = self.rd.exit()  # it may have written the file just before exiting
                if exit_info is not None:
                    return exit_info
                self._kill_run()  # FFmpeg dies with its supervisor; make sure before a retry
                self._record_supervisor_death()
                raise _Platform("runner_died", "the run supervisor died without an exit status")
            self._step(ws, plan)
            self._nap(timing.POLL_S)

    # --- the end --------------------------------------------------------------------------
    def _conclude(self, plan: Plan) -> None:
        try:
            exit_info, ws = self._watch(plan)
        except Fenced as exc:
            self.log.warning("attempt fenced (%s): FFmpeg killed, nothing reported", exc)
            self._kill_run()
            self._discard(plan)
            raise
        except RedisLost as exc:
            self._kill_run()
            self._discard(plan)
            self._platform("redis_outage", str(exc))
            return
        except _Platform as exc:
            self._discard(plan)
            self._platform(exc.reason, exc.message)
            return
        assert self.rd is not None
        tail = self.rd.stderr_tail(4096)
        url = self.spec_dict.get("input")
        network = url if isinstance(url, str) and is_url(url) else None
        verdict = classify_exit(exit_info, ws.stop_reason, tail, self.grace, self.ctx.stall_after, network)
        if verdict is not None:
            self._settle(plan, exit_info, ws, tail, verdict)
            return
        with self._renewing():
            self._settle(plan, exit_info, ws, tail, self._check_output(plan))

    def _settle(
        self, plan: Plan, exit_info: dict[str, Any], ws: WatchState, tail: str, verdict: Verdict
    ) -> None:
        """Record how the attempt ended (its output published first where it completed);
        ``tail``: the end of FFmpeg's stderr, as the verdict read it."""
        assert self.rd is not None
        rc = exit_info.get("returncode") if isinstance(exit_info.get("returncode"), int) else None
        progress = self.rd.progress()
        if verdict.reason == "output_disk_full" and plan.tmp_output:
            took = exit_info.get("partial_bytes")  # the supervisor removed it, saying how big
            took = took if isinstance(took, int) else used_bytes(plan.tmp_output)
            disk.mark_full(self.ctx.work_dir, plan.final_output, took)
        if verdict.outcome != "completed":
            self._discard(plan)
        if verdict.platform:
            self._platform(verdict.reason, verdict.message)
            return
        stop = None
        if ws.stop_reason:
            stop = "forced (SIGKILL after grace)" if ws.forced else "graceful (SIGTERM)"
        end = Ending(
            verdict.outcome,
            verdict.reason,
            verdict.message + (f"; stop was {stop}" if stop else ""),
            exit_code=rc,
            stderr_tail=tail if verdict.outcome != "completed" else None,
            result=self.result if verdict.outcome == "completed" else None,
            progress=with_percent(progress, plan.duration) if progress else None,
            stop=stop,
        )
        self._end(end)

    @contextlib.contextmanager
    def _renewing(self) -> Iterator[None]:
        """Keep the RQ execution alive while the output is verified, published and the end
        recorded (a long ffprobe of a big ladder), also for an adopted run that no worker
        renews; for ``timing.SETTLE_DEADLINE_S`` at most, after which the settling of such a
        run, stuck on a hung mount, lets the execution expire and recovery run the job again."""
        done = threading.Event()
        until = time.monotonic() + timing.SETTLE_DEADLINE_S

        def renew() -> None:
            interval = timing.renewal_interval(self.ctx.heartbeat_interval)
            while not done.wait(interval) and time.monotonic() < until:
                self._renew_execution()

        t = threading.Thread(target=renew, daemon=True, name="renew-execution")
        t.start()
        try:
            yield
        finally:
            done.set()
            t.join(timeout=1)

    def _discard(self, plan: Plan) -> None:
        if plan.tmp_output:
            remove_path(plan.tmp_output)

    def _input_changed(self, plan: Plan) -> bool:
        if self.input_sig is None:
            return False
        try:
            return input_signature(os.stat(plan.input_desc)) != self.input_sig
        except OSError:
            return True

    def _check_output(self, plan: Plan) -> Verdict:
        """FFmpeg exited 0: the output decides. Verified, still ours, then published."""
        self.result: dict[str, Any] = {"output": plan.final_output, "encoder": plan.encoder}
        if self._input_changed(plan):
            return Verdict("failed", "input_changed", "the input file changed while it was being read")
        if plan.tmp_output is None:
            return Verdict("completed", "ffmpeg_exit_0", "completed")
        try:
            self.result.update(verify_output(plan, self.ctx.ffprobe, self.expected_s))
        except VerifyError as exc:
            return Verdict("failed", exc.reason, str(exc))
        # through a Redis outage: ask again
        held, _ = until_redis_answers(self._patience())(lifecycle.holds)(self.conn, self.lease)
        # a fenced attempt never publishes
        if not held:
            self._discard(plan)
            raise Fenced("lease gone before publishing")
        try:
            publish(plan.final_output, plan.tmp_output, self.job.id, bool(self.spec_dict.get("overwrite")))
        except OutputExists:
            self._discard(plan)
            return Verdict(
                "failed", "output_exists", f"{plan.final_output} appeared while encoding; not replaced"
            )
        return Verdict("completed", "ffmpeg_exit_0", "completed")


def _mtime(path: str | None) -> float:
    try:
        return os.stat(path).st_mtime if path else 0.0
    except OSError:
        return 0.0


class _Platform(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message
