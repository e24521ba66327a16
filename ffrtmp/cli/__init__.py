"""The ``ffrtmp`` command line."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from ..auth import ROLES, hash_key, key_line, new_key
from ..model import TERMINAL_STATES
from ..presets import PRESETS, X264_PRESETS
from .client import ApiError, Client, TransportError

EXIT_JOB_NOT_COMPLETED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
TERMINAL = {s.value for s in TERMINAL_STATES}


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class Ctx:
    def __init__(self, url: str, api_key: str | None, output: str) -> None:
        self.client = Client(url, api_key)
        self.output = output

    def call(self, method: str, path: str, body: Any | None = None) -> Any:
        try:
            return self.client.request(method, path, body)
        except ApiError as exc:
            where = f" (field '{exc.field}')" if exc.field else ""
            hint = ""
            if exc.status == 401:
                hint = "; pass --api-key or set FFRTMP_API_KEY"
            fail(f"{exc.message}{where}{hint}", EXIT_USAGE if exc.status in (400, 401, 403, 422) else 1)
        except TransportError as exc:
            fail(str(exc), EXIT_UNREACHABLE)

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
        r = j["result"]
        out.append(
            f"result:    {r.get('codec')} {r.get('width')}x{r.get('height')} "
            f"{r.get('duration_s')}s {r.get('size_bytes', 0)} bytes via {r.get('encoder')}"
        )
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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--url", envvar="FFRTMP_URL", default=None, help="Coordinator URL [env FFRTMP_URL]")
@click.option("--api-key", envvar="FFRTMP_API_KEY", default=None, help="API key [env FFRTMP_API_KEY]")
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
def cli(click_ctx: click.Context, url: str | None, api_key: str | None, output: str) -> None:
    """ffrtmp: a distributed FFmpeg transcoding fleet.

    Without --url/--api-key the CLI uses what `ffrtmp up` saved (~/.config/ffrtmp/cli.json)."""
    from .up import load_cli_config

    saved = load_cli_config() if url is None or api_key is None else {}
    click_ctx.obj = Ctx(
        url or saved.get("url") or "http://127.0.0.1:8080", api_key or saved.get("api_key"), output
    )


# ---------------------------------------------------------------------------- jobs
@cli.group()
def jobs() -> None:
    """Submit, inspect and cancel jobs."""


@jobs.command("submit")
@click.option("--scenario", "-s", required=True, type=click.Choice(list(PRESETS)), help="Named preset")
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
@click.option("--wait", "-w", is_flag=True, help="Show progress until the job ends; exit 0 only if completed")
@click.pass_obj
def jobs_submit(
    ctx: Ctx, wait: bool, labels: tuple[str, ...], input_: str | None, output_: str | None, **fields: Any
) -> None:
    """Submit a job."""
    body = {k: v for k, v in fields.items() if v is not None}
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
    job = ctx.call("POST", "/jobs", body)
    if not wait:
        ctx.emit(job, f"submitted {job['id']} ({job['scenario']} on {job['rq_queue']})")
        return
    if ctx.output != "json":
        click.echo(f"submitted {job['id']} ({job['scenario']} on {job['rq_queue']})", err=True)
    finish(ctx, follow(ctx, job["id"]))


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
        ctx.emit(data, _job_rows(data["jobs"]))
        return
    if follow_:
        finish(ctx, follow(ctx, job_id))
    job = ctx.call("GET", f"/jobs/{job_id}")
    ctx.emit(job, _job_detail(job))


@jobs.command("list")
@click.option("--state", default=None)
@click.option("--queue", default=None, help="Tier or queue name")
@click.option("--node", default=None)
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--cursor", default=None, help="From a previous page's next_cursor")
@click.pass_obj
def jobs_list(
    ctx: Ctx, state: str | None, queue: str | None, node: str | None, limit: int, cursor: str | None
) -> None:
    """List jobs, newest first."""
    from urllib.parse import urlencode

    params = {
        k: v
        for k, v in {"state": state, "queue": queue, "node": node, "limit": limit, "cursor": cursor}.items()
        if v is not None
    }
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
    data = ctx.call("GET", "/nodes")
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


@nodes.command("drain")
@click.argument("name")
@click.pass_obj
def nodes_drain(ctx: Ctx, name: str) -> None:
    """Stop NAME taking new jobs; its running jobs finish."""
    n = ctx.call("POST", f"/nodes/{name}/drain")
    ctx.emit(n, f"{name}: drain requested ({len(n.get('running') or [])} job(s) still running)")


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
    return f


def _start_fleet(port: int, slots: int, metrics_port: int, state_dir: Path | None) -> Any:
    from .up import Fleet, FleetError, default_state_dir, save_cli_config

    fleet = Fleet(
        (state_dir or default_state_dir()).absolute(),
        port=port,
        slots=slots,
        metrics_port=metrics_port,
        input_roots=[os.getcwd()],
    )
    try:
        fleet.start()
    except FleetError as exc:
        fleet.stop()
        fail(str(exc), EXIT_USAGE)
    cfg_path = save_cli_config(fleet.url, fleet.api_key)
    return fleet, cfg_path


@cli.command("up")
@_fleet_options
def up(port: int, slots: int, metrics_port: int, state_dir: Path | None) -> None:
    """Run a whole fleet on this machine (Redis, coordinator, agent) until Ctrl-C."""
    fleet, cfg_path = _start_fleet(port, slots, metrics_port, state_dir)
    stop = {"signal": None}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    click.echo(f"ffrtmp local fleet is up ({slots} slots)")
    click.echo(f"  URL:      {fleet.url}")
    click.echo(f"  API key:  {fleet.api_key}   (saved for the CLI in {cfg_path})")
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
    port: int, slots: int, metrics_port: int, state_dir: Path | None, scenario: str, clip_seconds: float
) -> None:
    """Start a local fleet, generate a 1080p clip with FFmpeg, transcode it with progress, stop."""
    import subprocess

    from ..media import make_clip

    fleet, _ = _start_fleet(port, slots, metrics_port, state_dir)
    try:
        clip = fleet.inputs / "demo-source-1080p.mp4"
        click.echo(f"generating a {clip_seconds:g}s 1080p test clip: {clip}", err=True)
        try:
            make_clip(clip, seconds=clip_seconds, size="1920x1080", fps=30)
        except subprocess.CalledProcessError as exc:
            fail(f"could not generate the clip: {exc.stderr.decode(errors='replace')[-300:]}")
        ctx = Ctx(fleet.url, fleet.api_key, "table")
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


def main() -> None:
    cli(prog_name="ffrtmp")


if __name__ == "__main__":
    main()
