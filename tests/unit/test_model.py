import pytest

from ffrtmp.model import SubmissionError, parse_bitrate_kbps, parse_resolution, validate_spec


def test_minimal_spec_gets_defaults():
    spec = validate_spec({"scenario": "720p-h264"})
    assert spec.queue == "default" and spec.priority == "medium" and spec.hwaccel == "auto"


def test_go_system_fields_are_accepted_and_normalised():
    spec = validate_spec(
        {"scenario": "live-4k", "queue": "live", "priority": "high", "duration": 3600, "bitrate": "10000k"}
    )
    assert spec.bitrate == "10000k" and spec.duration == 3600


@pytest.mark.parametrize(
    ("value", "kbps"), [("5000k", 5000), ("5M", 5000), ("2.5m", 2500), (800000, 800), ("64000", 64)]
)
def test_bitrates(value, kbps):
    assert parse_bitrate_kbps(value) == kbps


@pytest.mark.parametrize(
    ("value", "wh"), [("1280x720", (1280, 720)), ("4k", (3840, 2160)), ("480p", (854, 480))]
)
def test_resolutions(value, wh):
    assert parse_resolution(value) == wh


HOSTILE = [
    ({"scenario": "720p-h264", "callback_url": "file:///etc/passwd"}, "callback_url"),
    ({"scenario": "720p-h264", "callback_url": "http://h:notaport/x"}, "callback_url"),
    ({"scenario": "720p-h264", "input": "../../etc/passwd"}, "input"),
    ({"scenario": "720p-h264", "input": "media/../../secret.mp4"}, "input"),
    ({"scenario": "720p-h264", "input": "-i"}, "input"),
    ({"scenario": "720p-h264", "input": "-filter_complex"}, "input"),
    ({"scenario": "720p-h264", "input": "clip\n.mp4"}, "input"),
    ({"scenario": "720p-h264", "input": "clip\x00.mp4"}, "input"),
    ({"scenario": "720p-h264", "input": "file:///etc/passwd"}, "input"),
    ({"scenario": "720p-h264", "input": "concat:a.mp4|b.mp4"}, "input"),
    ({"scenario": "720p-h264", "input": "ftp://host/x.mp4"}, "input"),
    ({"scenario": "720p-h264", "input": "http://"}, "input"),
    ({"scenario": "720p-h264", "input": "~/x.mp4"}, "input"),
    ({"scenario": "720p-h264", "input": ""}, "input"),
    ({"scenario": "720p-h264", "input": " clip.mp4"}, "input"),
    ({"scenario": "720p-h264", "input": 42}, "input"),
    ({"scenario": "720p-h264", "output": "out.exe"}, "output"),
    ({"scenario": "720p-h264", "output": "http://host/out.mp4"}, "output"),
    ({"scenario": "720p-h264", "output": "x/../../out.mp4"}, "output"),
    ({"scenario": "720p-h264", "output": "/"}, "output"),
    ({"scenario": "720p-h264", "codec": "vp9", "output": "a.mov"}, "output"),
    ({"scenario": "rtmp-restream"}, "output"),
    ({"scenario": "rtmp-restream", "output": "out.mp4"}, "output"),
    ({"scenario": "720p-h264", "codec": "h265", "output": "rtmp://host/live/x"}, "codec"),
    ({"scenario": "hls-ladder", "output": "rtmp://host/live/x"}, "output"),
    ({"scenario": "nope"}, "scenario"),
    ({"scenario": "720p-h264; rm -rf /"}, "scenario"),
    ({}, "scenario"),
    ({"scenario": "720p-h264", "queue": "urgent"}, "queue"),
    ({"scenario": "720p-h264", "priority": "max"}, "priority"),
    ({"scenario": "720p-h264", "duration": -1}, "duration"),
    ({"scenario": "720p-h264", "duration": 0}, "duration"),
    ({"scenario": "720p-h264", "duration": 10**9}, "duration"),
    ({"scenario": "720p-h264", "duration": "ten"}, "duration"),
    ({"scenario": "720p-h264", "bitrate": "fast"}, "bitrate"),
    ({"scenario": "720p-h264", "bitrate": "1k"}, "bitrate"),
    ({"scenario": "720p-h264", "bitrate": "999M"}, "bitrate"),
    ({"scenario": "720p-h264", "bitrate": "5000k -vf x"}, "bitrate"),
    ({"scenario": "720p-h264", "resolution": "1281x720"}, "resolution"),
    ({"scenario": "720p-h264", "resolution": "99999x1"}, "resolution"),
    ({"scenario": "720p-h264", "resolution": "big"}, "resolution"),
    ({"scenario": "720p-h264", "fps": 0}, "fps"),
    ({"scenario": "720p-h264", "fps": 1000}, "fps"),
    ({"scenario": "720p-h264", "preset": "ludicrous"}, "preset"),
    ({"scenario": "720p-h264", "codec": "mpeg2"}, "codec"),
    ({"scenario": "720p-h264", "hwaccel": "cuda"}, "hwaccel"),
    ({"scenario": "720p-h264", "hwaccel": "nvenc", "codec": "vp9"}, "codec"),
    ({"scenario": "720p-h264", "timeout": 0}, "timeout"),
    ({"scenario": "720p-h264", "max_attempts": 0}, "max_attempts"),
    ({"scenario": "720p-h264", "max_attempts": 100}, "max_attempts"),
    ({"scenario": "720p-h264", "max_cpu_percent": 0}, "max_cpu_percent"),
    ({"scenario": "720p-h264", "max_memory_mb": 1}, "max_memory_mb"),
    ({"scenario": "720p-h264", "labels": {"bad key": "x"}}, "labels"),
    ({"scenario": "720p-h264", "labels": {"k": "v\n"}}, "labels"),
    ({"scenario": "720p-h264", "extra_args": "-vf scale=1:1"}, "extra_args"),
    ({"scenario": "720p-h264", "ffmpeg_args": ["-y"]}, "ffmpeg_args"),
    # quirks found from outside: each was a 500 or a silent coercion
    ({"scenario": "480p-h264", "duration": True}, "duration"),
    ({"scenario": "480p-h264", "max_attempts": False}, "max_attempts"),
    ({"scenario": "\ud800"}, "scenario"),
    ({"scenario": "480p-h264", "input": "clip\udc00.mp4"}, "input"),
    ({"scenario": "480p-h264", "labels": {"k": "\ud83d"}}, "labels"),
    ({"scenario": "480p-h264", "bitrate": 10**400}, "bitrate"),
    ({"scenario": "480p-h264", "node": "a\nb"}, "node"),
]


@pytest.mark.parametrize(("body", "field"), HOSTILE)
def test_hostile_submissions_name_the_field(body, field):
    with pytest.raises(SubmissionError) as exc:
        validate_spec(body)
    assert exc.value.field == field, exc.value.message
    assert exc.value.message


def test_body_must_be_an_object():
    with pytest.raises(SubmissionError):
        validate_spec(["scenario", "720p-h264"])


def test_a_restream_is_live_work_unless_the_job_says_otherwise():
    restream = {"scenario": "rtmp-restream", "output": "rtmp://h.example/live/k", "duration": 5}
    assert validate_spec(restream).queue == "live"
    assert validate_spec({**restream, "queue": "default"}).queue == "default"
    assert validate_spec({"scenario": "480p-h264"}).queue == "default"
