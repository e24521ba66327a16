"""Jobs as users see them: ids, the derived state, history, listing, cancel and retry
(submission is ``ffrtmp.submit``).

One source of truth: RQ's job hash (status, timestamps) plus ``job.meta``. Only the running
attempt writes ``meta`` while a job runs; the history is an append-only Redis list beside the
job, and control signals (cancel) live in their own keys.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

import redis

from . import keys, lifecycle, queues
from .redisconn import text
from .rqjob import SafeJob, job_spec, restore_job
from .terms import TERMINAL_STATES, JobState

__all__ = ["JOB_ID", "cancel", "get_view", "job_view", "list_views", "new_job_id", "retry"]

JOB_ID = keys.JOB_ID
_ID_ALPHABET = keys.ID_ALPHABET
LIST_SCAN_LIMIT = 2000  # index entries one listing request may look at, whatever it finds


def new_job_id() -> str:
    return "j" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_history(conn: redis.Redis, job_id: str) -> list[dict[str, Any]]:
    return _history(conn.lrange(keys.history_key(job_id), 0, -1))


def _history(lines: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for raw in lines:
        try:
            entry = json.loads(raw)
        except ValueError:
            continue  # never trust what Redis holds: a broken line is skipped, not a 500
        if isinstance(entry, dict):
            out.append(entry)
    return out


def _live_progress(raw: bytes | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def job_view(
    job: SafeJob, history: list[dict[str, Any]] | None = None, live_progress: bytes | None = None
) -> dict[str, Any]:
    meta = job.meta if isinstance(job.meta, dict) else {}
    spec = job_spec(job)
    state = JobState(lifecycle.state_of(job, meta))
    progress = _live_progress(live_progress) if state == JobState.running else None
    view: dict[str, Any] = {
        "id": job.id,
        "state": state.value,
        "scenario": spec.get("scenario"),
        "queue": spec.get("queue", "default"),
        "priority": spec.get("priority", "medium"),
        "hwaccel": spec.get("hwaccel", "auto"),
        "rq_queue": job.origin,
        "node": meta.get("node"),
        "slot": meta.get("slot"),
        "attempts": meta.get("attempt", 0),
        "max_attempts": meta.get("max_attempts"),
        "progress": progress or meta.get("progress"),
        "error": meta.get("error"),
        "created_at": _iso(job.created_at),
        "started_at": meta.get("started_at") or _iso(job.started_at),
        "ended_at": meta.get("ended_at") or (_iso(job.ended_at) if state in TERMINAL_STATES else None),
        "input": spec.get("input"),
        "output": meta.get("output") or spec.get("output"),
        "result": meta.get("result"),
        "labels": spec.get("labels", {}),
        "spec": spec,
    }
    view.update(_segmentation(job, meta))
    if history is not None:
        view["history"] = history
    return view


def _segmentation(job: SafeJob, meta: dict[str, Any]) -> dict[str, Any]:
    """A segmented job's segments, or a segment's parent and place (both read as untrusted)."""
    out: dict[str, Any] = {}
    children = lifecycle.segment_children(meta)
    if children:
        seg = meta.get("segments") or {}
        out["segments"] = {"count": len(children), "children": children, "cuts": seg.get("cuts")}
    place = job.args[1] if len(job.args or ()) > 1 and isinstance(job.args[1], dict) else None
    if place and isinstance(place.get("parent"), str):
        out["parent"] = place["parent"]
        out["segment"] = {k: place.get(k) for k in ("index", "start", "end")}
    return out


def get_view(conn: redis.Redis, job_id: str) -> dict[str, Any] | None:
    """One job with its history, live progress and webhook deliveries, in one round trip."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.hgetall(SafeJob.key_for(job_id))
        pipe.lrange(keys.history_key(job_id), 0, -1)
        pipe.get(keys.progress_key(job_id))
        pipe.hgetall(keys.webhooks_key(job_id))
        raw, history, progress, hooks = pipe.execute()
    job = restore_job(conn, job_id, raw)
    if job is None:
        return None
    view = job_view(job, _history(history), progress)
    view["webhooks"] = _webhooks(hooks)
    return view


