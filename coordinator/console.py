"""The web console: the coordinator's own pages at ``/ui`` for the fleet, queues, jobs and one
job, with cancel, retry, drain and undrain for operator keys.

Authentication is the API keys and roles: the login form takes a key, and the console keeps a
server-side session in Redis (``keys.session_key``) whose random id is the cookie (HttpOnly,
SameSite=Strict, Secure when the request came over TLS). The key itself is never stored in the
cookie; a session dies with its key (a key removed from the key file ends its sessions at the
next request), at logout, or after ``SESSION_TTL_S``. Every action is a POST carrying the
session's CSRF token. Pages are redacted like the API for every role but admin, and a viewer
gets no action buttons (and a 403 if it posts one anyway).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ffrtmp import keys
from ffrtmp.auth import ApiKey, role_allows
from ffrtmp.jobs import JOB_ID, cancel, get_view, list_views, retry
from ffrtmp.model import LABEL_KEY, NODE_NAME
from ffrtmp.nodes import get_node, page_nodes, set_draining
from ffrtmp.redact import redact
from ffrtmp.redisconn import text
from ffrtmp.terms import JobState

from . import pages

if TYPE_CHECKING:
    from .app import Api

COOKIE = "ffrtmp_session"
SESSION_TTL_S = 12 * 3600
STATIC = Path(__file__).with_name("static")
_STATIC_FILES = {"console.css": "text/css", "console.js": "text/javascript"}
# No inline script or style, nothing from elsewhere, no framing.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@dataclass(frozen=True)
class Session:
    key: ApiKey
    csrf: str

    @property
    def can_act(self) -> bool:
        return role_allows(self.key.role, "operator")


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Console:
    def __init__(self, api: Api) -> None:
        self.api = api

    # --- sessions -----------------------------------------------------------------------
    def _load(self, raw: bytes | None) -> Session | None:
        """A session as read from Redis (untrusted), alive only while its key still is."""
        try:
            rec = json.loads(raw or b"")
            key = self.api.cfg.keys.by_digest(str(rec["key"]))
            csrf = str(rec["csrf"])
        except (ValueError, KeyError, TypeError):
            return None
        return Session(key, csrf) if key is not None and csrf else None

    async def session(self, request: web.Request) -> Session | None:
        sid = request.cookies.get(COOKIE, "")
        if not 20 <= len(sid) <= 100:
            return None
        return self._load(await self.api.run(self.api.conn.get, keys.session_key(_digest(sid))))

    async def login_page(self, request: web.Request) -> web.Response:
        if await self.session(request) is not None:
            raise web.HTTPSeeOther("/ui/fleet")
        return self._page(request, "Log in", pages.login(None), None)

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        key = self.api.cfg.keys.lookup(str(form.get("key", "")).strip())
        if key is None:  # a 401: the address's failed-key budget counts it, as for the API
            return self._page(request, "Log in", pages.login("That key is not valid here."), None, status=401)
        sid = secrets.token_urlsafe(32)
        record = json.dumps({"key": key.digest, "csrf": secrets.token_urlsafe(24), "at": time.time()})
        await self.api.run(self.api.conn.set, keys.session_key(_digest(sid)), record, ex=SESSION_TTL_S)
        resp = web.HTTPSeeOther("/ui/fleet")
        secure = request.secure or request.headers.get("X-Forwarded-Proto", "") == "https"
        resp.set_cookie(
            COOKIE, sid, max_age=SESSION_TTL_S, path="/", httponly=True, samesite="Strict", secure=secure
        )
        raise resp

    async def logout(self, request: web.Request) -> web.Response:
        await self._acting(request, needs_operator=False)
        await self.api.run(self.api.conn.delete, keys.session_key(_digest(request.cookies[COOKIE])))
        resp = web.HTTPSeeOther("/ui/login")
        resp.del_cookie(COOKIE, path="/")
        raise resp

    async def _viewing(self, request: web.Request) -> Session:
        s = await self.session(request)
        if s is None:
            raise web.HTTPSeeOther("/ui/login")
        return s

    async def _acting(self, request: web.Request, needs_operator: bool = True) -> Session:
        """The session of a POST: logged in, the CSRF token matches, and (for actions) an
        operator's key."""
        s = await self.session(request)
        form = await request.post()
        if s is None or not hmac.compare_digest(str(form.get("csrf", "")).encode(), s.csrf.encode()):
            raise web.HTTPForbidden(text="This form has expired: reload the page and try again.")
        if needs_operator and not s.can_act:
            raise web.HTTPForbidden(text=f"This needs an operator key; '{s.key.name}' is {s.key.role}.")
        return s

    # --- pages --------------------------------------------------------------------------
    def _page(
        self, request: web.Request, title: str, main: str, s: Session | None, status: int = 200
    ) -> web.Response:
        headers = {
            "Content-Security-Policy": CSP,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        }
        if request.headers.get("X-Fragment") == "1":
            return web.Response(text=main, content_type="text/html", status=status, headers=headers)
        who = f"{s.key.name} ({s.key.role})" if s else None
        body = pages.layout(title, main, who, s.csrf if s else None, request.path)
        return web.Response(text=body, content_type="text/html", status=status, headers=headers)

    @staticmethod
    def _shown(s: Session, data: Any) -> Any:
        return data if s.key.role == "admin" else redact(data)

    async def root(self, _request: web.Request) -> web.Response:
        raise web.HTTPSeeOther("/ui/fleet")

    async def fleet(self, request: web.Request) -> web.Response:
        s = await self._viewing(request)
        nodes, _ = await self.api.run(page_nodes, self.api.conn, self.api.cfg.heartbeat_timeout, limit=500)
        node = request.query.get("node", "")
        done = pages.DONE.get(request.query.get("done", ""))
        notice = f"{node}: {done}" if done and NODE_NAME.fullmatch(node) else None
        main = pages.fleet(nodes, s.can_act, s.csrf, notice)
        return self._page(request, "Fleet", main, s)

    async def queue_page(self, request: web.Request) -> web.Response:
        s = await self._viewing(request)
        stats = await self.api.run(self.api.metrics.queue_stats)
        return self._page(request, "Queues", pages.queues(stats), s)

    async def jobs(self, request: web.Request) -> web.Response:
        s = await self._viewing(request)
        asked, filters, error = _job_filters(request.query)
        views, nxt = [], None
        if error is None:
            views, nxt = await self.api.run(list_views, self.api.conn, **filters)
        main = pages.jobs(self._shown(s, views), asked, nxt, error)
        return self._page(request, "Jobs", main, s, status=200 if error is None else 422)

    async def job(self, request: web.Request) -> web.Response:
        s = await self._viewing(request)
        jid = request.match_info["id"]
        view = await self.api.run(get_view, self.api.conn, jid) if JOB_ID.fullmatch(jid) else None
        if view is None:
            return self._page(request, "Not found", pages.not_found(f"There is no job {jid}."), s, 404)
        raw = await self.api.run(self.api.conn.hgetall, keys.logs_key(jid))
        logs = {text(k): text(v) for k, v in sorted(raw.items())}
        done = pages.DONE.get(request.query.get("done", ""))
        main = pages.job(self._shown(s, view), self._shown(s, logs), s.can_act, s.csrf, done)
        return self._page(request, f"Job {jid}", main, s)

    # --- actions ------------------------------------------------------------------------
    async def job_action(self, request: web.Request) -> web.Response:
        s = await self._acting(request)
        jid, verb = request.match_info["id"], request.path.rsplit("/", 1)[-1]
        if not JOB_ID.fullmatch(jid):
            raise web.HTTPNotFound(text=f"no job {jid}")
        act = cancel if verb == "cancel" else retry
        outcome, _ = await self.api.run(act, self.api.conn, jid, f"key {s.key.name}")
        raise web.HTTPSeeOther(f"/ui/jobs/{jid}?done={outcome}")

    async def node_action(self, request: web.Request) -> web.Response:
        s = await self._acting(request)
        name, verb = request.match_info["id"], request.path.rsplit("/", 1)[-1]
        if (
            not NODE_NAME.fullmatch(name)
            or await self.api.run(get_node, self.api.conn, name, self.api.cfg.heartbeat_timeout) is None
        ):
            raise web.HTTPNotFound(text=f"no node {name}")
        await self.api.run(set_draining, self.api.conn, name, verb == "drain", s.key.name)
        raise web.HTTPSeeOther(f"/ui/fleet?done={verb}ed&node={name}")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC_FILES:
            raise web.HTTPNotFound(text="no such file")
        return web.Response(
            body=(STATIC / name).read_bytes(),
            content_type=_STATIC_FILES[name],
            headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
        )


def _job_filters(q: Any) -> tuple[dict[str, str], dict[str, Any], str | None]:
    """The job page's filters: what was asked (for the form), what list_views takes, an error."""
    asked = {k: str(q[k]) for k in ("state", "queue", "node", "label") if q.get(k)}
    filters: dict[str, Any] = {"limit": 50}
    state, label = asked.get("state"), asked.get("label")
    if state and state not in {s.value for s in JobState}:
        return asked, filters, "Unknown state."
    if label:
        k, sep, v = label.partition("=")
        if not sep or not LABEL_KEY.match(k):
            return asked, filters, "A label filter is key=value."
        filters["label"] = (k, v)
    cursor = q.get("cursor", "0")
    filters.update(state=state, queue=asked.get("queue"), node=asked.get("node"))
    filters["cursor"] = int(cursor) if cursor.isdecimal() and len(cursor) < 19 else 0
    return asked, filters, None
