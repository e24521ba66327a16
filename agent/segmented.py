"""A segmented job's attempt, on a planner slot: it cuts the input into segments, has the
lifecycle enqueue one child job per segment (ordinary jobs, run anywhere in the fleet), follows
them under its own lease (progress is their sum; cancel and timeout reach them all; a segment
that fails for good fails the job with its reason), then joins them exactly as a single-node
job writes its output: FFmpeg under the run supervisor, a temporary name, ffprobe's check, the
publish. Every write goes through ``ffrtmp.lifecycle``: a fenced attempt changes nothing.

Another attempt of the same job (its agent died, a manual retry) finds the plan recorded and
the segments where they are: it re-plans nothing and re-encodes only what did not complete.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import redis

from ffrtmp import keys, lifecycle, submit, timing
from ffrtmp.jobs import get_view
from ffrtmp.lifecycle import Ending, Lease
from ffrtmp.model import JobSpec
from ffrtmp.rqjob import job_spec
from ffrtmp.rundir import RunDir, remove_path

from . import segments
from .attempt import Attempt, Fenced
from .pipeline import AgentContext, Plan, PlanError, build_join_plan, file_output, resolve_input
from .publish import taken
from .verify import media_duration

FAILED = frozenset({"failed", "rejected", "timed_out", "canceled"})
POLL_S = 1.0
SETTLE_S = 60.0  # beyond the grace: how long canceled segments get to end before the job does


class MalformedJob(Exception):
    """The job's record cannot be run as any kind of attempt."""


@dataclass
class Follow:
    """What following the segments found: all completed (``end`` None), or how the job ends."""

    end: Ending | None
    children: list[str]