def _webhooks(raw: dict[bytes, bytes]) -> list[dict[str, Any]]:
    """What became of each webhook delivery about the job (records are untrusted)."""
    out = []
    for did, blob in sorted(raw.items()):
        try:
            rec = json.loads(blob)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append({"delivery": did.decode(errors="replace"), **rec})
    return out


def _page_ids(conn: redis.Redis, index: str, pos: int, count: int) -> list[str]:
    return [i.decode() if isinstance(i, bytes) else i for i in conn.zrevrange(index, pos, pos + count - 1)]


def _indexes_for(
    state: str | None, queue: str | None, node: str | None, label: tuple[str, str] | None
) -> list[str]:
    """The indexes a filtered listing reads: the first is walked (in a fixed order, so a cursor
    stays meaningful from page to page: a node's jobs, else a label's, else a state's, else a
    queue's, else every job), the others are asked whether they hold each id walked."""
    found = [
        keys.node_index(node) if node else None,
        keys.label_index(*label) if label else None,
        keys.state_index(state) if state else None,
        keys.queue_index(queue) if queue else None,
    ]
    return [i for i in found if i] or [keys.JOBS_INDEX]


def _in_all(conn: redis.Redis, ids: list[str], others: list[str]) -> list[bool]:
    """Whether each id is in every one of ``others`` (one ZMSCORE per index, one round trip)."""
    if not others:
        return [True] * len(ids)
    with conn.pipeline(transaction=False) as pipe:
        for index in others:
            pipe.zmscore(index, ids)
        scores = pipe.execute()
    return [all(col[k] is not None for col in scores) for k in range(len(ids))]


def _matches(
    view: dict[str, Any], state: str | None, queue: str | None, node: str | None, label: Any
) -> bool:
    """The row itself agrees with the filters (an index can lag a job: a node's index keeps a
    job that moved on to another node)."""
    labels = view["labels"] if isinstance(view["labels"], dict) else {}
    return not (
        (state and view["state"] != state)
        or (queue and queue not in (view["queue"], view["rq_queue"]))
        or (node and view["node"] != node)
        or (label and labels.get(label[0]) != label[1])
    )


def _read_rows(conn: redis.Redis, ids: list[str]) -> list[dict[str, Any] | None]:
    """The views of ``ids`` (None for a job that is gone), hashes and progress in one round trip."""
    with conn.pipeline(transaction=False) as pipe:
        for jid in ids:
            pipe.hgetall(SafeJob.key_for(jid))
        pipe.mget([keys.progress_key(i) for i in ids])
        raw = pipe.execute()
    jobs = [restore_job(conn, jid, h) for jid, h in zip(ids, raw[:-1], strict=True)]
    return [None if j is None else job_view(j, live_progress=p) for j, p in zip(jobs, raw[-1], strict=True)]


def list_views(
    conn: redis.Redis,
    *,
    state: str | None = None,
    queue: str | None = None,
    node: str | None = None,
    label: tuple[str, str] | None = None,
    cursor: int = 0,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], int | None]:
    """Newest first. Returns (page, next cursor or None); the cursor is an offset in the index
    walked (see ``_indexes_for``). Only rows that every filter's index holds are read, so a page
    reads the rows it returns (and those an index still holds after they expired, which it
    drops). One request walks no more than ``LIST_SCAN_LIMIT`` entries: a combination that
    matches little returns a short page and a cursor to go on from, never a scan of every job."""
    walked, *others = _indexes_for(state, queue, node, label)
    out: list[dict[str, Any]] = []
    pos = cursor
    budget = LIST_SCAN_LIMIT
    chunk = limit if not others else min(max(limit * 2, 100), budget)
    while len(out) < limit and budget > 0:
        ids = _page_ids(conn, walked, pos, min(chunk, budget))
        if not ids:
            return out, None
        budget -= len(ids)
        wanted = [k for k, ok in enumerate(_in_all(conn, ids, others)) if ok]
        rows = _read_rows(conn, [ids[k] for k in wanted]) if wanted else []
        gone = [ids[k] for k, v in zip(wanted, rows, strict=True) if v is None]
        for k, view in zip(wanted, rows, strict=True):
            if view is None or not _matches(view, state, queue, node, label):
                continue
            out.append(view)
            if len(out) == limit:  # expired ids of this chunk are dropped on a later pass
                nxt = pos + k + 1
                return out, nxt if conn.zcard(walked) > nxt else None
        if gone:  # expired by their TTL: drop them from our own index
            conn.zrem(walked, *gone)
        pos += len(ids) - len(gone)
    return out, pos if conn.zcard(walked) > pos else None


