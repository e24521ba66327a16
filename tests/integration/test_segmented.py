"""Segmented encoding with real parts: Redis, a coordinator, two agents sharing the input and
output roots, FFmpeg. A 60 s clip (source keyframes every 8.3 s) is encoded once on one node
and once segmented into at least four child jobs across both agents; the two outputs must agree
in duration, frame count, resolution and codec, the joins must keep PTS/DTS monotonic and the
audio as long as the video, and the quality at the joins is measured with FFmpeg's psnr filter
against the source. Faults: an agent running a segment is SIGKILLed (that segment alone runs
again, the output is the same); the agent following a job is SIGKILLed and restarted (it follows
the job again on the same attempt); a canceled job cancels its segments, leaves no FFmpeg running
(process table) and no segment file behind."""

import contextlib
import itertools
import json
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from ffrtmp.cli.client import Client
from tests.conftest import make_clip, require
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration
TERMINAL = {"completed", "failed", "canceled", "timed_out", "rejected"}
SPEC = {"scenario": "480p-h264", "resolution": "640x360", "bitrate": "1000k", "fps": 30}
FRAME_S = 1 / 30


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """One fleet for the module (each test names its own outputs)."""
    require("ffprobe")
    tmp_path = tmp_path_factory.mktemp("segmented")
    s = Stack(tmp_path)
    s.start_redis()
    s.start_coordinator()
    for name in ("seg-a", "seg-b"):
        s.start_agent(name, "--slots", "2", "--live-slots", "0")
    client = Client(f"http://127.0.0.1:{s.port}", s.key, retry_initial=0.5, retries=8)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if len(client.get("/nodes").get("nodes", [])) == 2:
                break
        except Exception:
            pass
        time.sleep(0.5)
    else:
        pytest.fail("two agents never came up:\n" + (tmp_path / "seg-a.log").read_text()[-2000:])
    s.client = client  # type: ignore[attr-defined]
    yield s
    s.stop()


def long_clip(stack: Stack) -> Path:
    """The 60 s test input, made once per module."""
    path = stack.inputs / "long.mp4"
    if not path.exists():
        make_clip(path, 60, "640x360", 30)
    return path


def wait_terminal(client: Client, job_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = client.get(f"/jobs/{job_id}")
        if view["state"] in TERMINAL:
            return view
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not terminal: {view}")


def probe_stream(path: Path, stream: str) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", stream, "-count_packets", "-show_entries",
         "stream=codec_name,width,height,nb_read_packets,duration:format=duration", "-of", "json", str(path)],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    info = json.loads(out.stdout)
    return {**info["streams"][0], "format_duration": float(info["format"]["duration"])}


def packet_times(path: Path) -> list[tuple[float, float]]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,dts_time",
         "-of", "csv=p=0", str(path)],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    return [tuple(float(x) for x in ln.split(",")[:2]) for ln in out.stdout.split() if ln]


def psnr_per_frame(encoded: Path, source: Path) -> list[float]:
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(encoded), "-i", str(source), "-lavfi",
         "[0:v]settb=AVTB,setpts=PTS-STARTPTS[a];[1:v]settb=AVTB,setpts=PTS-STARTPTS[b];"
         "[a][b]psnr=stats_file=-", "-f", "null", "-"],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    values = []
    for line in out.stdout.splitlines():
        fields = dict(f.split(":", 1) for f in line.split() if ":" in f)
        if "psnr_avg" in fields:
            values.append(min(float(fields["psnr_avg"]), 100.0) if fields["psnr_avg"] != "inf" else 100.0)
    return values


def assert_whole_60s(path: Path) -> None:
    """The joined output holds every frame of the 60 s input at 30 fps, within one frame."""
    out = probe_stream(path, "v:0")
    assert out["nb_read_packets"] == "1800" and abs(out["format_duration"] - 60.0) <= FRAME_S + 1e-3, out


def children_of(client: Client, view: dict) -> list[dict]:
    return [client.get(f"/jobs/{c}") for c in view["segments"]["children"]]