class SegmentedAttempt(Attempt):
    def run(self) -> None:
        spec = self._valid_spec()
        if spec is None:
            return
        try:
            final, cuts, target = self._prepare(spec)
        except PlanError as exc:
            self._refused(exc)
            return
        fields = {"output": final, "encoder": "segmented"}
        if self._report(lifecycle.started, fields, self.tier, self._queue_wait()):
            children = lifecycle.segment_children(self.job.meta or {})  # an earlier attempt's
            end = Ending("canceled", "canceled", "canceled before it was segmented")
            self._conclude_follow(spec, Follow(end, children), cuts)
            return
        children = self._plan(spec, cuts, target)
        if children is None:
            return
        self._new_run_dir()  # says "following" until the join, for an agent restarted under it
        assert self.rd is not None
        self.rd.mark_following(self.t_start)
        self._follow_and_conclude(spec, children, cuts)

    def _end(self, end: Ending) -> None:
        super()._end(end)
        if self.rd is not None:
            self.rd.end_following()  # ended: nothing for a restarted agent to take over

    def _resume_following(self, rd: RunDir, since: float) -> None:
        """Follow the segments again, as the attempt its agent's restart stopped would have:
        the same lease, the same plan, its timeout counted from when it began."""
        # not ``adopted``: this thread starts the join's supervisor itself, and reaps it
        self.rd, self.t_start = rd, min(since, time.time())
        spec = self._valid_spec()
        if spec is None:
            return
        known = self._recorded_cuts()
        if known is None:
            self._end(Ending("failed", "segments_unreadable", "the job's record holds no sound segment plan"))
            return
        self.log.info("following its segments again after an agent restart")
        self._follow_and_conclude(spec, lifecycle.segment_children(self.job.meta or {}), known[0])

    def _follow_and_conclude(self, spec: JobSpec, children: list[str], cuts: list[float]) -> None:
        self._conclude_follow(spec, self._follow(children, durations_of(cuts)), cuts)

    def _conclude_follow(self, spec: JobSpec, follow: Follow, cuts: list[float]) -> None:
        """Join what completed, or end the job as following found and stop its segments."""
        if follow.end is None:
            self._join(spec, len(follow.children), cuts[-1])
            return
        # only while the lease is ours (a stale attempt cancels nothing), the end fenced,
        # then the wait for the segments and the removal of their files
        if not self._report(lifecycle.holds)[0]:
            raise Fenced(f"the lease of attempt {self.lease.attempt} is gone")
        self._cancel_children(follow.children)
        self._end(follow.end)
        self._stop_children(follow.children)
        self._remove_segments()

    # --- planning -------------------------------------------------------------------------
    def _prepare(self, spec: JobSpec) -> tuple[str, list[float], float]:
        """(the final output, the cut points, the target length), or PlanError."""
        path = resolve_input(str(spec.input), self.ctx)
        final = file_output(spec, self.job.id, self.ctx)
        if not spec.overwrite and taken(final, self.job.id):
            raise PlanError("output_exists", f"{final} exists (overwrite: true replaces it)")
        known = self._recorded_cuts()
        if known is not None:  # an earlier attempt planned it: the same cuts, whatever changed
            return final, *known
        duration = media_duration(path, self.ctx.ffprobe)
        if not duration:
            raise PlanError("input_unreadable", f"ffprobe found no duration in {spec.input}")
        end = min(duration, spec.duration) if spec.duration else duration
        target = spec.segment_seconds or segments.default_seconds(end)
        try:
            times, keyframes = segments.video_times(path, self.ctx.ffprobe)
        except segments.CutError as exc:
            raise PlanError("input_unreadable", str(exc)) from None
        if not times:
            raise PlanError("input_unreadable", f"{spec.input} has no video packets to cut")
        return final, segments.plan_cuts(times, keyframes, end, target), target

    def _plan(self, spec: JobSpec, cuts: list[float], target: float) -> list[str] | None:
        """Record the plan and enqueue the segments (once per job); None if the job ended."""
        places = segments.places(cuts, self._run)
        jobs = submit.segment_jobs(self.conn, self.job, spec, places, self._run)
        plan = {"cuts": cuts, "seconds": round(target, 3), "count": len(places)}
        try:
            recorded = self._report(lifecycle.plan_segments, plan, jobs)
        except redis.exceptions.NoPermissionError as exc:
            self._platform("redis_acl", f"this agent may not enqueue segments ({exc}): re-run site.yml")
            return None
        children = lifecycle.segment_children({"segments": recorded})
        if not children or len(children) != len(recorded.get("children") or ()):
            self._end(
                Ending("failed", "segments_unreadable", "the job's segment plan names no sound segments")
            )
            return None
        self.log.info("segmented into %d parts (target %.0fs)", len(children), target)
        return children

    # --- following the segments -----------------------------------------------------------
    def _follow(self, children: list[str], durations: list[float]) -> Follow:
        held_at, last_save = time.time(), 0.0
        while True:
            try:
                held, canceled_now = lifecycle.holds(self.conn, self.lease)
                states = lifecycle.states_of(self.conn, children)
            except (redis.RedisError, OSError):
                if time.time() - held_at > timing.orphan_deadline(self.ctx.heartbeat_interval):
                    raise Fenced("the lease could not be confirmed within the orphan deadline") from None
                time.sleep(POLL_S)
                continue
            if not held:
                raise Fenced(f"the lease of attempt {self.lease.attempt} is gone")
            held_at = time.time()
            if canceled_now:
                return Follow(
                    Ending("canceled", "canceled", "canceled; its segments were canceled"), children
                )
            if time.time() - self.t_start > self.timeout:
                return Follow(
                    Ending("timed_out", "timed_out", f"not done within {self.timeout:g}s"), children
                )
            bad = next((i for i, s in enumerate(states) if s in FAILED), None)
            if bad is not None:
                return Follow(self._segment_failed(children[bad], bad, str(states[bad])), children)
            if all(s == "completed" for s in states):
                return Follow(None, children)
            if time.time() - last_save >= timing.PROGRESS_SAVE_S:
                last_save = time.time()
                self._mirror(children, states, durations)
            self._renew_execution()
            time.sleep(POLL_S)

    def _recorded_cuts(self) -> tuple[list[float], float] | None:
        """(cuts, target) of the plan in the job's record (untrusted), if there is a sound one."""
        meta = self.job.meta if isinstance(self.job.meta, dict) else {}
        known = meta.get("segments")
        children = lifecycle.segment_children(meta)
        if not isinstance(known, dict) or not children or not isinstance(known.get("cuts"), list):
            return None
        try:
            cuts = [float(c) for c in known["cuts"]]
            target = float(known.get("seconds") or 0)
        except (TypeError, ValueError):
            return None
        sound = all(math.isfinite(c) and 0 <= c < 1e7 for c in cuts) and cuts[:1] == [0.0]
        if not sound or len(cuts) != len(children) + 1 or any(b <= a for a, b in itertools.pairwise(cuts)):
            return None
        return cuts, target

    def _mirror(self, children: list[str], states: list[str | None], durations: list[float]) -> None:
        """The job's progress: the seconds encoded over all its segments."""
        try:
            with self.conn.pipeline(transaction=False) as pipe:
                for child in children:
                    pipe.get(keys.progress_key(child))
                raws = pipe.execute()
        except (redis.RedisError, OSError):
            return  # a blip: next time
        done = 0.0
        for state, raw, length in zip(states, raws, durations, strict=False):
            if state == "completed":
                done += length
            elif raw:
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    done += min(length, max(0.0, float(json.loads(raw).get("out_time_s") or 0)))
        total = sum(durations) or 1.0
        data = {
            "out_time_s": round(done, 3),
            "percent": round(min(100.0, 100 * done / total), 1),
            "segments": len(children),
            "segments_done": sum(1 for s in states if s == "completed"),
            "segments_running": sum(1 for s in states if s == "running"),
        }
        with contextlib.suppress(redis.RedisError, OSError):
            if not lifecycle.progress(self.conn, self.lease, data):
                raise Fenced("progress refused: the lease moved")

    def _segment_failed(self, child: str, index: int, state: str) -> Ending:
        try:
            view = get_view(self.conn, child) or {}
        except (redis.RedisError, OSError):
            view = {}  # the reason is then the state it ended in
        err = view.get("error") if isinstance(view.get("error"), dict) else {}
        reason = str(err.get("reason") or state)
        message = f"segment {index} ({child}) ended {state}: {err.get('message') or reason}"
        outcome = "failed" if state != "timed_out" else "timed_out"
        return Ending(outcome, reason, message[:2000])

    def _cancel_children(self, children: list[str]) -> None:
        for child in children:
            with contextlib.suppress(redis.RedisError, OSError):
                lifecycle.cancel(self.conn, child, f"parent {self.job.id}")

    def _stop_children(self, children: list[str]) -> None:
        """Cancel every segment still waiting or running, and wait (bounded) until they end."""
        self._cancel_children(children)
        deadline = time.monotonic() + self.grace + SETTLE_S
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if all(s in lifecycle.TERMINAL for s in lifecycle.states_of(self.conn, children)):
                    return
            time.sleep(POLL_S)
        self.log.warning("segments still running after the cancel; the sweep removes their files")

    @property
    def _run(self) -> int:
        return lifecycle.segment_run(self.job.meta if isinstance(self.job.meta, dict) else {})

    def _run_dir(self) -> str:
        if not self.ctx.output_roots:
            raise PlanError(
                "output_root_missing", f"no output root is configured on {self.ctx.node}", platform=True
            )
        return segments.run_dir(self.ctx.output_roots[0], self.job.id, self._run)

    def _remove_segments(self) -> None:
        """This run's segments (another run's are its own; the sweep takes what is left)."""
        with contextlib.suppress(OSError, PlanError):
            remove_path(self._run_dir())
            os.rmdir(os.path.dirname(self._run_dir()))  # the job's, once no other run is in it

    # --- the join -------------------------------------------------------------------------
    def _join_plan(self, spec: JobSpec, count: int, seconds: float) -> Plan:
        directory = self._run_dir()
        missing = segments.missing_segments(directory, count)
        if missing:
            raise PlanError(
                "segments_not_shared",
                f"segment {missing[0]} is not in {directory} on {self.ctx.node}: a segmented job "
                "needs the output root on storage every agent shares",
            )
        concat = segments.write_list(directory, count)
        return build_join_plan(spec, self.job.id, self.lease.attempt, self.ctx, concat, seconds)

    def _join(self, spec: JobSpec, count: int, seconds: float) -> None:
        try:
            plan = self._join_plan(spec, count, seconds)
        except (PlanError, OSError) as exc:
            reason = getattr(exc, "reason", "segments_unreadable")
            self._end(Ending("failed", reason, getattr(exc, "message", str(exc))))
            self._remove_segments()
            return
        try:
            self._limit(spec, plan)
        except PlanError as exc:
            self._refused(exc)
            return
        if self.rd is None:
            self._new_run_dir()
        self._launch(spec, plan)
        if self._ended():
            self._remove_segments()

    def _plan_again(self, spec: JobSpec) -> Plan:
        """An adopted join (its agent restarted under it): the same plan from the record."""
        known = self._recorded_cuts()
        if known is None:
            raise PlanError("segments_unreadable", "the job's record holds no sound segment plan")
        cuts = known[0]
        concat = os.path.join(self._run_dir(), "list.txt")
        return build_join_plan(spec, self.job.id, self.lease.attempt, self.ctx, concat, float(cuts[-1]))

    def resume(self, rd: RunDir) -> None:
        since = rd.following()
        if since is not None:
            self._resume_following(rd, since)
            return
        super().resume(rd)
        if self._ended():
            self._remove_segments()

    def _ended(self) -> bool:
        with contextlib.suppress(redis.RedisError):
            return lifecycle.states_of(self.conn, [self.job.id])[0] in lifecycle.TERMINAL
        return False


def durations_of(cuts: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(cuts)]


def attempt_for(job: Any, lease: Lease, ctx: AgentContext) -> Attempt:
    """The attempt that runs this job: a segmented job's, a segment's, or a plain one."""
    args = job.args or ()
    spec = job_spec(job)
    if spec.get("segmented") is True:
        if not keys.JOB_ID.fullmatch(job.id) or keys.is_child_id(job.id):
            raise MalformedJob(f"job {job.id!r} cannot be a segmented job")  # it names directories
        return SegmentedAttempt(job, lease, spec, ctx)
    segment = segments.parse_place(job.id, args[1]) if len(args) > 1 else None
    if len(args) > 1 and segment is None:
        raise MalformedJob(f"job {job.id} has a malformed segment place")
    return Attempt(job, lease, spec, ctx, segment)
