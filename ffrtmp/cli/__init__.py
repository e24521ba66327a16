"""The ``ffrtmp`` command line."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from ..auth import ROLES, hash_key, key_line, new_key
from ..durations import DURATION
from ..presets import PRESETS, X264_PRESETS
from ..terms import TERMINAL_STATES

if TYPE_CHECKING:
    import ssl

EXIT_JOB_NOT_COMPLETED = 1
EXIT_STILL_RUNNING = 3  # nodes drain --wait: the timeout passed with jobs still running
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
TERMINAL = {s.value for s in TERMINAL_STATES}


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class CallFailed(Exception):
    def __init__(self, message: str, code: int, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.field = message, code, field


class Ctx:
    def __init__(self, url: str, api_key: str | None, output: str, tls: ssl.SSLContext | None = None) -> None:
        from .client import Client  # urllib and tenacity only for commands that call the API

        self.client = Client(url, api_key, tls=tls)
        self.output = output

    def client_call(
        self, method: str, path: str, body: Any | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        """The API's answer, or CallFailed with the message and exit code to report."""
        from .client import ApiError, TransportError

        try:
            return self.client.request(method, path, body, headers)
        except ApiError as exc:
            hint = "; pass --api-key or set FFRTMP_API_KEY" if exc.status == 401 else ""
            code = EXIT_USAGE if exc.status in (400, 401, 403, 422) else 1
            raise CallFailed(exc.message + hint, code, exc.field) from None
        except TransportError as exc:
            raise CallFailed(str(exc), EXIT_UNREACHABLE) from None

    def call(
        self, method: str, path: str, body: Any | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        try:
            return self.client_call(method, path, body, headers)
        except CallFailed as exc:
            fail(exc.message + (f" (field '{exc.field}')" if exc.field else ""), exc.code)

    def emit(self, data: Any, table: str) -> None:
        if self.output == "json":
            click.echo(json.dumps(data, indent=2))
        else:
            click.echo(table)


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _pct(job: dict[str, Any]) -> str:
    p = job.get("progress") or {}
    if p.get("percent") is not None:
        return f"{p['percent']:.0f}%"
    if p.get("out_time_s") is not None:
        return f"{p['out_time_s']:.0f}s"
    return "-"


def _job_rows(jobs: list[dict[str, Any]]) -> str:
    rows = [
        [
            j["id"],
            j["state"],
            j["scenario"],
            f"{j['queue']}/{j['priority']}",
            j.get("node") or "-",
            str(j.get("attempts", 0)),
            _pct(j),
            (j.get("created_at") or "-")[:19],
        ]
        for j in jobs
    ]
    return (
        _table(rows, ["id", "state", "scenario", "queue", "node", "att", "prog", "created"])
        if rows
        else "no jobs"
    )


def _job_detail(j: dict[str, Any]) -> str:
    out = [
        f"id:        {j['id']}",
        f"state:     {j['state']}",
        f"scenario:  {j['scenario']}   queue: {j['queue']}/{j['priority']} ({j['rq_queue']})   "
        f"hwaccel: {j['hwaccel']}",
        f"node:      {j.get('node') or '-'}   attempts: {j.get('attempts', 0)}/{j.get('max_attempts')}",
        f"input:     {j.get('input') or 'test pattern'}",
        f"output:    {j.get('output') or '-'}",
        f"created:   {j.get('created_at')}   started: {j.get('started_at') or '-'}   "
        f"ended: {j.get('ended_at') or '-'}",
    ]
    p = j.get("progress")
    if p:
        out.append(f"progress:  {_progress_text(j)}")
    if j.get("result"):
        out.append(f"result:    {_result_text(j['result'])}")
    if j.get("error"):
        e = j["error"]
        out.append(f"error:     {e.get('reason')}: {e.get('message')}")
        if e.get("stderr_tail"):
            out.append("stderr:")
            out += [f"  {ln}" for ln in e["stderr_tail"].splitlines()[-10:]]
    if j.get("history"):
        out.append("history:")
        for h in j["history"]:
            where = f" on {h['node']}" if h.get("node") else ""
            att = f" (attempt {h['attempt']})" if h.get("attempt") else ""
            out.append(f"  {h['time']}  {h.get('from') or '-'} -> {h['to']}: {h['reason']}{where}{att}")
    return "\n".join(out)


def _progress_text(j: dict[str, Any]) -> str:
    p = j.get("progress") or {}
    parts = []
    if p.get("percent") is not None:
        parts.append(f"{p['percent']:5.1f}%")
    if p.get("out_time_s") is not None:
        parts.append(f"t={p['out_time_s']:.1f}s")
    parts.append(f"frame={p.get('frame', 0)}")
    if p.get("fps"):
        parts.append(f"fps={p['fps']:.1f}")
    if p.get("speed"):
        parts.append(f"speed={p['speed']:.2f}x")
    if p.get("eta_s") is not None:
        parts.append(f"eta={p['eta_s']:.0f}s")
    return " ".join(parts)


def _bar(j: dict[str, Any], width: int = 30) -> str:
    pct = (j.get("progress") or {}).get("percent")
    if pct is None:
        return f"{j['id']} {j['state']:<9} {_progress_text(j) if j.get('progress') else ''}"
    fill = round(width * pct / 100)
    return f"{j['id']} [{'#' * fill}{'.' * (width - fill)}] {j['state']:<9} {_progress_text(j)}"


def follow(ctx: Ctx, job_id: str, interval: float = 0.5) -> dict[str, Any]:
    """Show a progress bar until the job ends; return the final job."""
    tty = sys.stderr.isatty()
    last_line = ""
    last_print = 0.0
    while True:
        job = ctx.call("GET", f"/jobs/{job_id}")
        line = _bar(job)
        now = time.monotonic()
        if tty:
            click.echo("\r" + line.ljust(len(last_line)), nl=False, err=True)
        elif line != last_line and (now - last_print >= 2 or job["state"] in TERMINAL):
            click.echo(line, err=True)
            last_print = now
        last_line = line
        if job["state"] in TERMINAL:
            if tty:
                click.echo("", err=True)
            return job
        time.sleep(interval)


def finish(ctx: Ctx, job: dict[str, Any]) -> NoReturn:
    if ctx.output == "json":
        click.echo(json.dumps(job, indent=2))
    elif job["state"] == "completed":
        click.echo(f"job {job['id']} completed: {job.get('output')}")
    else:
        err = job.get("error") or {}
        click.echo(f"job {job['id']} {job['state']}: {err.get('reason', '')}: {err.get('message', '')}")
        tail = (err.get("stderr_tail") or "").strip().splitlines()[-5:]
        for ln in tail:
            click.echo(f"  {ln}", err=True)
    sys.exit(0 if job["state"] == "completed" else EXIT_JOB_NOT_COMPLETED)


def _url(_c: click.Context, _p: click.Parameter, value: str | None) -> str | None:
    from urllib.parse import urlsplit

    if value is None:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{value!r}: give http://HOST[:PORT] or https://HOST[:PORT]")
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--url", envvar="FFRTMP_URL", default=None, callback=_url, help="Coordinator URL [env FFRTMP_URL]"
)
@click.option("--api-key", envvar="FFRTMP_API_KEY", default=None, help="API key [env FFRTMP_API_KEY]")
@click.option(
    "--ca-cert",
    envvar="FFRTMP_CA_CERT",
    type=click.Path(dir_okay=False),
    help="Trust this CA for an https:// coordinator [env FFRTMP_CA_CERT]",
)
@click.option(
    "--client-cert",
    envvar="FFRTMP_CLIENT_CERT",
    type=click.Path(dir_okay=False),
    help="Client certificate for a coordinator that requires one [env FFRTMP_CLIENT_CERT]",
)
@click.option(
    "--client-key",
    envvar="FFRTMP_CLIENT_KEY",
    type=click.Path(dir_okay=False),
    help="Its private key, when not in the certificate file [env FFRTMP_CLIENT_KEY]",
)
@click.option(
    "--output",
    "-o",
    "output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="json prints exactly what the API returned",
)
@click.version_option(package_name="ffrtmp", message="ffrtmp %(version)s")
@click.pass_context
def cli(
    click_ctx: click.Context, url: str | None, api_key: str | None, output: str, **tls: str | None
) -> None:
    """ffrtmp: a distributed FFmpeg transcoding fleet.

    Without --url/--api-key the CLI uses what `ffrtmp up` saved (~/.config/ffrtmp/cli.json),
    its CA and client certificate included."""
    from ..tls import TlsError, client_context
    from .config import load_cli_config

    saved = load_cli_config() if url is None or api_key is None else {}
    names = ("ca_cert", "client_cert", "client_key")
    given = {n: tls[n] or (saved.get(n) if url is None else None) for n in names}
    try:
        context = client_context(given["ca_cert"], given["client_cert"], given["client_key"])
    except TlsError as exc:
        raise click.UsageError(str(exc)) from None
    click_ctx.obj = Ctx(
        url or saved.get("url") or "http://127.0.0.1:8080", api_key or saved.get("api_key"), output, context
    )


