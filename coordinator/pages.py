"""The web console's HTML: server-rendered pages, every value escaped, no template engine and
no build step. Each page function takes plain data (already redacted for the viewer) and
returns the page's ``<main>`` content; ``layout`` wraps it. The console's JavaScript refreshes
``<main>`` by asking for the same URL with ``X-Fragment: 1``."""

from __future__ import annotations

import html
import time
from typing import Any
from urllib.parse import quote, urlencode

from ffrtmp import __version__
from ffrtmp.model import NODE_NAME
from ffrtmp.terms import JobState

ACTIVE = ("queued", "running", "retrying")
# What an action's redirect says (the code travels in the URL, never the text).
DONE = {
    "canceled": "Canceled.",
    "requested": "Cancel requested: FFmpeg is being stopped.",
    "queued": "Queued again.",
    "terminal": "It had already ended.",
    "not_retryable": "Only failed, timed-out, canceled or rejected jobs can be retried.",
    "missing": "That job no longer exists.",
    "drained": "drained: it takes no new jobs, what runs finishes.",
    "undrained": "takes jobs again.",
}


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def layout(title: str, main: str, who: str | None, csrf: str | None, current: str) -> str:
    links = (("/ui/fleet", "Fleet"), ("/ui/queues", "Queues"), ("/ui/jobs", "Jobs"))
    mark = ' aria-current="page"'
    nav = "".join(f'<a href="{h}"{mark if h == current else ""}>{label}</a>' for h, label in links)
    account = ""
    if who is not None and csrf is not None:
        account = (
            f'<form method="post" action="/ui/logout" class="logout"><span>{esc(who)}</span>'
            f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
            '<button type="submit">Log out</button></form>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · ffrtmp</title>"
        '<link rel="stylesheet" href="/ui/static/console.css">'
        '<script src="/ui/static/console.js" defer></script></head><body>'
        f'<header><strong class="brand">ffrtmp</strong><nav aria-label="Sections">{nav if who else ""}</nav>'
        f"{account}</header>"
        f'<main id="main" aria-live="polite">{main}</main>'
        f"<footer>ffrtmp {esc(__version__)}</footer></body></html>"
    )


def login(error: str | None) -> str:
    msg = f'<p class="error" role="alert">{esc(error)}</p>' if error else ""
    return (
        "<h1>Log in</h1>"
        f"{msg}"
        '<form method="post" action="/ui/login" class="login">'
        '<label for="key">API key</label>'
        '<input id="key" name="key" type="password" autocomplete="current-password" required>'
        '<button type="submit">Log in</button></form>'
        "<p>Use an API key of this fleet (<code>ffrtmp keys new</code>). Viewer keys see the "
        "fleet; operator keys can also cancel, retry and drain.</p>"
    )


def _button(action: str, label: str, csrf: str, back: str) -> str:
    return (
        f'<form method="post" action="{esc(action)}" class="inline">'
        f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
        f'<input type="hidden" name="back" value="{esc(back)}">'
        f'<button type="submit">{esc(label)}</button></form>'
    )


def _notice(done: str | None) -> str:
    return f'<p class="notice" role="status">{esc(done)}</p>' if done else ""