PRUNE_OLDEST = 100  # entries per index a prune pass checks
PRUNE_SAMPLE = 20  # label and node indexes per pass (there can be many)


def _indexes_to_prune(conn: redis.Redis) -> list[str]:
    with conn.pipeline(transaction=False) as pipe:
        pipe.srandmember(keys.LABEL_INDEXES, PRUNE_SAMPLE)
        pipe.zrandmember(keys.NODES_INDEX, PRUNE_SAMPLE)
        labels, nodes = pipe.execute()
    labels = [text(x) for x in labels or []]
    if labels:  # emptied by a listing's own drops: forgotten here
        with conn.pipeline(transaction=False) as pipe:
            for index in labels:
                pipe.eval(_FORGET_EMPTY_LABEL, 2, index, keys.LABEL_INDEXES)
            pipe.execute()
    fixed = [keys.JOBS_INDEX, *(keys.state_index(s.value) for s in JobState)]
    fixed += [keys.queue_index(q) for q in (*queues.TIERS, *queues.queues_in_use(conn))]
    return fixed + labels + [keys.node_index(text(n)) for n in nodes or []]


def prune_indexes(conn: redis.Redis) -> int:
    """Drop the ids of jobs that expired from the listing indexes (a listing drops those it
    walks over, but an index nobody lists would only grow): ``PRUNE_OLDEST`` entries of every
    state and queue index and of a sample of the label and node indexes, from where the last
    pass stopped in each (so live jobs at the start of an index do not hide the expired ones
    after them), in four round trips. Returns how many entries it dropped."""
    indexes = _indexes_to_prune(conn)
    at = [int(c) if c and c.isdigit() else 0 for c in conn.hmget(keys.PRUNE_CURSORS, indexes)]
    with conn.pipeline(transaction=False) as pipe:
        for index, start in zip(indexes, at, strict=True):
            pipe.zrange(index, start, start + PRUNE_OLDEST - 1)
        walked = [[text(i) for i in ids] for ids in pipe.execute()]
    flat = [i for ids in walked for i in ids]
    with conn.pipeline(transaction=False) as pipe:
        for jid in flat:
            pipe.exists(SafeJob.key_for(jid))
        alive = dict(zip(flat, pipe.execute(), strict=True))
    dropped = 0
    with conn.pipeline(transaction=False) as pipe:
        for index, start, ids in zip(indexes, at, walked, strict=True):
            gone = [i for i in ids if not alive[i]]
            if gone:
                pipe.zrem(index, *gone)
                dropped += len(gone)
            # on from the last id kept, or from the start once the end is reached
            nxt = start + len(ids) - len(gone) if len(ids) == PRUNE_OLDEST else 0
            pipe.hset(keys.PRUNE_CURSORS, index, nxt)
            if index.startswith(keys.LABEL_INDEX_PREFIX) and gone:
                pipe.eval(_FORGET_EMPTY_LABEL, 2, index, keys.LABEL_INDEXES)
        pipe.execute()
    return dropped


# a label index emptied by the prune leaves the set of label indexes (not if a submission
# has just added to it again)
_FORGET_EMPTY_LABEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], KEYS[1]) end
return 0
"""


def cancel(conn: redis.Redis, job_id: str, requested_by: str = "api") -> tuple[str, dict[str, Any] | None]:
    """Cancel a job: 'canceled' (it was waiting), 'requested' (it is running; its attempt stops
    FFmpeg gracefully and ends it canceled), 'terminal' (nothing to do) or 'missing'."""
    outcome = lifecycle.cancel(conn, job_id, requested_by)
    return outcome, get_view(conn, job_id) if outcome != "missing" else None


def retry(conn: redis.Redis, job_id: str, requested_by: str = "api") -> tuple[str, dict[str, Any] | None]:
    """Re-run a failed, timed-out, canceled or rejected job by hand: 'queued', 'not_retryable'
    or 'missing'. Atomic against concurrent retries and cancels: never enqueued twice."""
    outcome = lifecycle.retry(conn, job_id, requested_by)
    return outcome, get_view(conn, job_id) if outcome != "missing" else None
