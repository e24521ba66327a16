"""Group commit for single submissions: the ``POST /jobs`` requests that arrive while one
submission is being written share the next one MULTI (``ffrtmp.submit.submit_many``), so that
many clients submitting one job each cost about what one batch of their jobs costs. A lone
request is written at once, as before. Each request still gets its own answer: where a group
is refused for one of its jobs (a pinned node that cannot take it), that request gets the
refusal and the rest are written again without it, so one request's mistake is never
another's; a Redis error fails every request of the group, as it would have failed each alone
(the MULTI is all or nothing; where its reply was lost, whether it took effect is as unknown as
for a single request, which is what ``Idempotency-Key`` is for)."""

from __future__ import annotations

import asyncio
import re
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
        group: list[tuple[JobSpec, asyncio.Future[dict[str, Any]]]] = []
        try:
            while self._pending:
                group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
                await self._write(group)
        except BaseException as exc:  # cancelled, or a bug: no request is left waiting for ever
            for _, fut in group + self._pending:
                _answer(fut, exc=exc if isinstance(exc, Exception) else RuntimeError("submission stopped"))
            self._pending = []
            raise
        finally:
            self._writer = None

    async def _write(self, group: list[tuple[JobSpec, asyncio.Future[dict[str, Any]]]]) -> None:
        while group:
            try:
                views = await self._run(
                    submit_many, self._conn, [s for s, _ in group], self._defaults, numbered=True
                )
            except SubmissionError as exc:
                i = _item_index(exc.field)
                if i is not None and i < len(group):
                    _answer(group[i][1], exc=SubmissionError(_unnumbered(exc.field), exc.message))
                    group = group[:i] + group[i + 1 :]
                    continue
                if len(group) == 1:
                    _answer(group[0][1], exc=exc)
                    return
                for item in group:  # whose it was is not said: each alone, with its own answer
                    await self._write([item])
                return
            except Exception as exc:
                for _, fut in group:
                    _answer(fut, exc=exc)
                return
            for (_, fut), view in zip(group, views, strict=True):
                _answer(fut, view)
            return


_ITEM = re.compile(r"jobs\[(\d+)\]\.?(.*)")


def _item_index(field: str | None) -> int | None:
    """The item a numbered refusal names (``jobs[3].node`` -> 3), if any."""
    m = _ITEM.fullmatch(field or "")
    return int(m.group(1)) if m else None


def _unnumbered(field: str | None) -> str | None:
    """``jobs[3].node`` -> ``node``: the field as a single submission names it."""
    m = _ITEM.fullmatch(field or "")
    return (m.group(2) or None) if m else field


def _answer(fut: asyncio.Future[dict[str, Any]], view: Any = None, exc: BaseException | None = None) -> None:
    """Settle one request's future, unless its client went away (cancelled) meanwhile."""
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(view)