# ---------------------------------------------------------------------------- jobs
@cli.group()
def jobs() -> None:
    """Submit, inspect and cancel jobs."""


@jobs.command("submit")
@click.option(
    "--scenario", "-s", type=click.Choice(list(PRESETS)), help="Named preset (required without --from-file)"
)
@click.option("--queue", "-q", type=click.Choice(["live", "default", "batch"]), default=None)
@click.option("--priority", "-p", type=click.Choice(["high", "medium", "low"]), default=None)
@click.option("--input", "-i", "input_", default=None, help="Path under an input root, or a URL")
@click.option("--output", "output_", default=None, help="Path under an output root, or rtmp(s):// URL")
@click.option("--duration", type=float, default=None, help="Seconds")
@click.option("--bitrate", default=None, help="e.g. 5000k or 5M")
@click.option("--codec", type=click.Choice(["h264", "h265", "vp9", "av1"]), default=None)
@click.option("--resolution", default=None, help="WIDTHxHEIGHT or 480p/720p/1080p/4k")
@click.option("--fps", type=float, default=None)
@click.option("--preset", type=click.Choice(X264_PRESETS), default=None)
@click.option("--hwaccel", type=click.Choice(["auto", "none", "nvenc", "qsv", "vaapi"]), default=None)
@click.option("--timeout", type=float, default=None, help="Seconds")
@click.option("--max-attempts", type=int, default=None)
@click.option("--max-cpu-percent", type=int, default=None)
@click.option("--max-memory-mb", type=int, default=None)
@click.option("--label", "labels", multiple=True, help="key=value (repeatable)")
@click.option("--node", default=None, help="Run only on this agent (it must be up)")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists (otherwise refused)")
@click.option(
    "--segmented", is_flag=True, help="Encode in parallel segments across the fleet, then join (file jobs)"
)
@click.option("--segment-seconds", type=float, default=None, help="Target segment length (with --segmented)")
@click.option("--wait", "-w", is_flag=True, help="Show progress until the job ends; exit 0 only if completed")
@click.option(
    "--from-file",
    "from_file",
    type=click.File("r"),
    default=None,
    help="JSON lines, one job spec each ('-' for stdin), sent in batches of 1,000; the other options "
    "fill in what a line leaves out",
)
@click.pass_obj
def jobs_submit(
    ctx: Ctx,
    wait: bool,
    labels: tuple[str, ...],
    input_: str | None,
    output_: str | None,
    overwrite: bool,
    segmented: bool,
    from_file: Any,
    **fields: Any,
) -> None:
    """Submit a job (or many, with --from-file)."""
    body = {k: v for k, v in fields.items() if v is not None}
    if overwrite:
        body["overwrite"] = True
    if segmented:
        body["segmented"] = True
    if input_ is not None:
        body["input"] = input_
    if output_ is not None:
        body["output"] = output_
    if labels:
        parsed = {}
        for item in labels:
            key, sep, value = item.partition("=")
            if not sep:
                raise click.BadParameter(f"'{item}' is not key=value", param_hint="--label")
            parsed[key] = value
        body["labels"] = parsed
    if from_file is not None:
        if wait:
            raise click.UsageError("--wait follows one job; use `ffrtmp jobs status` for a batch")
        submit_file(ctx, from_file, body)
        return
    if "scenario" not in body:
        raise click.UsageError("Missing option '--scenario' / '-s' (or give --from-file).")
    # one key per invocation, reused by the client's retries: a retried POST never makes a second job
    job = ctx.call("POST", "/jobs", body, {"Idempotency-Key": f"cli-{uuid.uuid4()}"})
    if not wait:
        ctx.emit(job, f"submitted {job['id']} ({job['scenario']} on {job['rq_queue']})")
        return
    if ctx.output != "json":
        click.echo(f"submitted {job['id']} ({job['scenario']} on {job['rq_queue']})", err=True)
    finish(ctx, follow(ctx, job["id"]))