def test_segmented_equals_single_node_across_two_agents(stack: Stack) -> None:
    client = stack.client  # type: ignore[attr-defined]
    long_clip(stack)
    single = client.post("/jobs", {**SPEC, "input": "long.mp4", "output": "single.mp4"})
    single = wait_terminal(client, single["id"])
    assert single["state"] == "completed", single
    seg = client.post(
        "/jobs",
        {**SPEC, "input": "long.mp4", "output": "joined.mp4", "segmented": True, "segment_seconds": 15},
    )
    assert seg["rq_queue"].endswith(".plan")
    seg = wait_terminal(client, seg["id"])
    assert seg["state"] == "completed", seg
    kids = children_of(client, seg)
    assert len(kids) >= 4, seg["segments"]
    assert all(k["state"] == "completed" and k["parent"] == seg["id"] for k in kids)
    assert len({k["node"] for k in kids}) == 2, [k["node"] for k in kids]  # spread over both agents
    listed = client.get(f"/jobs?label=ffrtmp.parent={seg['id']}&limit=100")["jobs"]
    assert {j["id"] for j in listed} == {k["id"] for k in kids}

    a, b = stack.outputs / "single.mp4", stack.outputs / "joined.mp4"
    va, vb = probe_stream(a, "v:0"), probe_stream(b, "v:0")
    assert (vb["codec_name"], vb["width"], vb["height"]) == (va["codec_name"], va["width"], va["height"])
    assert vb["nb_read_packets"] == va["nb_read_packets"] == "1800"
    assert abs(vb["format_duration"] - va["format_duration"]) <= FRAME_S + 1e-3
    audio = probe_stream(b, "a:0")
    assert abs(float(audio["duration"]) - float(vb["duration"])) <= 0.05, (audio, vb)
    times = packet_times(b)
    dts = [d for _, d in times]
    assert all(later > earlier for earlier, later in itertools.pairwise(dts)), "DTS not monotonic"
    pts = sorted(p for p, _ in times)
    assert all(later > earlier for earlier, later in itertools.pairwise(pts)), "a PTS repeats"

    src = stack.inputs / "long.mp4"
    p_single, p_seg = psnr_per_frame(a, src), psnr_per_frame(b, src)
    assert len(p_single) == len(p_seg) == 1800
    mean = sum(p_seg) / 1800 - sum(p_single) / 1800
    cuts = seg["segments"]["cuts"][1:-1]
    worst = min(
        p_seg[i] - p_single[i] for c in cuts for i in range(max(0, round(c * 30) - 15), round(c * 30) + 15)
    )
    print(
        f"PSNR vs source: segmented - single = {mean:+.3f} dB mean, worst frame near a join {worst:+.2f} dB"
    )
    assert mean >= -0.5 and worst >= -3.0
    assert not (stack.outputs / ".ffrtmp-segments" / seg["id"]).exists()  # no intermediates left


def ffmpeg_pids_for(job_id: str) -> list[int]:
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(p.info.get("cmdline") or [])
        if p.info.get("name") == "ffmpeg" and job_id in cmd:
            found.append(p.pid)
    return found


def kill_host(stack: Stack, name: str) -> list[int]:
    """SIGKILL the agent ``name`` with its slots, horses, run supervisors and FFmpeg."""
    root = psutil.Process(stack.agents[name].pid)
    procs = [root, *root.children(recursive=True)]
    marker = f"work-{name}"
    for p in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in p.info.get("cmdline") or []):
            procs.append(p)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    stack.agents[name].wait(10)
    return [p.pid for p in procs]