def fleet(nodes: list[dict[str, Any]], can_act: bool, csrf: str, done: str | None) -> str:
    rows = []
    for n in nodes:
        name = str(n.get("name"))
        encoders = ", ".join(sorted(e for e, ok in (n.get("encoders") or {}).items() if ok is True))
        gpus = ", ".join(str(g.get("model")) for g in n.get("gpus") or [] if isinstance(g, dict)) or "none"
        flags = " ".join(
            f'<span class="tag">{t}</span>'
            for t, on in (("flapping", n.get("flapping")), ("draining", n.get("state") == "draining"))
            if on
        )
        action = ""
        if can_act and n.get("state") in ("alive", "draining") and NODE_NAME.fullmatch(name):
            verb = "undrain" if n.get("state") == "draining" else "drain"  # a name from Redis: quoted
            action = _button(f"/ui/nodes/{quote(name, safe='')}/{verb}", verb.capitalize(), csrf, "/ui/fleet")
        rows.append(
            f'<tr><th scope="row">{esc(name)}</th>'
            f'<td><span class="state s-{esc(n.get("state"))}">{esc(n.get("state"))}</span> {flags}</td>'
            f"<td>{esc(n.get('version'))}</td>"
            f"<td>{esc(n.get('slots_busy', 0))}/{esc(n.get('slots'))}</td>"
            f"<td>{esc(encoders)}</td><td>{esc(gpus)}</td>"
            f"<td>{esc(n.get('heartbeat_age_s'))} s</td><td>{action}</td></tr>"
        )
    body = "".join(rows) or '<tr><td colspan="8">No agent has registered yet.</td></tr>'
    return (
        f"<h1>Fleet</h1>{_notice(done)}"
        '<div class="scroll"><table><caption>Agents by name</caption><thead><tr>'
        '<th scope="col">Node</th><th scope="col">State</th><th scope="col">Version</th>'
        '<th scope="col">Slots busy</th><th scope="col">Encoders</th><th scope="col">GPU</th>'
        '<th scope="col">Last heartbeat</th><th scope="col"><span class="sr">Actions</span></th>'
        f"</tr></thead><tbody>{body}</tbody></table></div>"
    )


def queues(stats: list[dict[str, Any]]) -> str:
    rows = "".join(
        f'<tr><th scope="row">{esc(q["name"])}</th><td>{esc(q["queued"])}</td>'
        f"<td>{esc(q.get('started', 0))}</td><td>{esc(round(float(q.get('oldest_age_s') or 0)))} s</td></tr>"
        for q in stats
    )
    return (
        "<h1>Queues</h1>"
        '<div class="scroll"><table><caption>Depth and the age of the oldest queued job</caption>'
        '<thead><tr><th scope="col">Queue</th><th scope="col">Queued</th><th scope="col">Running</th>'
        f'<th scope="col">Oldest waiting</th></tr></thead><tbody>{rows}</tbody></table></div>'
    )


def progress_bar(view: dict[str, Any]) -> str:
    p = view.get("progress") or {}
    if view.get("state") != "running" or not isinstance(p, dict):
        return ""
    pct = p.get("percent")
    parts = [f"{p['fps']:.0f} fps" if isinstance(p.get("fps"), int | float) else None]
    parts.append(f"{p['speed']:.2f}x" if isinstance(p.get("speed"), int | float) else None)
    parts.append(f"ETA {p['eta_s']:.0f} s" if isinstance(p.get("eta_s"), int | float) else None)
    detail = " · ".join(x for x in parts if x)
    if isinstance(pct, int | float):
        bar = (
            f'<progress max="100" value="{pct:.1f}" aria-label="{pct:.0f} percent done">{pct:.0f}%</progress>'
        )
        return f'<span class="progress">{bar} <span>{pct:.0f}%</span> <small>{esc(detail)}</small></span>'
    return f'<span class="progress"><small>{esc(detail or "running")}</small></span>'


def _input(name: str, label: str, value: str, hint: str = "") -> str:
    placeholder = f' placeholder="{esc(hint)}"' if hint else ""
    return (
        f'<span class="field"><label for="f-{name}">{label}</label>'
        f'<input id="f-{name}" name="{name}" value="{esc(value)}"{placeholder}></span>'
    )


def _filters(asked: dict[str, str]) -> str:
    options = ['<option value="">any</option>']
    for st in JobState:
        chosen = " selected" if asked.get("state") == st.value else ""
        options.append(f'<option value="{st.value}"{chosen}>{st.value}</option>')
    return (
        '<form method="get" action="/ui/jobs" class="filters">'
        '<span class="field"><label for="f-state">State</label>'
        f'<select id="f-state" name="state">{"".join(options)}</select></span>'
        + _input("queue", "Queue", asked.get("queue", ""), "live, default, batch")
        + _input("node", "Node", asked.get("node", ""))
        + _input("label", "Label", asked.get("label", ""), "key=value")
        + '<button type="submit">Filter</button></form>'
    )


def _job_row(v: dict[str, Any]) -> str:
    jid, state = esc(v["id"]), esc(v["state"])
    cells = [esc(v.get("scenario")), esc(v.get("rq_queue")), esc(v.get("node") or ""), progress_bar(v)]
    return (
        f'<tr><th scope="row"><a href="/ui/jobs/{jid}">{jid}</a></th>'
        f'<td><span class="state s-{state}">{state}</span></td>'
        + "".join(f"<td>{c}</td>" for c in cells)
        + f"<td>{esc(v.get('created_at'))}</td></tr>"
    )