BATCH = 1000  # the coordinator's MAX_BATCH


def _spec_lines(fh: Any, defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """The file's specs, each over the command line's defaults; a bad line stops everything."""
    specs = []
    for n, line in enumerate(fh, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise click.UsageError(f"{fh.name} line {n}: not JSON ({exc})") from None
        if not isinstance(item, dict):
            raise click.UsageError(f"{fh.name} line {n}: a job spec is a JSON object")
        specs.append({**defaults, **item})
    if not specs:
        raise click.UsageError(f"{fh.name}: no job specs")
    return specs


def submit_file(ctx: Ctx, fh: Any, defaults: dict[str, Any]) -> None:
    """Batches of BATCH, each all or nothing and each under its own Idempotency-Key (a retried
    batch never makes a second set). A refused batch stops here: the earlier ones stand."""
    specs = _spec_lines(fh, defaults)
    run = uuid.uuid4()
    made: list[dict[str, Any]] = []
    for start in range(0, len(specs), BATCH):
        chunk = specs[start : start + BATCH]
        headers = {"Idempotency-Key": f"cli-{run}-{start // BATCH}"}
        try:
            made += ctx.client_call("POST", "/jobs/batch", {"jobs": chunk}, headers)["jobs"]
        except CallFailed as exc:
            where = _batch_field(exc.field, start)
            done = f"; the {len(made)} jobs before it were submitted" if made else ""
            fail(f"{exc.message}{where}{done}", exc.code)
    ids = "\n".join(j["id"] for j in made)
    ctx.emit({"jobs": made}, f"{ids}\nsubmitted {len(made)} jobs")


def _batch_field(field: str | None, start: int) -> str:
    """`jobs[3].scenario` of a batch starting at line item ``start`` -> the item's place."""
    if not field or not field.startswith("jobs["):
        return f" (field '{field}')" if field else ""
    index, _, rest = field[5:].partition("]")
    return f" (job {start + int(index) + 1} of the file{', field ' + rest.lstrip('.') if rest else ''})"


@jobs.command("status")
@click.argument("job_id", required=False)
@click.option("--follow", "-f", "follow_", is_flag=True, help="Show progress until the job ends")
@click.pass_obj
def jobs_status(ctx: Ctx, job_id: str | None, follow_: bool) -> None:
    """One job in detail, or without ID the most recent jobs."""
    if job_id is None:
        if follow_:
            raise click.UsageError("--follow needs a job ID")
        data = ctx.call("GET", "/jobs?limit=20")
        table = _job_rows(data["jobs"])
        if data.get("next_cursor"):
            table += f"\nthe 20 most recent; more: ffrtmp jobs list --cursor {data['next_cursor']}"
        ctx.emit(data, table)
        return
    if follow_:
        finish(ctx, follow(ctx, job_id))
    job = ctx.call("GET", f"/jobs/{job_id}")
    ctx.emit(job, _job_detail(job))


@jobs.command("list")
@click.option("--state", default=None)
@click.option("--queue", default=None, help="Tier or queue name")
@click.option("--node", default=None)
@click.option("--label", default=None, metavar="KEY=VALUE", help="Jobs submitted with this label")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--cursor", default=None, help="From a previous page's next_cursor")
@click.pass_obj
def jobs_list(
    ctx: Ctx,
    state: str | None,
    queue: str | None,
    node: str | None,
    label: str | None,
    limit: int,
    cursor: str | None,
) -> None:
    """List jobs, newest first."""
    from urllib.parse import urlencode

    asked = {"state": state, "queue": queue, "node": node, "label": label, "limit": limit, "cursor": cursor}
    params = {k: v for k, v in asked.items() if v is not None}
    data = ctx.call("GET", "/jobs?" + urlencode(params))
    table = _job_rows(data["jobs"])
    if data.get("next_cursor"):
        table += f"\nmore: --cursor {data['next_cursor']}"
    ctx.emit(data, table)


@jobs.command("logs")
@click.argument("job_id")
@click.pass_obj
def jobs_logs(ctx: Ctx, job_id: str) -> None:
    """FFmpeg's stderr for each attempt."""
    data = ctx.call("GET", f"/jobs/{job_id}/logs")
    if not data["attempts"]:
        ctx.emit(data, f"no logs yet for {job_id} ({data['state']})")
        return
    text = "\n".join(f"--- attempt {a} ---\n{t.rstrip()}" for a, t in data["attempts"].items())
    ctx.emit(data, text)


@jobs.command("cancel")
@click.argument("job_id")
@click.pass_obj
def jobs_cancel(ctx: Ctx, job_id: str) -> None:
    """Cancel a queued or running job."""
    data = ctx.call("POST", f"/jobs/{job_id}/cancel")
    msg = {
        "canceled": f"{job_id} canceled",
        "requested": f"{job_id}: cancel requested; FFmpeg is being stopped",
    }
    ctx.emit(data, msg.get(data["outcome"], data["outcome"]))


@jobs.command("retry")
@click.argument("job_id")
@click.option("--wait", "-w", is_flag=True, help="Show progress until the job ends; exit 0 only if completed")
@click.pass_obj
def jobs_retry(ctx: Ctx, job_id: str, wait: bool) -> None:
    """Re-run a failed, timed-out, canceled or rejected job by hand (its next attempt)."""
    data = ctx.call("POST", f"/jobs/{job_id}/retry")
    if not wait:
        ctx.emit(data, f"{job_id} queued again (attempt {data['job']['attempts'] + 1} next)")
        return
    finish(ctx, follow(ctx, job_id))


# --------------------------------------------------------------------------- nodes
@cli.group()
def nodes() -> None:
    """Inspect the agents."""


@nodes.command("list")
@click.pass_obj
def nodes_list(ctx: Ctx) -> None:
    """All known agents."""
    data: dict[str, Any] = {"nodes": [], "next_cursor": None}  # every page in one
    cursor: str | None = ""
    while cursor is not None:  # pages of 1,000 by name
        page = ctx.call("GET", "/nodes" + (f"?cursor={cursor}" if cursor else ""))
        data["nodes"] += page["nodes"]
        cursor = page.get("next_cursor")
    rows = [
        [
            n["name"],
            n["state"],
            f"{n.get('slots_busy', 0)}/{n.get('slots', 0)}",
            ",".join(n.get("capabilities") or []) or "cpu",
            f"{n.get('heartbeat_age_s', 0):.0f}s",
            f"{n.get('starts_30m', 0)}" + (" FLAPPING" if n.get("flapping") else ""),
            n.get("version", "-"),
        ]
        for n in data["nodes"]
    ]
    ctx.emit(
        data,
        _table(rows, ["name", "state", "busy", "hw", "heartbeat", "starts/30m", "version"])
        if rows
        else "no nodes",
    )


@nodes.command("describe")
@click.argument("name")
@click.pass_obj
def nodes_describe(ctx: Ctx, name: str) -> None:
    """One agent in detail."""
    n = ctx.call("GET", f"/nodes/{name}")
    enc = ", ".join(sorted(e for e, ok in (n.get("encoders") or {}).items() if ok))
    lines = [
        f"name:        {n['name']}  ({n['state']}, heartbeat {n.get('heartbeat_age_s', 0):.0f}s ago)",
        f"version:     {n.get('version')}   ffmpeg: {n.get('ffmpeg_version')}",
        f"slots:       {n.get('slots_busy', 0)}/{n.get('slots')} busy ({n.get('live_slots')} live-only)",
        f"hardware:    {', '.join(n.get('capabilities') or []) or 'none'}; "
        f"cpu threads {n.get('cpu_threads')}, "
        f"memory {int(n.get('memory_bytes', 0)) // 2**20} MiB, disk free {n.get('disk_free_ratio', 0):.0%}",
        f"encoders:    {enc}",
        f"gpus:        {', '.join(g['model'] for g in n.get('gpus') or []) or 'none'}",
        f"running:     {', '.join(r['job'] for r in n.get('running') or []) or 'nothing'}",
    ]
    for slot, qs in (n.get("slot_queues") or {}).items():
        lines.append(f"  {slot}: {','.join(qs)}")
    ctx.emit(n, "\n".join(lines))


def _result_text(r: Any) -> str:
    """What a finished job made: a file's codec, size and duration; a stream's destination."""
    if not isinstance(r, dict):
        return str(r)
    if r.get("codec") is None:  # a stream pushed elsewhere: nothing was probed
        return f"pushed to {r.get('output')} via {r.get('encoder')}"
    size = f"{r.get('width')}x{r.get('height')}" if r.get("width") else ""
    secs = f"{r.get('duration_s')}s" if r.get("duration_s") is not None else ""
    parts = [str(r.get("codec")), size, secs, f"{r.get('size_bytes', 0)} bytes", f"via {r.get('encoder')}"]
    return " ".join(p for p in parts if p)


def _running(n: dict[str, Any]) -> list[str]:
    return [str(r.get("job")) for r in n.get("running") or [] if isinstance(r, dict)]


@nodes.command("drain")
@click.argument("name")
@click.option("--wait", "-w", is_flag=True, help="Wait until NAME runs nothing; exit 0 only then")
@click.option(
    "--timeout", type=DURATION, default="1h", show_default=True, help="How long --wait waits (e.g. 90s, 30m)"
)
@click.option("--interval", type=DURATION, default="2s", show_default=True, help="How often --wait looks")
@click.pass_obj
def nodes_drain(ctx: Ctx, name: str, wait: bool, timeout: float, interval: float) -> None:
    """Stop NAME taking new jobs; its running jobs finish. With --wait, show what still runs
    until nothing does (exit 0) or the timeout passes (exit 3: those jobs are still running)."""
    n = ctx.call("POST", f"/nodes/{name}/drain")
    running = _running(n)
    if not wait:
        ctx.emit(n, f"{name}: drain requested ({len(running)} job(s) still running)")
        return
    deadline = time.monotonic() + timeout
    shown: list[str] | None = None
    while True:
        if ctx.output != "json" and running != shown:
            listed = f": {', '.join(running)}" if running else ""
            click.echo(f"{name}: {len(running)} running{listed}", err=True)
            shown = running
        if not running or time.monotonic() >= deadline:
            break
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        n = ctx.call("GET", f"/nodes/{name}")
        running = _running(n)
    drained = not running
    ctx.emit(
        {**n, "drained": drained, "still_running": running},
        f"{name}: drained" if drained else f"{name}: after {timeout:.0f}s, running: {', '.join(running)}",
    )
    if not drained:
        sys.exit(EXIT_STILL_RUNNING)


@nodes.command("undrain")
@click.argument("name")
@click.pass_obj
def nodes_undrain(ctx: Ctx, name: str) -> None:
    """Let NAME take jobs again."""
    n = ctx.call("POST", f"/nodes/{name}/undrain")
    ctx.emit(n, f"{name}: taking jobs again")


@cli.command("queues")
@click.pass_obj
def queues_cmd(ctx: Ctx) -> None:
    """Queue depths, running counts and the age of each queue's oldest job."""
    data = ctx.call("GET", "/queues")
    rows = [
        [q["name"], q["queued"], q["started"], q["finished"], q["failed"], f"{q['oldest_age_s']:.1f}s"]
        for q in data["queues"]
        if q["capability"] is None or any(q[k] for k in ("queued", "started"))
    ]
    ctx.emit(data, _table(rows, ["queue", "queued", "running", "finished", "failed", "oldest"]))


# ---------------------------------------------------------------------------- keys
@cli.group()
def keys() -> None:
    """Create API keys and their hashes for the coordinator's key file."""


@keys.command("new")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="operator", show_default=True)
def keys_new(name: str, role: str) -> None:
    """Print a new key (give it to the user) and the line for --api-keys-file."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise click.BadParameter("use letters, digits, '-' and '_'", param_hint="NAME")
    key = new_key()
    click.echo(f"key:  {key}")
    click.echo(f"line: {key_line(name, role, key)}")


@keys.command("hash")
@click.argument("key", required=False)
def keys_hash(key: str | None) -> None:
    """Print the hash of KEY (or of a key read from stdin)."""
    key = key or sys.stdin.readline().strip()
    if not key:
        raise click.UsageError("no key given")
    click.echo(hash_key(key))


# ------------------------------------------------------------------------------ up
def _fleet_options(f: Any) -> Any:
    f = click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)(f)
    f = click.option("--slots", type=click.IntRange(1, 64), default=2, show_default=True)(f)
    f = click.option(
        "--metrics-port",
        type=click.IntRange(1, 65535),
        default=9091,
        show_default=True,
        help="The agent's /health /ready /metrics port",
    )(f)
    f = click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="[default: ~/.local/state/ffrtmp]",
    )(f)
    f = click.option(
        "--tls", is_flag=True, help="Serve HTTPS (a CA and a localhost certificate in <state-dir>/tls)"
    )(f)
    f = click.option(
        "--rotate-key",
        is_flag=True,
        help="Replace the API key kept in <state-dir>/api-key (otherwise each start reuses it)",
    )(f)
    return f


def _start_fleet(
    port: int, slots: int, metrics_port: int, state_dir: Path | None, tls: bool, rotate_key: bool
) -> Any:
    from .config import save_cli_config
    from .up import Fleet, FleetError, default_state_dir

    fleet = Fleet(
        (state_dir or default_state_dir()).absolute(),
        port=port,
        slots=slots,
        metrics_port=metrics_port,
        input_roots=[os.getcwd()],
        tls=tls,
        rotate_key=rotate_key,
    )
    try:
        fleet.prepare()
        # before the coordinator answers: a script that waits for /health then runs the CLI
        # finds the right URL and key
        cfg_path = save_cli_config(fleet.url, fleet.api_key, fleet.ca_cert)
        fleet.start()
    except FleetError as exc:
        fleet.stop()
        fail(str(exc), EXIT_USAGE)
    return fleet, cfg_path


@cli.command("up")
@_fleet_options
def up(port: int, slots: int, metrics_port: int, state_dir: Path | None, tls: bool, rotate_key: bool) -> None:
    """Run a whole fleet on this machine (Redis, coordinator, agent) until Ctrl-C."""
    fleet, cfg_path = _start_fleet(port, slots, metrics_port, state_dir, tls, rotate_key)
    stop = {"signal": None}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    click.echo(f"ffrtmp local fleet is up ({slots} slots)")
    click.echo(f"  URL:      {fleet.url}")
    click.echo(f"  console:  {fleet.url}/ui   (log in with the API key)")
    click.echo(f"  API key:  {fleet.api_key}   (saved for the CLI in {cfg_path})")
    if fleet.ca_cert:
        click.echo(f"  TLS CA:   {fleet.ca_cert}   (saved for the CLI too)")
    click.echo(f"  outputs:  {fleet.outputs}")
    click.echo(f"  logs:     {fleet.state_dir / 'logs'}")
    click.echo("  try:      ffrtmp jobs submit --scenario 720p-h264 --duration 10 --wait")
    click.echo("Ctrl-C stops everything.", nl=True)
    sys.stdout.flush()
    try:
        while stop["signal"] is None:
            dead = [n for n, ok in fleet.alive().items() if not ok]
            if dead:
                click.echo(
                    f"error: {', '.join(dead)} exited; stopping (logs in {fleet.state_dir / 'logs'})",
                    err=True,
                )
                break
            time.sleep(0.5)
    finally:
        click.echo("stopping the fleet...", err=True)
        fleet.stop()
        click.echo("stopped.", err=True)
    sys.exit(0 if stop["signal"] is not None else 1)


@cli.command("demo")
@_fleet_options
@click.option("--scenario", default="720p-h264", show_default=True, type=click.Choice(list(PRESETS)))
@click.option("--clip-seconds", type=click.FloatRange(1, 600), default=10, show_default=True)
def demo(
    port: int,
    slots: int,
    metrics_port: int,
    state_dir: Path | None,
    tls: bool,
    rotate_key: bool,
    scenario: str,
    clip_seconds: float,
) -> None:
    """Start a local fleet, generate a 1080p clip with FFmpeg, transcode it with progress, stop."""
    import subprocess

    from ..media import make_clip

    fleet, _ = _start_fleet(port, slots, metrics_port, state_dir, tls, rotate_key)
    try:
        clip = fleet.inputs / "demo-source-1080p.mp4"
        click.echo(f"generating a {clip_seconds:g}s 1080p test clip: {clip}", err=True)
        try:
            make_clip(clip, seconds=clip_seconds, size="1920x1080", fps=30)
        except subprocess.CalledProcessError as exc:
            fail(f"could not generate the clip: {exc.stderr.decode(errors='replace')[-300:]}")
        from ..tls import client_context

        ctx = Ctx(fleet.url, fleet.api_key, "table", client_context(fleet.ca_cert, None, None))
        body: dict[str, Any] = {"scenario": scenario, "input": clip.name, "queue": "default"}
        if PRESETS[scenario].kind == "restream":
            fail("the demo writes files; pick a file or HLS scenario")
        job = ctx.call("POST", "/jobs", body)
        click.echo(f"submitted {job['id']}: {scenario} of {clip.name}", err=True)
        final = follow(ctx, job["id"])
        click.echo(_job_detail(ctx.call("GET", f"/jobs/{job['id']}")))
        code = 0 if final["state"] == "completed" else 1
        if code == 0:
            click.echo(f"\noutput: {final['output']}")
    finally:
        fleet.stop()
    sys.exit(code)


# ------------------------------------------------------------------------- loadtest
@cli.command("loadtest")
@click.argument("mode", type=click.Choice(["quick", "standard", "stress", "scale"]), default="quick")
@click.option("--jobs", "n_jobs", type=click.IntRange(1, 100_000), default=None, help="Instead of the mode's")
@click.option("--rate", type=click.FloatRange(0.1, 1000), default=None, help="Submissions per second")
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    metavar="NAME[=WEIGHT]",
    help="A scenario of the mix (repeatable; weights make a mix) [default: 480p-h264]",
)
@click.option(
    "--duration", type=DURATION, default="2s", show_default=True, help="Each job's test-pattern length"
)
@click.option(
    "--resolution", default="320x180", show_default=True, help="Each job's resolution (small: load, not art)"
)
@click.option("--queue", "-q", type=click.Choice(["live", "default", "batch"]), default=None)
@click.option(
    "--wait-timeout",
    type=DURATION,
    default="30m",
    show_default=True,
    help="How long to wait for the jobs to end",
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the report goes [default: ./loadtest-<run id>]",
)
@click.pass_obj
def loadtest_cmd(
    ctx: Ctx,
    mode: str,
    n_jobs: int | None,
    rate: float | None,
    scenarios: tuple[str, ...],
    duration: float,
    resolution: str,
    queue: str | None,
    wait_timeout: float,
    report_dir: Path | None,
) -> None:
    """Load-test the fleet: submit MODE's jobs (quick 10 at 5/s, standard 100 at 10/s, stress
    1,000 at 50/s, scale 500 at 20/s) and report submit latency, queue wait and run time per
    tier, completion and failures, and the fleet's CPU and memory on this host. Exit 0 only if
    every job completed."""
    from . import loadtest as lt

    try:
        mix = lt.parse_mix(scenarios or ("480p-h264",))
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    unknown = sorted(set(mix) - set(PRESETS))
    if unknown:
        fail(f"--scenario: unknown {', '.join(unknown)} (one of {', '.join(PRESETS)})", EXIT_USAGE)
    m = lt.MODES[mode]
    plan = lt.Plan(n_jobs or m.jobs, rate or m.rate, mix, duration, resolution or None, queue, wait_timeout)
    ctx.call("GET", "/queues")  # the fleet answers and the key works, before anything is sent
    out = report_dir or Path(f"loadtest-{plan.run_id}")
    summary = _run_loadtest(ctx, plan, out)
    click.echo(f"report: {out / 'report.md'}", err=True)
    sys.exit(0 if summary["completed"] == plan.jobs else EXIT_JOB_NOT_COMPLETED)


def _run_loadtest(ctx: Ctx, plan: Any, out: Path) -> dict[str, Any]:
    import threading

    from . import loadtest as lt

    def post(body: dict[str, Any], key: str) -> dict[str, Any]:
        return ctx.client_call("POST", "/jobs", body, {"Idempotency-Key": key})

    def get(path: str) -> Any:
        return ctx.client_call("GET", path)

    t0 = time.monotonic()
    sampler = lt.Sampler(t0)
    sampler.start()
    result: dict[str, Any] = {}
    sender = threading.Thread(target=lambda: result.update(subs=lt.submit_all(plan, post, t0)), daemon=True)
    sender.start()
    timeline: list[tuple[float, int, int]] = []
    node_samples: list[dict[str, Any]] = []
    jobs: dict[str, dict[str, Any]] = {}
    give_up = t0 + plan.jobs / plan.rate + plan.wait_s
    while True:
        try:
            jobs = lt.collect(get, plan.run_id)
            node_samples.append(lt.node_sample(get, time.monotonic() - t0))
        except CallFailed as exc:  # a bad moment of the coordinator's: counted on the next look
            click.echo(f"\nlisting failed: {exc.message}", err=True)
        ended = sum(1 for j in jobs.values() if j.get("state") in lt.TERMINAL)
        timeline.append((round(time.monotonic() - t0, 2), len(jobs), ended))
        _loadtest_line(plan.jobs, jobs, ended)
        if (not sender.is_alive() and ended >= len(result.get("subs", [])) - _refused(result)) or (
            time.monotonic() > give_up
        ):
            break
        time.sleep(1.0)
    click.echo("", err=True)
    sender.join()
    sampler.halt.set()
    sampler.join(5)
    subs = result.get("subs", [])
    summary = lt.summarize(plan, subs, jobs, sampler.samples, time.monotonic() - t0, node_samples)
    lt.write_report(out, summary, subs, jobs, sampler.samples, timeline, node_samples)
    return summary


def _refused(result: dict[str, Any]) -> int:
    return sum(1 for s in result.get("subs", []) if s.error)


def _loadtest_line(total: int, jobs: dict[str, dict[str, Any]], ended: int) -> None:
    states = {s: 0 for s in ("running", "completed", "failed")}
    for j in jobs.values():
        if j.get("state") in states:
            states[j["state"]] += 1
    width = 30
    done = int(width * ended / max(1, total))
    other = ended - states["completed"] - states["failed"]
    click.echo(
        f"\r[{'#' * done}{'.' * (width - done)}] submitted {len(jobs)}/{total} · running {states['running']}"
        f" · completed {states['completed']} · failed {states['failed']} · other {other}",
        nl=False,
        err=True,
    )


def main() -> None:
    cli(prog_name="ffrtmp")


if __name__ == "__main__":
    main()
