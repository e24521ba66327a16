"""Expand a validated job into an FFmpeg argv list (never a shell string).

Local paths are resolved under the agent's configured roots (symlinks included) and handed to
FFmpeg with the ``file:`` protocol prefix, so a name can never be read as another protocol.
FFmpeg itself is confined too (``input_guard``): a local input may only be opened with the
``file`` protocol and only by a media-container demuxer, so a playlist (HLS, DASH) or a concat
list inside a root, whatever its name, cannot make FFmpeg open a file outside the roots; a URL
input may only use its own scheme's protocols.
Outputs go to a temporary name beside the final one; the task renames on verified success.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field

from ffrtmp.model import JobSpec, is_url, parse_bitrate_kbps, parse_resolution
from ffrtmp.presets import CPU_ENCODERS, DEFAULT_EXT, HW_ENCODER_NAMES, HW_FAMILIES, PRESETS, Preset

NETWORK_READ_TIMEOUT_S = 15.0


class PlanError(Exception):
    """The job cannot run as asked. ``platform`` says whether it is this node's fault."""

    def __init__(self, reason: str, message: str, *, platform: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.platform = platform


@dataclass
class AgentContext:
    node: str
    input_roots: list[str]
    output_roots: list[str]
    work_dir: str
    encoders: dict[str, bool] = field(default_factory=dict)  # ffmpeg encoder name -> proven working
    vaapi_device: str | None = None
    ffmpeg: str = "ffmpeg"
    ffprobe: str = "ffprobe"
    heartbeat_interval: float = 30.0
    allow_url_networks: list[str] = field(default_factory=list)  # CIDRs URL inputs may reach inside
    stall_after: float = 120.0  # a run whose progress has not moved this long is stopped (0: never)


@dataclass(frozen=True)
class Segment:
    """What a segment job encodes: ``[start, end)`` of the input into ``path`` (relative to
    the output root), for the segmented job ``parent``."""

    parent: str
    index: int
    start: float
    end: float
    path: str


@dataclass
class Plan:
    argv: list[str]
    kind: str  # file | hls | stream
    encoder: str
    width: int
    height: int
    fps: float
    codec: str
    duration: float | None  # seconds the output should last, when known
    final_output: str  # path or URL
    tmp_output: str | None  # path FFmpeg writes; None for streams
    input_desc: str


_NVENC_PRESETS = {
    "ultrafast": "p1",
    "superfast": "p2",
    "veryfast": "p3",
    "faster": "p4",
    "fast": "p4",
    "medium": "p5",
    "slow": "p6",
    "slower": "p7",
    "veryslow": "p7",
}
_SPEED_0_TO_8 = {  # x264 preset -> libvpx cpu-used / libaom cpu-used
    "ultrafast": 8,
    "superfast": 8,
    "veryfast": 7,
    "faster": 6,
    "fast": 5,
    "medium": 4,
    "slow": 3,
    "slower": 2,
    "veryslow": 1,
}
_SVT_PRESETS = {
    "ultrafast": 12,
    "superfast": 11,
    "veryfast": 10,
    "faster": 9,
    "fast": 8,
    "medium": 7,
    "slow": 5,
    "slower": 4,
    "veryslow": 3,
}
PROBE_CODEC_NAMES = {"h264": "h264", "h265": "hevc", "vp9": "vp9", "av1": "av1"}


# Demuxers of media containers and elementary streams: none of them opens another file or URL
# named by the input (mov's external references stay off, FFmpeg's default). Playlists and
# lists (hls, dash, concat, ffconcat, image2 patterns, tee, sdp, rtsp...) are not here.
LOCAL_DEMUXERS = (
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,mpegts,mpegtsraw,flv,live_flv,avi,mxf,asf,mpeg,mpegvideo,"
    "wav,w64,mp3,aac,ac3,eac3,flac,ogg,opus,h264,hevc,m4v,ivf,nut,dv,yuv4mpegpipe,caf,aiff,amr,"
    "truehd,dts,gif,rawvideo"
)
# What FFmpeg may open for a URL input of each scheme (its transport, nothing local). HTTP(S)
# goes through the run's egress proxy (``agent.egress``): HTTPS tunnels with httpproxy.
URL_PROTOCOLS = {
    "rtmp": "rtmp,tcp",
    "rtmps": "rtmps,rtmp,tls,tcp",
    "srt": "srt,udp",
    "http": "http,tcp",
    "https": "https,http,httpproxy,tls,tcp",
}
PROXIED_SCHEMES = ("http", "https")


def needs_egress_proxy(value: str | None) -> bool:
    """Must FFmpeg reach this input through the run's egress proxy (every connection checked)?"""
    return value is not None and is_url(value) and value.split(":", 1)[0].lower() in PROXIED_SCHEMES


def input_guard(value: str | None) -> list[str]:
    """FFmpeg/ffprobe input options that confine what opening ``value`` may open besides it."""
    if value is None:
        return []
    if is_url(value):
        protocols = URL_PROTOCOLS.get(value.split(":", 1)[0].lower())
        if protocols is None:
            raise PlanError("input_scheme_refused", "this input's scheme is not one FFmpeg may open here")
        return ["-protocol_whitelist", protocols]
    return ["-protocol_whitelist", "file", "-format_whitelist", LOCAL_DEMUXERS]


def under_root(path: str, roots: list[str]) -> str | None:
    """``path`` resolved (symlinks followed) if it lies under one of ``roots``, else None."""
    real = os.path.realpath(path)
    for root in roots:
        rroot = os.path.realpath(root)
        if real == rroot or real.startswith(rroot.rstrip("/") + "/"):
            return real
    return None


def resolve_input(value: str, ctx: AgentContext) -> str:
    roots = [r for r in ctx.input_roots if os.path.isdir(r)]
    if not roots:
        raise PlanError("input_root_missing", f"no input root is mounted on {ctx.node}", platform=True)
    candidates = [value] if value.startswith("/") else [os.path.join(r, value) for r in roots]
    for cand in candidates:
        real = under_root(cand, roots)
        if real is None:
            if value.startswith("/"):
                raise PlanError("input_outside_roots", f"input {value} is not under an input root")
            continue
        if os.path.isfile(real):
            return real
    raise PlanError("input_not_found", f"input {value} does not exist under the input roots")


def resolve_output(value: str | None, default_name: str, ctx: AgentContext) -> str:
    if not ctx.output_roots:
        raise PlanError("output_root_missing", f"no output root is configured on {ctx.node}", platform=True)
    root = ctx.output_roots[0]
    if not os.path.isdir(root):
        raise PlanError(
            "output_root_missing", f"output root {root} is not mounted on {ctx.node}", platform=True
        )
    path = value if value and value.startswith("/") else os.path.join(root, value or default_name)
    parent = os.path.dirname(path.rstrip("/")) or "/"
    # the parent may not exist yet: check the deepest existing ancestor, then create inside a root
    probe = parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if under_root(probe, ctx.output_roots) is None:
        raise PlanError("output_outside_roots", f"output {value} is not under an output root")
    os.makedirs(parent, exist_ok=True)
    if under_root(parent, ctx.output_roots) is None:
        raise PlanError("output_outside_roots", f"output {value} is not under an output root")
    final = os.path.join(os.path.realpath(parent), os.path.basename(path.rstrip("/")))
    if os.path.islink(final):
        raise PlanError("output_is_symlink", f"output {value} is a symbolic link; refusing to replace it")
    return final


def pick_encoder(codec: str, hwaccel: str, ctx: AgentContext) -> tuple[str, str]:
    """(ffmpeg encoder name, family) for this job on this node."""
    if hwaccel in HW_FAMILIES:
        name = HW_ENCODER_NAMES.get((hwaccel, codec))
        if not name or not ctx.encoders.get(name):
            raise PlanError(
                "encoder_unavailable",
                f"encoder {name or codec + '/' + hwaccel} is not working on {ctx.node}",
                platform=True,
            )
        return name, hwaccel
    if hwaccel == "auto":
        for fam in HW_FAMILIES:
            name = HW_ENCODER_NAMES.get((fam, codec))
            if name and ctx.encoders.get(name):
                return name, fam
    for name in CPU_ENCODERS[codec]:
        if ctx.encoders.get(name):
            return name, "cpu"
    raise PlanError("encoder_unavailable", f"no working {codec} encoder on {ctx.node}", platform=True)


def _video_args(encoder: str, family: str, kbps: int, preset: str, fps: float, realtime: bool) -> list[str]:
    b = f"{kbps}k"
    gop = str(max(1, round(fps * 2)))
    rate = ["-b:v", b, "-maxrate", b, "-bufsize", f"{kbps * 2}k"]
    if encoder == "libx264":
        args = ["-c:v", "libx264", "-preset", preset, *rate, "-g", gop, "-pix_fmt", "yuv420p"]
        return args + (["-tune", "zerolatency"] if realtime else [])
    if encoder == "libx265":
        return [
            "-c:v",
            "libx265",
            "-preset",
            preset,
            *rate,
            "-g",
            gop,
            "-pix_fmt",
            "yuv420p",
            "-x265-params",
            "log-level=error",
        ]
    if encoder == "libvpx-vp9":
        deadline = "realtime" if _SPEED_0_TO_8[preset] >= 7 else "good"
        return [
            "-c:v",
            "libvpx-vp9",
            "-b:v",
            b,
            "-deadline",
            deadline,
            "-cpu-used",
            str(_SPEED_0_TO_8[preset]),
            "-row-mt",
            "1",
            "-g",
            gop,
            "-pix_fmt",
            "yuv420p",
        ]
    if encoder == "libsvtav1":
        return [
            "-c:v",
            "libsvtav1",
            "-preset",
            str(_SVT_PRESETS[preset]),
            "-b:v",
            b,
            "-g",
            gop,
            "-pix_fmt",
            "yuv420p",
        ]
    if encoder == "libaom-av1":
        return [
            "-c:v",
            "libaom-av1",
            "-cpu-used",
            str(_SPEED_0_TO_8[preset]),
            "-row-mt",
            "1",
            "-b:v",
            b,
            "-g",
            gop,
            "-pix_fmt",
            "yuv420p",
        ]
    if family == "nvenc":
        return ["-c:v", encoder, "-preset", _NVENC_PRESETS[preset], *rate, "-g", gop] + (
            ["-tune", "ll"] if realtime else []
        )
    if family == "qsv":
        qp = preset if preset not in ("ultrafast", "superfast") else "veryfast"
        return ["-c:v", encoder, "-preset", qp, *rate, "-g", gop]
    # vaapi
    return ["-c:v", encoder, *rate, "-g", gop]


def _scale_filter(w: int, h: int, family: str, fit: bool) -> str:
    chain = []
    if fit:
        chain.append(f"scale={w}:{h}:force_original_aspect_ratio=decrease")
        chain.append(f"pad={w}:{h}:(ow-iw)/2:(oh-ih)/2")
        chain.append("setsar=1")
    if family in ("vaapi", "qsv"):
        chain.append("format=nv12")
        chain.append("hwupload" if family == "vaapi" else "hwupload=extra_hw_frames=64")
    elif not chain:
        return ""
    return ",".join(chain)


def _tmp_name(final: str, job_id: str, attempt: int) -> str:
    d, base = os.path.split(final)
    stem, ext = posixpath.splitext(base)
    return os.path.join(d, f".{stem}.{job_id}-a{attempt}.part{ext}")


def _base_argv(ctx: AgentContext) -> list[str]:
    return [
        ctx.ffmpeg,
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "warning",
        "-progress",
        "pipe:1",
        "-stats_period",
        "0.5",
        "-y",
    ]


def _file_tail(ext: str, codec: str) -> tuple[list[str], list[str]]:
    """(audio encoding, container options) of a file output with this extension."""
    audio = (
        ["-c:a", "libopus", "-b:a", "128k"]
        if ext == ".webm"
        else ["-c:a", "aac", "-b:a", "128k", "-ac", "2", "-ar", "48000"]
    )
    extra = ["-movflags", "+faststart"] if ext in (".mp4", ".mov") else []
    if codec == "h265" and ext in (".mp4", ".mov"):
        extra += ["-tag:v", "hvc1"]
    return audio, extra


def file_output(spec: JobSpec, job_id: str, ctx: AgentContext) -> str:
    """Where a file job's output goes (resolved under the output root): a file, or for an HLS
    ladder the directory its playlists and segments go into."""
    preset: Preset = PRESETS[spec.scenario]
    if preset.kind == "hls":
        return resolve_output(spec.output, job_id, ctx)
    codec = spec.codec or preset.codec
    ext = DEFAULT_EXT[codec] if preset.realtime is False else ".ts"
    return resolve_output(spec.output, job_id + ext, ctx)


def build_plan(
    spec: JobSpec, job_id: str, attempt: int, ctx: AgentContext, segment: Segment | None = None
) -> Plan:
    """The run of a job; given ``segment``, of that segment of a segmented job (video only,
    ``[start, end)`` of the input, into the segment's file)."""
    preset: Preset = PRESETS[spec.scenario]
    codec = spec.codec or preset.codec
    width, height = parse_resolution(spec.resolution) if spec.resolution else (preset.width, preset.height)
    fps = spec.fps or preset.fps
    kbps = parse_bitrate_kbps(spec.bitrate) if spec.bitrate else preset.bitrate_kbps
    speed = spec.preset or preset.preset
    encoder, family = pick_encoder(codec, spec.hwaccel, ctx)

    argv = _base_argv(ctx)
    if family == "vaapi":
        argv += ["-vaapi_device", ctx.vaapi_device or "/dev/dri/renderD128"]
    if family == "qsv":
        argv += ["-init_hw_device", "qsv=hw", "-filter_hw_device", "hw"]

    duration = spec.duration
    realtime = preset.realtime
    top_w, top_h = (
        (preset.ladder[0][0], preset.ladder[0][1])
        if preset.kind == "hls" and not spec.resolution
        else (width, height)
    )
    if spec.input is None:
        duration = duration or preset.default_duration
        re_flag = ["-re"] if realtime else []
        argv += [
            *re_flag,
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={top_w}x{top_h}:rate={fps:g}",
            *re_flag,
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=1000:sample_rate=48000",
        ]
        input_desc = "lavfi:testsrc2+sine"
        fit = False
        audio_map = ["-map", "0:v:0", "-map", "1:a:0"]
    elif is_url(spec.input):
        # every network input: a source that never answers or stops sending ends the read
        # (15 s) instead of holding the job until its timeout
        argv += ["-rw_timeout", str(int(NETWORK_READ_TIMEOUT_S * 1_000_000))]
        argv += [*input_guard(spec.input), "-i", spec.input]
        input_desc = spec.input
        fit = True
        audio_map = ["-map", "0:v:0", "-map", "0:a:0?"]
    else:
        path = resolve_input(spec.input, ctx)
        seek = ["-ss", f"{segment.start:.6f}"] if segment else []
        argv += (["-re"] if realtime else []) + [*input_guard(path), *seek, "-i", "file:" + path]
        input_desc = path
        fit = True
        audio_map = ["-map", "0:v:0", "-map", "0:a:0?"]
    t_args = ["-t", f"{duration:g}"] if duration else []
    if segment:
        return _segment_plan(argv, spec, job_id, attempt, ctx, segment, (encoder, family), input_desc)

    if preset.kind == "hls":
        rungs = _rungs(spec, preset, (width, height, kbps))
        final = file_output(spec, job_id, ctx)
        tmp = _tmp_name(final, job_id, attempt)
        argv += _ladder_video(rungs, (encoder, family), speed, fps, realtime)
        audio_src = "1:a:0" if spec.input is None else "0:a:0?"
        argv += _hls_tail(tmp, len(rungs), audio_src, ["-r", f"{fps:g}", *t_args])
        return Plan(
            argv, "hls", encoder, rungs[0][0], rungs[0][1], fps, codec, duration, final, tmp, input_desc
        )

    vf = _scale_filter(width, height, family, fit)
    argv += audio_map
    if vf:
        argv += ["-vf", vf]
    argv += ["-r", f"{fps:g}"]
    argv += _video_args(encoder, family, kbps, speed, fps, realtime)
    out = spec.output
    if out is not None and is_url(out):
        argv += ["-c:a", "aac", "-b:a", "128k", "-ac", "2", "-ar", "48000", *t_args, "-f", "flv", out]
        return Plan(argv, "stream", encoder, width, height, fps, codec, duration, out, None, input_desc)
    final = file_output(spec, job_id, ctx)
    audio, extra = _file_tail(posixpath.splitext(final)[1].lower(), codec)
    tmp = _tmp_name(final, job_id, attempt)
    argv += [*audio, *t_args, *extra, "file:" + tmp]
    return Plan(argv, "file", encoder, width, height, fps, codec, duration, final, tmp, input_desc)


Rung = tuple[int, int, int]  # width, height, kb/s


def _rungs(spec: JobSpec, preset: Preset, asked: Rung) -> tuple[Rung, ...]:
    """An HLS job's renditions: the preset's ladder, or the one size the job asked for."""
    return preset.ladder if not spec.resolution else (asked,)


def _ladder_video(
    rungs: tuple[Rung, ...], picked: tuple[str, str], speed: str, fps: float, realtime: bool
) -> list[str]:
    """The input's video split into one scaled stream per rendition, each at its own rate."""
    encoder, family = picked
    n = len(rungs)
    parts = ["[0:v]split=" + str(n) + "".join(f"[s{i}]" for i in range(n))]
    for i, (w, h, _k) in enumerate(rungs):
        parts.append(f"[s{i}]{_scale_filter(w, h, family, True)}[v{i}]")
    argv = ["-filter_complex", ";".join(parts)]
    for i, (_w, _h, k) in enumerate(rungs):
        per_stream = {"-c:v": f"-c:v:{i}", "-b:v": f"-b:v:{i}", "-maxrate": f"-maxrate:v:{i}"}
        per_stream["-bufsize"] = f"-bufsize:v:{i}"
        venc = _video_args(encoder, family, k, speed, fps, realtime)
        argv += ["-map", f"[v{i}]", *(per_stream.get(a, a) for a in venc)]
    return argv


def _hls_tail(tmp: str, n: int, audio_src: str, extra: list[str]) -> list[str]:
    """The audio of every rendition and the HLS muxer: one playlist per rendition under
    ``tmp``/v<i>/ and the master playlist beside them."""
    argv = [arg for _ in range(n) for arg in ("-map", audio_src)]
    argv += ["-c:a", "aac", "-b:a", "128k", "-ac", "2", "-ar", "48000", *extra]
    return [
        *argv,
        "-f",
        "hls",
        "-hls_time",
        "4",
        "-hls_playlist_type",
        "vod",
        "-hls_flags",
        "independent_segments",
        "-hls_segment_filename",
        os.path.join(tmp, "v%v", "seg_%05d.ts"),
        "-master_pl_name",
        "master.m3u8",
        "-var_stream_map",
        " ".join(f"v:{i},a:{i}" for i in range(n)),
        os.path.join(tmp, "v%v", "index.m3u8"),
    ]


def _segment_plan(
    argv: list[str],
    spec: JobSpec,
    job_id: str,
    attempt: int,
    ctx: AgentContext,
    seg: Segment,
    picked: tuple[str, str],
    input_desc: str,
) -> Plan:
    """A segment: the parent's video encode of ``[start, end)``, no audio (the join encodes
    it once for the whole input), into an MP4 intermediate; for an HLS ladder one video track
    per rendition in that file."""
    preset: Preset = PRESETS[spec.scenario]
    encoder, family = picked
    codec = spec.codec or preset.codec
    width, height = parse_resolution(spec.resolution) if spec.resolution else (preset.width, preset.height)
    fps = spec.fps or preset.fps
    kbps = parse_bitrate_kbps(spec.bitrate) if spec.bitrate else preset.bitrate_kbps
    speed = spec.preset or preset.preset
    if preset.kind == "hls":
        rungs = _rungs(spec, preset, (width, height, kbps))
        width, height = rungs[0][0], rungs[0][1]
        argv += [*_ladder_video(rungs, picked, speed, fps, False), "-an", "-r", f"{fps:g}"]
    else:
        vf = _scale_filter(width, height, family, True)
        argv += ["-map", "0:v:0", "-an", *(["-vf", vf] if vf else []), "-r", f"{fps:g}"]
        argv += _video_args(encoder, family, kbps, speed, fps, False)
    final = resolve_output(seg.path, seg.path, ctx)
    tmp = _tmp_name(final, job_id, attempt)
    tag = ["-tag:v", "hvc1"] if codec == "h265" else []
    argv += ["-t", f"{seg.end - seg.start:.6f}", *tag, "-f", "mp4", "file:" + tmp]
    return Plan(argv, "file", encoder, width, height, fps, codec, seg.end - seg.start, final, tmp, input_desc)


def build_join_plan(
    spec: JobSpec, job_id: str, attempt: int, ctx: AgentContext, concat_list: str, seconds: float
) -> Plan:
    """The join of a segmented job: the segments' video copied in order (FFmpeg's concat
    demuxer), the input's audio encoded once for the whole length, into a temporary name
    beside the final output, as a single-node job writes it."""
    preset: Preset = PRESETS[spec.scenario]
    codec = spec.codec or preset.codec
    width, height = parse_resolution(spec.resolution) if spec.resolution else (preset.width, preset.height)
    fps = spec.fps or preset.fps
    path = resolve_input(str(spec.input), ctx)
    final = file_output(spec, job_id, ctx)
    tmp = _tmp_name(final, job_id, attempt)
    argv = _base_argv(ctx)
    argv += ["-f", "concat", "-protocol_whitelist", "file", "-i", "file:" + concat_list]
    argv += [*input_guard(path), "-i", "file:" + path]
    t_args = ["-t", f"{seconds:.6f}"]
    if preset.kind == "hls":  # each rendition's track copied into its own playlist
        kbps = parse_bitrate_kbps(spec.bitrate) if spec.bitrate else preset.bitrate_kbps
        rungs = _rungs(spec, preset, (width, height, kbps))
        argv += [arg for i in range(len(rungs)) for arg in ("-map", f"0:v:{i}")] + ["-c:v", "copy"]
        argv += _hls_tail(tmp, len(rungs), "1:a:0?", t_args)
        return Plan(argv, "hls", "copy", rungs[0][0], rungs[0][1], fps, codec, seconds, final, tmp, path)
    audio, extra = _file_tail(posixpath.splitext(final)[1].lower(), codec)
    argv += ["-map", "0:v:0", "-map", "1:a:0?", "-c:v", "copy", *audio, *t_args, *extra, "file:" + tmp]
    return Plan(argv, "file", "copy", width, height, fps, codec, seconds, final, tmp, path)
