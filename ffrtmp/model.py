"""The job model: what a submitter may ask for, validated before anything is enqueued.

Everything that reaches FFmpeg passes through here first. Free-form FFmpeg arguments are never
accepted; paths and URLs are checked for option-looking values, control characters, ``..``
escapes and schemes outside the allow-list.
"""

from __future__ import annotations

import math
import posixpath
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .presets import FILE_CONTAINERS, HW_FAMILIES, PRESETS, X264_PRESETS
from .terms import Codec, HwAccel, Priority, Tier

INPUT_SCHEMES = frozenset({"rtmp", "rtmps", "srt", "http", "https"})
OUTPUT_SCHEMES = frozenset({"rtmp", "rtmps"})
STREAM_OUTPUT_SCHEMES = OUTPUT_SCHEMES

MAX_DURATION_S = 7 * 24 * 3600
MAX_TIMEOUT_S = 7 * 24 * 3600
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BITRATE = re.compile(r"^(\d+(?:\.\d+)?)([kKmM]?)$")
_RESOLUTION = re.compile(r"^(\d{2,5})x(\d{2,5})$")
_NAMED_RESOLUTIONS = {
    "480p": (854, 480),
    "720p": (1280, 720),
    "1080p": (1920, 1080),
    "1440p": (2560, 1440),
    "2160p": (3840, 2160),
    "4k": (3840, 2160),
}
_SURROGATE = re.compile("[\ud800-\udfff]")
_NUMBER_FIELDS = frozenset(
    {
        "duration",
        "fps",
        "timeout",
        "max_attempts",
        "max_cpu_percent",
        "max_memory_mb",
        "bitrate",
        "segment_seconds",
    }
)
MIN_SEGMENT_S, MAX_SEGMENT_S = 2.0, 3600.0
RESERVED_OUTPUT_DIR = ".ffrtmp-segments"  # segmented jobs' intermediates (agent.segments)


def _strings(value: Any) -> list[str]:
    """The strings in a submitted value (a field's value, a label map's keys and values)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [x for v in value for x in _strings(v)]
    return []


NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # an agent's name, as it registers
LABEL_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$")


class SubmissionError(ValueError):
    """A submission was refused; ``field`` names the offending field."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _check_text(value: str, what: str) -> str:
    if not value or not value.strip():
        raise ValueError(f"{what} must not be empty")
    if len(value) > 2048:
        raise ValueError(f"{what} is longer than 2048 characters")
    if _CONTROL.search(value):
        raise ValueError(f"{what} contains control characters")
    if value != value.strip():
        raise ValueError(f"{what} has leading or trailing whitespace")
    if value.startswith("-"):
        raise ValueError(f"{what} looks like a command-line option")
    return value


def is_url(value: str) -> bool:
    return "://" in value


def check_path(value: str, what: str) -> str:
    """A local path: relative (resolved under the agent's roots) or absolute, never escaping."""
    _check_text(value, what)
    if value.startswith("~"):
        raise ValueError(f"{what} must not start with '~'")
    parts = value.split("/")
    if ".." in parts:
        raise ValueError(f"{what} must not contain '..'")
    if "|" in value or ";" in value:
        raise ValueError(f"{what} contains a character that is not allowed ('|' or ';')")
    norm = posixpath.normpath(value)
    if norm in (".", "/"):
        raise ValueError(f"{what} must name a file or directory, not '{value}'")
    return value


def check_url(value: str, what: str, schemes: frozenset[str]) -> str:
    _check_text(value, what)
    if any(c.isspace() for c in value):
        raise ValueError(f"{what} must not contain whitespace")
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise ValueError(f"{what} is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in schemes:
        allowed = ", ".join(sorted(f"{s}://" for s in schemes))
        raise ValueError(f"{what} scheme '{parts.scheme}' is not allowed (allowed: {allowed})")
    if not parts.hostname:
        raise ValueError(f"{what} has no host")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"{what} has an invalid port") from None
    return value


def parse_bitrate_kbps(value: str | int) -> int:
    if isinstance(value, bool):
        raise ValueError("bitrate must be like '5000k', '5M' or a number of bits per second")
    if isinstance(value, int):
        if not 32_000 <= value <= 200_000_000:  # before dividing: a 400-digit int overflows a float
            raise ValueError("bitrate must be between 32k and 200M")
        kbps = value / 1000
    else:
        m = _BITRATE.match(value.strip())
        if not m:
            raise ValueError("bitrate must be like '5000k', '5M' or a number of bits per second")
        number, unit = float(m.group(1)), m.group(2).lower()
        kbps = number * {"": 0.001, "k": 1, "m": 1000}[unit]
    if not 32 <= kbps <= 200_000:
        raise ValueError("bitrate must be between 32k and 200M")
    return round(kbps)


