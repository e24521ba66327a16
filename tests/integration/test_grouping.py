"""Group commit of single submissions (``coordinator.grouping``) on a real Redis: concurrent
requests share MULTIs, and every request still gets its own answer: a bad one in a group fails
alone (the rest are written together again), a Redis error fails the group's requests and
enqueues none of their jobs."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
import redis

from coordinator.grouping import SubmitGroups
from ffrtmp.jobs import get_view
from ffrtmp.model import SubmissionError, validate_spec
from ffrtmp.submit import SubmitDefaults

pytestmark = pytest.mark.integration
TINY = {"scenario": "480p-h264", "duration": 1, "resolution": "64x64"}


def groups_on(conn: redis.Redis, sizes: list[int]) -> SubmitGroups:
    pool = ThreadPoolExecutor(4)

    async def run(fn, *args, **kwargs):
        sizes.append(len(args[1]))  # submit_many(conn, specs, ...): how many share this MULTI
        return await asyncio.get_running_loop().run_in_executor(pool, partial(fn, *args, **kwargs))

    return SubmitGroups(run, conn, SubmitDefaults())


async def submit_all(groups: SubmitGroups, specs: list) -> list:
    return await asyncio.gather(*(groups.submit(s) for s in specs), return_exceptions=True)


def test_concurrent_submissions_share_multis_and_a_bad_one_fails_alone(conn):
    sizes: list[int] = []
    specs = [validate_spec({**TINY, "labels": {"n": str(i)}}) for i in range(40)]
    specs[7] = validate_spec({**TINY, "node": "no-such-node"})  # refused: that node is not up
    results = asyncio.run(submit_all(groups_on(conn, sizes), specs))
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(refused) == 1 and isinstance(refused[0], SubmissionError) and refused[0].field == "node"
    assert isinstance(results[7], SubmissionError)
    views = [r for r in results if not isinstance(r, Exception)]
    assert len({v["id"] for v in views}) == 39  # one job each, none twice
    assert conn.zcard("ffrtmp:jobs") == 39
    for i, v in enumerate(results):
        if i != 7:
            assert get_view(conn, v["id"])["labels"] == {"n": str(i)}  # each answer is its own job
    # all forty shared one MULTI, refused for the one pin; the other 39 were written together
    assert sizes == [40, 39]


def test_a_redis_error_fails_every_request_of_the_group_and_enqueues_nothing(conn):
    dead = redis.Redis(unix_socket_path="/nonexistent/redis.sock")
    specs = [validate_spec(TINY) for _ in range(5)]
    results = asyncio.run(submit_all(groups_on(dead, []), specs))
    assert all(isinstance(r, redis.ConnectionError) for r in results)
    assert conn.zcard("ffrtmp:jobs") == 0


def test_a_lone_submission_is_written_at_once(conn):
    sizes: list[int] = []
    groups = groups_on(conn, sizes)
    view = asyncio.run(groups.submit(validate_spec(TINY)))
    assert sizes == [1] and get_view(conn, view["id"])["state"] == "queued"
