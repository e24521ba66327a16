"""Group commit for single submissions: the ``POST /jobs`` requests that arrive while one
submission is being written share the next one MULTI (``ffrtmp.submit.submit_many``), so that
many clients submitting one job each cost about what one batch of their jobs costs. A lone
request is written at once, as before. Each request still gets its own answer: a group that is
refused as a whole (a pinned node that cannot take its job) is written again one request at a
time, so one request's mistake is never another's; a Redis error fails every request of the
group, none of whose jobs was enqueued (the MULTI is all or nothing)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import redis

from ffrtmp.model import JobSpec, SubmissionError
from ffrtmp.submit import SubmitDefaults, submit_many

MAX_GROUP = 200  # jobs in one MULTI at most (a batch request may hold 1,000)
Runner = Callable[..., Awaitable[Any]]  # runs a Redis-bound call off the event loop


class SubmitGroups:
    def __init__(self, run: Runner, conn: redis.Redis, defaults: SubmitDefaults) -> None:
        self._run, self._conn, self._defaults = run, conn, defaults
        self._pending: list[tuple[JobSpec, asyncio.Future[dict[str, Any]]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, spec: JobSpec) -> dict[str, Any]:
        """Enqueue one validated spec (with whatever else is waiting); its job's view."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((spec, fut))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all())
        return await fut

    async def _write_all(self) -> None:
        try:
            while self._pending:
                group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
                await self._write(group)
        finally:
            self._writer = None

    async def _write(self, group: list[tuple[JobSpec, asyncio.Future[dict[str, Any]]]]) -> None:
        try:
            views = await self._run(
                submit_many, self._conn, [s for s, _ in group], self._defaults, numbered=False
            )
        except SubmissionError as exc:
            if len(group) == 1:
                _answer(group[0][1], exc=exc)
                return
            for item in group:  # whose it was: each alone, with its own answer
                await self._write([item])
            return
        except Exception as exc:
            for _, fut in group:
                _answer(fut, exc=exc)
            return
        for (_, fut), view in zip(group, views, strict=True):
            _answer(fut, view)


def _answer(fut: asyncio.Future[dict[str, Any]], view: Any = None, exc: BaseException | None = None) -> None:
    """Settle one request's future, unless its client went away (cancelled) meanwhile."""
    if fut.done():
        return
    with contextlib.suppress(asyncio.InvalidStateError):
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(view)
