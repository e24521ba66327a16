"""End to end through the `ffrtmp` CLI against `ffrtmp up`, checked with ffprobe."""

import contextlib
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import BIN, LocalFleet, ffprobe, free_port, make_clip, require, video_stream

pytestmark = pytest.mark.e2e
TERMINAL = {"completed", "failed", "timed_out", "canceled", "rejected"}


def wait_terminal(fleet, job_id, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = fleet.cli_json("jobs", "status", job_id)
        if job["state"] in TERMINAL:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not terminal after {timeout}s: {job}")


def wait_state(fleet, job_id, state, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = fleet.cli_json("jobs", "status", job_id)
        if job["state"] == state:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {state}: {job}")


def submit(fleet, *args):
    job = fleet.cli_json("jobs", "submit", *args)
    assert "id" in job, job
    return job["id"]


def assert_media(path, codec, width, height, duration, tol=0.35):
    info = ffprobe(path)
    v = video_stream(info)
    assert v["codec_name"] == codec, (path, v["codec_name"])
    assert (v["width"], v["height"]) == (width, height)
    assert abs(float(info["format"]["duration"]) - duration) <= tol, info["format"]["duration"]
    assert any(s["codec_type"] == "audio" for s in info["streams"])


FILE_CASES = [
    ("1080p-h264", ["--duration", "2"], "h264", 1920, 1080, 2),
    ("720p-h264", ["--duration", "2"], "h264", 1280, 720, 2),
    ("480p-h264", ["--duration", "2"], "h264", 854, 480, 2),
    ("4k-h265", ["--duration", "1", "--fps", "5"], "hevc", 3840, 2160, 1),
    (
        "live-4k",
        ["--duration", "1", "--fps", "10", "--queue", "live", "--priority", "high"],
        "h264",
        3840,
        2160,
        1,
    ),
    ("720p-h264", ["--duration", "2", "--codec", "vp9", "--output", "vp9/clip.webm"], "vp9", 1280, 720, 2),
]


@pytest.mark.parametrize(("scenario", "extra", "codec", "w", "h", "dur"), FILE_CASES)
def test_file_scenarios_complete_and_ffprobe_agrees(fleet, scenario, extra, codec, w, h, dur):
    res = fleet.cli("jobs", "submit", "--scenario", scenario, *extra, "--wait", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    line = res.stdout.strip().splitlines()[-1]
    assert line.startswith("job ") and " completed: " in line
    out = line.split(" completed: ", 1)[1]
    assert out.startswith(str(fleet.outputs)) and os.path.isfile(out)
    assert_media(out, codec, w, h, dur)
    # no temporary file is left beside the output
    assert not [p for p in Path(out).parent.iterdir() if p.name.startswith(".")]


def test_transcode_of_a_real_clip_from_an_input_root(fleet):
    make_clip(fleet.inputs / "src.mp4", seconds=3, size="1280x720")
    jid = submit(fleet, "--scenario", "480p-h264", "--input", "src.mp4", "--output", "from-src.mp4")
    followed = fleet.cli("jobs", "status", jid, "--follow")
    assert followed.returncode == 0 and f"job {jid} completed" in followed.stdout, followed.stderr
    assert jid in followed.stderr and "%" in followed.stderr  # the progress lines
    job = wait_terminal(fleet, jid)
    assert job["state"] == "completed", job
    assert_media(fleet.outputs / "from-src.mp4", "h264", 854, 480, 3)
    assert job["progress"]["percent"] == 100.0  # duration known from ffprobe of the input


def test_hls_ladder_playlists_parse_and_renditions_are_right(fleet):
    import re

    jid = submit(fleet, "--scenario", "hls-ladder", "--duration", "6", "--output", "ladder")
    job = wait_terminal(fleet, jid)
    assert job["state"] == "completed", job
    root = fleet.outputs / "ladder"
    master = (root / "master.m3u8").read_text().splitlines()
    assert master[0] == "#EXTM3U"
    infs = {master[i + 1]: ln for i, ln in enumerate(master) if ln.startswith("#EXT-X-STREAM-INF")}
    variants = list(infs)
    assert len(variants) == 3
    sizes = set()
    for rel in variants:
        playlist = (root / rel).read_text()
        assert playlist.startswith("#EXTM3U") and "#EXT-X-ENDLIST" in playlist
        segs = [ln for ln in playlist.splitlines() if ln and not ln.startswith("#")]
        assert len(segs) >= 2 and all((root / rel).parent.joinpath(s).is_file() for s in segs)
        # RFC 8216: BANDWIDTH is at least every segment's bit rate; AVERAGE-BANDWIDTH and
        # FRAME-RATE are there (measured here from the files, independently of the agent)
        durs = [float(x) for x in re.findall(r"#EXTINF:([0-9.]+)", playlist)]
        rates = [
            (root / rel).parent.joinpath(s).stat().st_size * 8 / d for s, d in zip(segs, durs, strict=True)
        ]
        attrs = dict(re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', infs[rel].split(":", 1)[1]))
        assert int(attrs["BANDWIDTH"]) >= max(rates) and attrs["FRAME-RATE"] == "30.000", attrs
        total = sum((root / rel).parent.joinpath(s).stat().st_size * 8 for s in segs) / sum(durs)
        assert abs(int(attrs["AVERAGE-BANDWIDTH"]) - total) <= 1 and "CODECS" in attrs
        v = video_stream(ffprobe(root / rel))
        sizes.add((v["width"], v["height"]))
        assert v["codec_name"] == "h264"
    assert sizes == {(1920, 1080), (1280, 720), (854, 480)}


def test_http_input_inside_the_network_needs_an_allowed_range(fleet, tmp_path):
    """The shared fleet refuses a loopback URL (the default URL policy) with one message that
    says nothing of what listens there; a fleet whose agent allows 127.0.0.0/8 encodes it."""
    make_clip(tmp_path / "web.mp4", seconds=2)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/web.mp4"
    closed = f"http://127.0.0.1:{free_port()}/nothing-listens.mp4"
    (tmp_path / "lan").mkdir()
    lan = LocalFleet(tmp_path / "lan", slots=1, env={"FFRTMP_ALLOW_URL_NETWORKS": "127.0.0.0/8"})
    try:
        errors = []
        for target in (url, closed):
            refused = wait_terminal(fleet, submit(fleet, "--scenario", "480p-h264", "--input", target))
            assert refused["state"] == "rejected", refused
            errors.append((refused["error"]["reason"], refused["error"]["message"]))
        assert errors == [("destination_not_allowed", "destination not allowed")] * 2  # no port-scan oracle
        jid = submit(lan, "--scenario", "480p-h264", "--input", url, "--output", "from-http.mp4")
        job = wait_terminal(lan, jid)
        assert job["state"] == "completed", job
        assert_media(lan.outputs / "from-http.mp4", "h264", 854, 480, 2)
    finally:
        srv.shutdown()
        lan.stop()


def test_a_live_input_that_never_arrives_ends_input_stalled_not_at_the_timeout(tmp_path):
    """An RTMP source that accepts the connection and then sends nothing: the run is stopped
    once its progress has not moved for --stall-after, retried as a platform failure, and the
    job ends failed with input_stalled, long before its 6-hour default timeout."""
    import socket

    held: list[socket.socket] = []
    srv = socket.create_server(("127.0.0.1", 0))

    def hold() -> None:  # accept and never answer, until the test closes the socket
        with contextlib.suppress(OSError):
            while True:
                held.append(srv.accept()[0])

    threading.Thread(target=hold, daemon=True).start()
    url = f"rtmp://127.0.0.1:{srv.getsockname()[1]}/live/nobody"
    env = {"FFRTMP_ALLOW_URL_NETWORKS": "127.0.0.0/8", "FFRTMP_STALL_AFTER": "3s"}
    lan = LocalFleet(tmp_path, slots=1, env=env)
    try:
        t0 = time.monotonic()
        jid = submit(
            lan, "--scenario", "480p-h264", "--input", url, "--max-attempts", "2", "--output", "x.mp4"
        )
        job = wait_terminal(lan, jid, timeout=120)
        assert job["state"] == "failed" and job["error"]["reason"] == "input_stalled", job
        assert job["attempts"] == 2 and time.monotonic() - t0 < 60
        reasons = [h["reason"] for h in lan.cli_json("jobs", "status", jid)["history"]]
        assert reasons.count("input_stalled") == 2, reasons
        assert not [p for p in psutil.process_iter(["cmdline"]) if url in " ".join(p.info["cmdline"] or [])]
    finally:
        lan.stop()
        srv.close()


def test_rtmp_restream_pushes_to_a_real_rtmp_listener(fleet, tmp_path):
    require("ffmpeg")
    port = free_port()
    received = tmp_path / "received.flv"
    listener = subprocess.Popen(
        [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-listen",
            "1",
            "-timeout",
            "60",
            "-i",
            f"rtmp://127.0.0.1:{port}/live/test",
            "-c",
            "copy",
            "-y",
            str(received),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1)
        jid = submit(
            fleet,
            "--scenario",
            "rtmp-restream",
            "--duration",
            "3",
            "--resolution",
            "640x360",
            "--output",
            f"rtmp://127.0.0.1:{port}/live/test",
        )
        job = wait_terminal(fleet, jid)
        assert job["state"] == "completed", job
        listener.wait(30)
    finally:
        listener.kill()
    assert_media(received, "h264", 640, 360, 3, tol=0.5)


def test_go_system_commands_work_verbatim_and_cancel_stops_ffmpeg(fleet):
    res = fleet.cli(
        "jobs",
        "submit",
        "--scenario",
        "live-4k",
        "--queue",
        "live",
        "--priority",
        "high",
        "--duration",
        "3600",
        "--bitrate",
        "10000k",
        check=True,
    )
    jid = res.stdout.split()[1]
    job = wait_state(fleet, jid, "running")
    status = fleet.cli("jobs", "status", check=True)
    assert jid in status.stdout and "running" in status.stdout
    detail = fleet.cli("jobs", "status", jid, check=True).stdout
    assert "live-4k" in detail and "live/high" in detail
    time.sleep(1)
    res = fleet.cli("jobs", "cancel", jid, check=True)
    assert "cancel requested" in res.stdout
    job = wait_terminal(fleet, jid, timeout=45)
    assert job["state"] == "canceled" and job["error"]["reason"] == "canceled"
    assert [h["to"] for h in job["history"]][-1] == "canceled"
    run_dir = job.get("spec") and fleet.state / "agent" / "runs" / jid
    pids = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if p.info["cmdline"]
        and p.info["cmdline"][0].endswith("ffmpeg")
        and jid in " ".join(p.info["cmdline"])
    ]
    assert not pids and run_dir.exists()
    assert not list(fleet.outputs.glob(f".{jid}*"))  # temp output removed


def test_cancel_queued_job_never_runs(fleet):
    # fill the general slot (default work), then the live-only slot, then cancel a queued batch job
    blockers = []
    for q in ("default", "live"):
        blockers.append(
            submit(
                fleet, "--scenario", "live-4k", "--queue", q, "--duration", "60", "--resolution", "320x240"
            )
        )
        wait_state(fleet, blockers[-1], "running")
    jid = submit(fleet, "--scenario", "480p-h264", "--queue", "batch", "--duration", "1")
    res = fleet.cli("jobs", "cancel", jid, check=True)
    assert f"{jid} canceled" in res.stdout
    job = fleet.cli_json("jobs", "status", jid)
    assert job["state"] == "canceled" and job["attempts"] == 0
    again = fleet.cli("jobs", "cancel", jid)
    assert again.returncode != 0 and "already" in again.stderr
    for b in blockers:
        fleet.cli("jobs", "cancel", b, check=True)
        assert wait_terminal(fleet, b, timeout=45)["state"] == "canceled"


def test_workload_failure_is_terminal_with_ffmpeg_error(fleet):
    (fleet.inputs / "corrupt.mp4").write_bytes(b"\x00\x01not a video" * 100)
    res = fleet.cli("jobs", "submit", "--scenario", "480p-h264", "--input", "corrupt.mp4", "--wait")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert " failed: ffmpeg_error" in res.stdout
    jid = res.stdout.split()[1]
    job = fleet.cli_json("jobs", "status", jid)
    assert job["attempts"] == 1 and job["error"]["exit_code"] not in (0, None)
    assert "Invalid data" in job["error"]["stderr_tail"] or "moov atom" in job["error"]["stderr_tail"]
    logs = fleet.cli("jobs", "logs", jid, check=True).stdout
    assert "--- attempt 1 ---" in logs


def test_missing_input_fails_without_retry(fleet):
    jid = submit(fleet, "--scenario", "480p-h264", "--input", "no-such-file.mp4")
    job = wait_terminal(fleet, jid)
    assert job["state"] == "failed" and job["error"]["reason"] == "input_not_found" and job["attempts"] == 1


def test_cli_user_errors_are_one_line_without_traceback(fleet):
    cases = [
        (["jobs", "submit", "--scenario", "720p-h264", "--input", "../etc/passwd"], "input"),
        (["jobs", "submit", "--scenario", "720p-h264", "--bitrate", "lots"], "bitrate"),
        (["jobs", "submit", "--scenario", "nope"], "scenario"),
        (["jobs", "status", "jdoesnotexist"], "no job"),
        (["--api-key", "ffr_wrong", "jobs", "list"], "API key"),
        (["--url", "http://127.0.0.1:1", "jobs", "list"], "coordinator"),
        (["--url", "not-a-url", "jobs", "list"], "--url"),
        (["--url", "http://h:notaport", "jobs", "list"], "--url"),
        (["jobs", "status", "ja\nb"], "cannot send"),
        (["nodes", "drain", "no-such-node", "--wait", "--timeout", "soon"], "timeout"),
    ]
    for args, word in cases:
        res = fleet.cli(*args, timeout=60)
        assert res.returncode != 0, args
        assert "Traceback" not in res.stderr and word in res.stderr, (args, res.stderr)


def test_loadtest_reports_every_job_it_sent_and_refuses_bad_mixes(fleet):
    """A small load test through the real fleet: every job completes, the report's numbers
    are the jobs' own (found again by the run's label), and a PNG chart is written."""
    import json

    out = fleet.tmp / "lt"
    res = fleet.cli(
        *("loadtest", "quick", "--jobs", "6", "--rate", "6", "--duration", "1s"),
        *("--scenario", "480p-h264=2", "--scenario", "720p-h264", "--report-dir", str(out)),
        timeout=240,
    )
    assert res.returncode == 0, res.stderr
    assert "submitted 6/6" in res.stderr and "completed 6" in res.stderr  # the progress line
    raw = json.loads((out / "loadtest.json").read_text())
    summary = raw["summary"]
    assert summary["submitted"] == 6 and summary["completed"] == 6 and summary["not_ended"] == []
    assert sorted(j["scenario"] for j in raw["jobs"]) == ["480p-h264"] * 4 + ["720p-h264"] * 2
    assert {j["labels"]["loadtest"] for j in raw["jobs"]} == {summary["run_id"]}
    wait = summary["per_tier"]["default"]["queue_wait_s"]
    assert summary["per_tier"]["default"]["jobs"] == 6 and wait["p50"] <= wait["p99"]
    assert summary["submit_latency_s"]["p50"] > 0 and "coordinator" in summary["processes"]
    agents = summary["agents"]  # from the agents' own heartbeats, as for a remote fleet
    assert len(agents) == 1, agents
    assert all(a["heartbeats"] > 0 and a["cpu_pct_max"] is not None for a in agents.values()), agents
    assert "## Agents" in (out / "report.md").read_text()
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| completed | 6 (100.0%) |" in (out / "report.md").read_text()
    for args, word in (
        (["loadtest", "--scenario", "nope"], "unknown nope"),
        (["loadtest", "--scenario", "480p-h264=lots"], "whole number"),
        (["--url", "http://127.0.0.1:1", "loadtest"], "coordinator"),
    ):
        res = fleet.cli(*args, timeout=60)
        assert res.returncode != 0 and "Traceback" not in res.stderr and word in res.stderr, res.stderr


def test_output_json_prints_exactly_what_the_api_returned(fleet):
    import json
    import urllib.request

    req = urllib.request.Request(fleet.url + "/nodes", headers={"Authorization": f"Bearer {fleet.api_key}"})
    api = json.loads(urllib.request.urlopen(req).read())
    cli = fleet.cli_json("nodes", "list")
    assert cli.keys() == api.keys() and [n["name"] for n in cli["nodes"]] == [n["name"] for n in api["nodes"]]
    text = fleet.cli("nodes", "list", check=True).stdout
    assert "alive" in text


def test_up_stops_cleanly_with_nothing_left_running(tmp_path):
    f = LocalFleet(tmp_path)
    state = str(f.state)
    jid = f.cli_json(
        "jobs",
        "submit",
        "--scenario",
        "live-4k",
        "--duration",
        "600",
        "--resolution",
        "320x240",
        "--queue",
        "live",
    )["id"]
    wait_state(f, jid, "running")
    children = psutil.Process(f.proc.pid).children(recursive=True)
    assert children
    assert f.stop() == 0
    time.sleep(0.5)
    left = []
    for p in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except psutil.Error:
            continue
        if state in cmd or jid in cmd:
            left.append(cmd)
    assert not left, left
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_up_restarts_at_once_on_its_ports_keeps_its_key_and_knows_its_roots(tmp_path):
    """A stop then a start on the same ports works at once (the sockets the stop left in
    TIME_WAIT do not count as in use); the API key is kept (a Prometheus configured with it
    keeps working) unless --rotate-key; an input outside the roots is refused at submission."""
    first = LocalFleet(tmp_path)
    key, ports = first.api_key, (first.port, first.metrics_port)
    try:
        res = first.cli("jobs", "submit", "--scenario", "480p-h264", "--input", "/etc/passwd")
        assert res.returncode == 2 and "field 'input'" in res.stderr, res.stderr
        for _ in range(5):  # connections the server closes: its side lingers in TIME_WAIT
            first.cli("jobs", "list", check=True)
    finally:
        assert first.stop() == 0
    again = LocalFleet(tmp_path, ports=ports)
    try:
        assert again.api_key == key
        again.cli("jobs", "list", check=True)
    finally:
        again.stop()
    rotated = LocalFleet(tmp_path, ports=ports, extra=("--rotate-key",))
    try:
        assert (
            rotated.api_key != key and rotated.api_key == (tmp_path / "state" / "api-key").read_text().strip()
        )
        assert (tmp_path / "state" / "api-key").stat().st_mode & 0o077 == 0
        rotated.cli("jobs", "list", check=True)
    finally:
        rotated.stop()


def test_up_says_what_to_install_when_a_tool_is_missing(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("ffmpeg", "ffprobe"):
        os.symlink(require(tool), bindir / tool)
    env = {**os.environ, "PATH": f"{bindir}:{Path(sys.executable).parent}", "XDG_CONFIG_HOME": str(tmp_path)}
    res = subprocess.run(
        [
            str(Path(sys.executable).parent / "ffrtmp"),
            "up",
            "--state-dir",
            str(tmp_path / "s"),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "redis-server not found" in res.stderr and "apt-get install redis-server" in res.stderr


def test_retry_by_hand_after_fixing_the_input(fleet):
    bad = fleet.inputs / "fixme.mp4"
    bad.write_bytes(b"garbage" * 100)
    res = fleet.cli(
        "jobs", "submit", "--scenario", "480p-h264", "--input", "fixme.mp4", "--output", "fixed.mp4", "--wait"
    )
    jid = res.stdout.split()[1]
    assert res.returncode == 1 and fleet.cli_json("jobs", "status", jid)["state"] == "failed"
    make_clip(bad, seconds=2)
    res = fleet.cli("jobs", "retry", jid, "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    job = fleet.cli_json("jobs", "status", jid)
    assert job["state"] == "completed" and job["attempts"] == 2 and job["error"] is None
    steps = [(h["from"], h["to"]) for h in job["history"]]
    assert steps[-3:] == [("failed", "queued"), ("queued", "running"), ("running", "completed")]
    assert "retried by" in job["history"][-3]["reason"]
    assert_media(fleet.outputs / "fixed.mp4", "h264", 854, 480, 2)
    again = fleet.cli("jobs", "retry", jid)
    assert again.returncode != 0 and "only failed, timed_out, canceled or rejected" in again.stderr


def test_demo_transcodes_a_generated_clip_and_stops(tmp_path):
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    res = subprocess.run(
        [
            str(Path(sys.executable).parent / "ffrtmp"),
            "demo",
            "--clip-seconds",
            "2",
            "--port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout.strip().splitlines()[-1].removeprefix("output: ")
    assert out.startswith(str(tmp_path / "state" / "outputs")) and "completed" in res.stdout
    assert_media(out, "h264", 1280, 720, 2)
    assert "%" in res.stderr  # progress was shown
    left = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert not left


def test_a_submit_retried_by_the_cli_carries_one_idempotency_key(tmp_path):
    """The coordinator answers the first POST 503 (stalled behind a proxy): the CLI retries it
    with the same Idempotency-Key, so the coordinator can never make two jobs of one submit."""
    import json as _json

    seen: list[str | None] = []

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(self.headers.get("Idempotency-Key"))
            if len(seen) == 1:
                self.send_response(503)
                self.end_headers()
                return
            body = _json.dumps(
                {"id": "jflaky", "scenario": "480p-h264", "rq_queue": "default.medium"}
            ).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path)}
        res = subprocess.run(
            [
                str(BIN / "ffrtmp"),
                "--url",
                f"http://127.0.0.1:{srv.server_address[1]}",
                "--api-key",
                "k",
                "jobs",
                "submit",
                "-s",
                "480p-h264",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        srv.shutdown()
    assert res.returncode == 0 and "jflaky" in res.stdout, res.stdout + res.stderr
    assert len(seen) == 2 and seen[0] and seen[0] == seen[1], seen


def test_up_with_tls_serves_https_only_and_keeps_its_state_private(tmp_path):
    import stat
    import urllib.error
    import urllib.request

    f = LocalFleet(tmp_path, slots=1, extra=("--tls",))
    try:
        assert f.url.startswith("https://127.0.0.1:")
        res = f.cli("jobs", "submit", "--scenario", "480p-h264", "--duration", "1", "--wait", timeout=240)
        assert res.returncode == 0, res.stderr  # the CLI trusts the CA `up` saved for it
        with pytest.raises(ConnectionResetError):  # plain HTTP is not served
            urllib.request.urlopen(f.url.replace("https", "http") + "/health", timeout=5)
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f.url + "/health", timeout=5)  # nor trusted without the CA
        for d in ("redis", "logs", "agent", "tls"):
            assert stat.S_IMODE((f.state / d).stat().st_mode) == 0o700, d
        for p in [*(f.state / "logs").iterdir(), *(f.state / "tls").glob("*.key")]:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    finally:
        assert f.stop() == 0