def wait_running_child(client: Client, job_id: str, timeout: float = 120) -> tuple[dict, list[dict]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = client.get(f"/jobs/{job_id}")
        if view.get("segments"):
            kids = children_of(client, view)
            running = [k for k in kids if k["state"] == "running" and (k.get("progress") or {}).get("frame")]
            if running:
                return view, running
        time.sleep(0.3)
    raise AssertionError(f"no segment of {job_id} ever ran")


def start_segmented(stack: Stack, output: str, **extra: object) -> tuple[Client, dict, dict, list[dict]]:
    """Submit a segmented encode of the 60 s input; return once one of its segments encodes."""
    client = stack.client  # type: ignore[attr-defined]
    long_clip(stack)
    spec = {**SPEC, "input": "long.mp4", "output": output, "segmented": True, "segment_seconds": 15, **extra}
    job = client.post("/jobs", spec)
    view, running = wait_running_child(client, job["id"])
    return client, job, view, running


def test_a_killed_segment_runs_again_alone_and_the_join_is_whole(stack: Stack) -> None:
    client, job, view, running = start_segmented(stack, "k.mp4")
    victim = running[0]["node"]
    on_victim = {
        k["id"] for k in children_of(client, view) if k["state"] == "running" and k["node"] == victim
    }
    killed = kill_host(stack, victim)  # the agent and every process of its runs: a host lost
    assert killed, "nothing of the victim was running"
    stack.start_agent(victim, "--slots", "2", "--live-slots", "0")
    end = wait_terminal(client, job["id"])
    assert end["state"] == "completed", end
    kids = children_of(client, end)
    assert all(k["state"] == "completed" for k in kids)
    again = {k["id"] for k in kids if k["attempts"] > 1}
    assert on_victim <= again, (on_victim, again)  # what ran on the lost host ran again
    assert again == on_victim, f"only the killed segments run again: {again} vs {on_victim}"
    assert_whole_60s(stack.outputs / "k.mp4")


def test_an_agent_restarted_under_a_following_job_follows_it_again_on_the_same_attempt(stack: Stack) -> None:
    client, job, view, _ = start_segmented(stack, "f.mp4")
    follower = view["node"]
    stack.kill_agent(follower)  # the agent's own process: its planner slot's horse dies with it
    stack.start_agent(follower, "--slots", "2", "--live-slots", "0")
    end = wait_terminal(client, job["id"])
    assert end["state"] == "completed" and end["attempts"] == 1, end
    assert [h["to"] for h in end["history"]].count("queued") == 1, end["history"]  # never requeued
    log = (stack.tmp / f"{follower}.log").read_text()
    assert "adopted run of job " + job["id"] in log
    assert_whole_60s(stack.outputs / "f.mp4")


def test_cancel_reaches_every_segment_and_leaves_nothing(stack: Stack) -> None:
    # slow enough to be canceled mid-run
    client, job, _, _ = start_segmented(stack, "c.mp4", segment_seconds=10, preset="medium")
    deadline = time.monotonic() + 20  # the parent shows its segments' progress as its own
    while time.monotonic() < deadline and not (client.get(f"/jobs/{job['id']}").get("progress") or {}).get(
        "out_time_s"
    ):
        time.sleep(0.3)
    view = client.get(f"/jobs/{job['id']}")
    progress = view["progress"]
    assert progress["out_time_s"] > 0 and progress["segments"] == view["segments"]["count"], progress
    client.post(f"/jobs/{job['id']}/cancel")
    end = wait_terminal(client, job["id"], timeout=180)
    assert end["state"] == "canceled", end
    assert_segments_stopped_and_gone(stack, client, end, "c.mp4")


def test_the_timeout_of_a_segmented_job_stops_every_segment_and_leaves_nothing(stack: Stack) -> None:
    client = stack.client  # type: ignore[attr-defined]
    long_clip(stack)  # 60 s at x264 veryslow: each 10 s segment alone takes longer than 8 s here
    spec = {**SPEC, "input": "long.mp4", "output": "t.mp4", "segmented": True, "segment_seconds": 10}
    job = client.post("/jobs", {**spec, "preset": "veryslow", "timeout": 8})
    end = wait_terminal(client, job["id"], timeout=180)
    assert end["state"] == "timed_out" and end["error"]["reason"] == "timed_out", end
    assert_segments_stopped_and_gone(stack, client, end, "t.mp4")


def assert_segments_stopped_and_gone(stack: Stack, client: Client, end: dict, output: str) -> None:
    """Every segment of an ended job ends too (none completes as if it mattered), no FFmpeg of
    it runs (the process table), and neither its segment files nor an output are left."""
    job = end
    deadline = time.monotonic() + 60  # the segments end within their grace
    while time.monotonic() < deadline:
        kids = children_of(client, end)
        if all(k["state"] in TERMINAL for k in kids):
            break
        time.sleep(0.3)
    # a segment ends canceled by its parent, or on its own (done, or past the same timeout)
    ended = ("canceled", "completed", "timed_out")
    assert all(k["state"] in ended for k in kids), [k["state"] for k in kids]
    assert any(k["state"] == "canceled" for k in kids)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and ffmpeg_pids_for(job["id"]):
        time.sleep(0.2)
    assert not ffmpeg_pids_for(job["id"]), "an FFmpeg of a canceled segment still runs"
    left = stack.outputs / ".ffrtmp-segments" / job["id"]
    deadline = time.monotonic() + 30  # the parent removes them once its segments have ended
    while time.monotonic() < deadline and left.exists():
        time.sleep(0.2)
    assert not left.exists()
    assert not (stack.outputs / output).exists()


@pytest.mark.parametrize(
    ("scenario", "codec", "output", "probe_name"),
    [
        ("480p-h264", "vp9", "v.webm", "vp9"),
        ("4k-h265", "h265", "h.mp4", "hevc"),
        ("720p-h264", "av1", "a.mp4", "av1"),
    ],
)
def test_other_codecs_join_into_their_containers(stack: Stack, scenario, codec, output, probe_name) -> None:
    client = stack.client  # type: ignore[attr-defined]
    if not (stack.inputs / "short.mp4").exists():
        make_clip(stack.inputs / "short.mp4", 12, "320x240", 30)
    spec = {"scenario": scenario, "codec": codec, "resolution": "320x240", "fps": 30, "input": "short.mp4"}
    job = client.post("/jobs", {**spec, "output": output, "segmented": True, "segment_seconds": 4})
    end = wait_terminal(client, job["id"])
    assert end["state"] == "completed", end
    assert end["segments"]["count"] >= 3
    video = probe_stream(stack.outputs / output, "v:0")
    assert video["codec_name"] == probe_name and video["nb_read_packets"] == "360"
    assert abs(video["format_duration"] - 12.0) <= 2 * FRAME_S
    assert probe_stream(stack.outputs / output, "a:0")["codec_name"] == ("opus" if codec == "vp9" else "aac")


def rendition_playlists(root: Path) -> list[Path]:
    """The variant playlists a master playlist names, in its order."""
    lines = (root / "master.m3u8").read_text().split()
    return [root / ln for ln in lines if ln and not ln.startswith("#")]


def test_an_hls_ladder_is_segmented_per_rendition_and_joined_into_each_playlist(stack: Stack) -> None:
    client = stack.client  # type: ignore[attr-defined]
    if not (stack.inputs / "short.mp4").exists():
        make_clip(stack.inputs / "short.mp4", 12, "320x240", 30)
    spec = {"scenario": "hls-ladder", "input": "short.mp4", "preset": "ultrafast"}
    single = wait_terminal(client, client.post("/jobs", {**spec, "output": "ladder-single"})["id"])
    assert single["state"] == "completed", single
    job = client.post("/jobs", {**spec, "output": "ladder-seg", "segmented": True, "segment_seconds": 4})
    end = wait_terminal(client, job["id"])
    assert end["state"] == "completed", end
    assert end["segments"]["count"] >= 3
    one, seg = (
        rendition_playlists(stack.outputs / "ladder-single"),
        rendition_playlists(stack.outputs / "ladder-seg"),
    )
    assert len(seg) == len(one) == 3
    for (w, h), a, b in zip(((1920, 1080), (1280, 720), (854, 480)), one, seg, strict=True):
        va, vb = probe_stream(a, "v:0"), probe_stream(b, "v:0")
        assert (vb["codec_name"], vb["width"], vb["height"]) == ("h264", w, h), vb
        assert vb["nb_read_packets"] == va["nb_read_packets"] == "360", (va, vb)
        assert abs(vb["format_duration"] - va["format_duration"]) <= 2 * FRAME_S, (va, vb)
        extinf = sum(
            float(ln.split(":")[1].rstrip(",")) for ln in b.read_text().split() if ln.startswith("#EXTINF")
        )
        assert abs(extinf - 12.0) <= 2 * FRAME_S, extinf
        dts = [d for _, d in packet_times(b)]
        assert all(later > earlier for earlier, later in itertools.pairwise(dts)), f"DTS not monotonic in {b}"
        assert probe_stream(b, "a:0")["codec_name"] == "aac"
    master = (stack.outputs / "ladder-seg" / "master.m3u8").read_text()
    assert master.count("#EXT-X-STREAM-INF") == 3 and "AVERAGE-BANDWIDTH" in master
    assert not (stack.outputs / ".ffrtmp-segments" / job["id"]).exists()