def jobs(
    views: list[dict[str, Any]], asked: dict[str, str], next_cursor: int | None, error: str | None
) -> str:
    rows = "".join(_job_row(v) for v in views)
    more = ""
    if next_cursor is not None:
        more = f'<p><a href="/ui/jobs?{esc(urlencode({**asked, "cursor": next_cursor}))}">Older jobs</a></p>'
    msg = f'<p class="error" role="alert">{esc(error)}</p>' if error else ""
    empty = '<tr><td colspan="7">No job matches.</td></tr>'
    return (
        f"<h1>Jobs</h1>{_filters(asked)}{msg}"
        '<div class="scroll"><table><caption>Newest first</caption><thead><tr>'
        '<th scope="col">Job</th><th scope="col">State</th><th scope="col">Scenario</th>'
        '<th scope="col">Queue</th><th scope="col">Node</th><th scope="col">Progress</th>'
        f'<th scope="col">Submitted</th></tr></thead><tbody>{rows or empty}</tbody></table></div>{more}'
    )


def _pre(text: Any) -> str:
    return f"<pre>{esc(text)}</pre>"


def job(view: dict[str, Any], logs: dict[str, str], can_act: bool, csrf: str, done: str | None) -> str:
    jid = str(view["id"])
    actions = []
    if can_act and view["state"] in ACTIVE:
        actions.append(_button(f"/ui/jobs/{jid}/cancel", "Cancel", csrf, f"/ui/jobs/{jid}"))
    if can_act and view["state"] in ("failed", "timed_out", "canceled", "rejected"):
        actions.append(_button(f"/ui/jobs/{jid}/retry", "Retry", csrf, f"/ui/jobs/{jid}"))
    err = view.get("error") or {}
    error = ""
    if isinstance(err, dict) and err:
        error = (
            f"<h2>Error</h2><p><strong>{esc(err.get('reason'))}</strong>: {esc(err.get('message'))}</p>"
            + (_pre(err.get("stderr_tail")) if err.get("stderr_tail") else "")
        )
    fields = ("time", "from", "to", "reason", "node", "attempt")
    history = "".join(
        "<tr>" + "".join(f"<td>{esc(h.get(f))}</td>" for f in fields) + "</tr>"
        for h in view.get("history") or []
        if isinstance(h, dict)
    )
    head = "".join(f'<th scope="col">{f.capitalize()}</th>' for f in fields)
    log_html = (
        "".join(f"<h3>Attempt {esc(a)}</h3>{_pre(t)}" for a, t in logs.items()) or "<p>No logs yet.</p>"
    )
    facts = "".join(
        f"<dt>{label}</dt><dd>{value}</dd>"
        for label, value in (
            ("State", f'<span class="state s-{esc(view["state"])}">{esc(view["state"])}</span>'),
            ("Progress", progress_bar(view) or "—"),
            ("Scenario", esc(view.get("scenario"))),
            ("Queue", esc(view.get("rq_queue"))),
            ("Node", esc(view.get("node") or "—")),
            ("Attempts", f"{esc(view.get('attempts'))} of {esc(view.get('max_attempts'))}"),
            ("Input", esc(view.get("input") or "test pattern")),
            ("Output", esc(view.get("output") or "—")),
            ("Submitted", esc(view.get("created_at"))),
            ("Ended", esc(view.get("ended_at") or "—")),
        )
    )
    return (
        f'<h1>Job {esc(jid)}</h1>{_notice(done)}<div class="actions">{"".join(actions)}</div>'
        f"<dl>{facts}</dl>{error}"
        f'<h2>History</h2><div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{history}</tbody></table></div>"
        f"<h2>Spec</h2>{_pre(_spec_text(view.get('spec')))}<h2>FFmpeg logs</h2>{log_html}"
        f'<p class="stamp">Shown at {time.strftime("%H:%M:%S")}</p>'
    )


def _spec_text(spec: Any) -> str:
    import json

    return json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False)


def not_found(what: str) -> str:
    return f"<h1>Not found</h1><p>{esc(what)}</p>"