def parse_resolution(value: str) -> tuple[int, int]:
    v = value.strip().lower()
    if v in _NAMED_RESOLUTIONS:
        return _NAMED_RESOLUTIONS[v]
    m = _RESOLUTION.match(v)
    if not m:
        raise ValueError("resolution must be WIDTHxHEIGHT (e.g. 1280x720) or one of 480p/720p/1080p/1440p/4k")
    w, h = int(m.group(1)), int(m.group(2))
    if not (16 <= w <= 7680 and 16 <= h <= 4320):
        raise ValueError("resolution must be between 16x16 and 7680x4320")
    if w % 2 or h % 2:
        raise ValueError("resolution width and height must be even")
    return w, h


Seconds = Annotated[float, Field(gt=0)]


class JobSpec(BaseModel):
    """What a client submits. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, use_enum_values=True)

    scenario: str = Field(
        description="Named preset: " + ", ".join(PRESETS), json_schema_extra={"enum": list(PRESETS)}
    )
    queue: Tier = Field(default=Tier.default, description="Tier: live > default > batch")
    priority: Priority = Field(default=Priority.medium, description="Within a tier: high > medium > low")
    input: str | None = Field(
        default=None,
        description="Path under an input root, or rtmp(s)://, srt://, http(s):// URL. "
        "Omitted: a lavfi test pattern with audio.",
    )
    output: str | None = Field(
        default=None,
        description="Path under an output root (file, or directory for hls-ladder), or rtmp(s):// URL. "
        "Omitted: <output root>/<job id>.<ext>.",
    )
    duration: float | None = Field(
        default=None, gt=0, le=MAX_DURATION_S, description="Seconds to encode (test pattern length / -t)"
    )
    bitrate: str | int | None = Field(default=None, description="Video bitrate, e.g. '5000k' or '5M'")
    codec: Codec | None = None
    resolution: str | None = Field(default=None, description="WIDTHxHEIGHT or 480p/720p/1080p/1440p/4k")
    fps: float | None = Field(default=None, gt=0, le=240)
    preset: str | None = Field(default=None, description="Speed preset: " + ", ".join(X264_PRESETS))
    hwaccel: HwAccel = Field(default=HwAccel.auto)
    timeout: float | None = Field(
        default=None, gt=0, le=MAX_TIMEOUT_S, description="Seconds before timed_out"
    )
    max_attempts: int | None = Field(default=None, ge=1, le=10, description="Attempts on platform failures")
    max_cpu_percent: int | None = Field(default=None, ge=1, le=25600, description="100 = one core")
    max_memory_mb: int | None = Field(default=None, ge=64, le=1_048_576)
    labels: dict[str, str] = Field(default_factory=dict, description="Free labels (at most 20)")
    overwrite: bool = Field(
        default=False, description="Replace an output that exists (otherwise such a job is rejected)"
    )
    callback_url: str | None = Field(
        default=None,
        max_length=2048,
        description="http(s):// URL that gets a signed POST when the job ends (see docs/webhooks.md)",
        json_schema_extra={"pattern": "^https?://[^\\s]+$"},
    )
    node: str | None = Field(
        default=None,
        description="Run only on this agent (a canary, a test of one host); it must be up",
        json_schema_extra={"pattern": f"^{NODE_NAME.pattern}$"},
    )

    segmented: bool = Field(
        default=False,
        strict=True,  # true or false, never "yes"
        description="Encode in parallel: the input is cut into segments, each a child job run "
        "anywhere in the fleet, then joined (file scenarios with an input file; see docs/segmented.md)",
    )
    segment_seconds: float | None = Field(
        default=None,
        ge=MIN_SEGMENT_S,
        le=MAX_SEGMENT_S,
        description="Target segment length for a segmented job (default: chosen from the input, 30-120 s)",
    )

    @model_validator(mode="before")
    @classmethod
    def _plain_values(cls, data: Any) -> Any:
        """JSON's true/false are not numbers here (``duration: true`` is not 1 s), and a string
        with a lone surrogate (valid JSON, not valid text) is refused before anything echoes it."""
        if isinstance(data, dict):
            for key, value in data.items():
                if key in _NUMBER_FIELDS and isinstance(value, bool):
                    raise SubmissionError(str(key), "must be a number, not true/false")
                for text in _strings(value):
                    if _SURROGATE.search(text):
                        raise SubmissionError(
                            str(key)[:64].encode("utf-8", "replace").decode(), "must be valid text"
                        )
        return data

    @field_validator("node")
    @classmethod
    def _node(cls, v: str | None) -> str | None:
        if v is not None and not NODE_NAME.fullmatch(v):
            raise ValueError(
                "node must be 1-63 letters, digits, '.', '-' or '_', starting with a letter or digit"
            )
        return v

    @field_validator("scenario")
    @classmethod
    def _scenario(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown scenario '{v[:64]}' (known: {', '.join(PRESETS)})")
        return v

    @field_validator("input")
    @classmethod
    def _input(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if is_url(v):
            return check_url(v, "input", INPUT_SCHEMES)
        return check_path(v, "input")

    @field_validator("output")
    @classmethod
    def _output(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if is_url(v):
            return check_url(v, "output", OUTPUT_SCHEMES)
        if RESERVED_OUTPUT_DIR in v.split("/"):
            raise ValueError(f"output must not name {RESERVED_OUTPUT_DIR}/ (segmented jobs' own)")
        return check_path(v, "output")

    @field_validator("bitrate")
    @classmethod
    def _bitrate(cls, v: str | int | None) -> str | None:
        if v is None:
            return v
        return f"{parse_bitrate_kbps(v)}k"

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, v: str | None) -> str | None:
        if v is None:
            return v
        w, h = parse_resolution(v)
        return f"{w}x{h}"

    @field_validator("fps", "duration", "timeout")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("preset")
    @classmethod
    def _preset(cls, v: str | None) -> str | None:
        if v is not None and v not in X264_PRESETS:
            raise ValueError(f"unknown preset '{v[:32]}' (known: {', '.join(X264_PRESETS)})")
        return v

    @field_validator("callback_url")
    @classmethod
    def _callback(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 (raises on a bad port)
        except ValueError:
            raise ValueError("callback_url is not a URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or _CONTROL.search(v) or " " in v:
            raise ValueError("callback_url must be an http:// or https:// URL")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 20:
            raise ValueError("at most 20 labels")
        for key, value in v.items():
            if not LABEL_KEY.match(key):
                raise ValueError(f"label key '{key[:64]}' must match {LABEL_KEY.pattern}")
            if len(value) > 128 or _CONTROL.search(value):
                raise ValueError(f"label '{key}' must be at most 128 characters without control characters")
        return v

    @model_validator(mode="after")
    def _coherent(self) -> JobSpec:
        preset = PRESETS[self.scenario]
        if preset.kind == "restream" and "queue" not in self.model_fields_set:
            self.queue = Tier.live  # a restream is live work unless the job says otherwise
        codec = self.codec or preset.codec
        if self.hwaccel in HW_FAMILIES and codec not in HW_FAMILIES[self.hwaccel]:
            raise SubmissionError("codec", f"hwaccel {self.hwaccel} has no {codec} encoder")
        out = self.output
        if preset.kind == "restream" and (out is None or not is_url(out)):
            raise SubmissionError("output", "rtmp-restream needs an rtmp:// or rtmps:// output URL")
        if out is not None and is_url(out) and codec != "h264":
            raise SubmissionError("codec", "RTMP outputs carry H.264 only")
        if preset.kind == "hls" and out is not None and is_url(out):
            raise SubmissionError("output", "hls-ladder writes a directory; give a path, not a URL")
        if preset.kind == "file" and out is not None and not is_url(out):
            ext = posixpath.splitext(out)[1].lower()
            if ext not in FILE_CONTAINERS:
                raise SubmissionError(
                    "output", f"output extension '{ext}' is not one of {', '.join(FILE_CONTAINERS)}"
                )
            if codec not in FILE_CONTAINERS[ext]:
                raise SubmissionError("output", f"a {ext} file cannot carry {codec}")
        self._check_segmented(preset.kind, preset.realtime)
        if self.input is None and self.duration is None and preset.realtime and out and is_url(out):
            # an endless test pattern pushed live is allowed only with a duration
            raise SubmissionError("duration", "a test-pattern live push needs a duration")
        return self

    def _check_segmented(self, kind: str, realtime: bool) -> None:
        """Where parallel segments cannot work, say so at submission."""
        if self.segment_seconds is not None and not self.segmented:
            raise SubmissionError("segment_seconds", "segment_seconds needs segmented: true")
        if not self.segmented:
            return
        if self.segment_seconds is not None and not math.isfinite(self.segment_seconds):
            raise SubmissionError("segment_seconds", "must be a finite number")
        if kind not in ("file", "hls") or realtime:
            raise SubmissionError("segmented", f"{self.scenario} is realtime work and cannot be segmented")
        if self.input is None or is_url(self.input):
            raise SubmissionError("segmented", "segmented needs an input file (not a test pattern or a URL)")
        if self.output is not None and is_url(self.output):
            raise SubmissionError("segmented", "segmented writes a file; RTMP outputs cannot be segmented")
        if self.node is not None:
            raise SubmissionError("node", "a segmented job runs across the fleet; it cannot be pinned")


def error_field(exc: ValidationError | SubmissionError) -> tuple[str | None, str]:
    """(field, message) of the first problem, for a 422 body and CLI messages."""
    if isinstance(exc, SubmissionError):
        return exc.field, exc.message
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "__root__"]
    field = ".".join(loc) or None
    msg = err.get("msg", "invalid value")
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, SubmissionError):
        return ctx_err.field, ctx_err.message
    if err.get("type") == "extra_forbidden":
        msg = "unknown field"
    msg = msg.removeprefix("Value error, ")
    return field, msg


def validate_spec(data: Any) -> JobSpec:
    """Validate a submission; raise SubmissionError naming the field."""
    if not isinstance(data, dict):
        raise SubmissionError(None, "the request body must be a JSON object")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        field, msg = error_field(exc)
        raise SubmissionError(field, msg) from None
