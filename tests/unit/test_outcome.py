"""How an attempt's end is classified, what a lease token may look like, and disk checks."""

from __future__ import annotations

import signal

import pytest

from agent import disk
from agent.outcome import classify_exit, duration_ok, signal_name
from ffrtmp.lifecycle import Lease, meta_int


@pytest.mark.parametrize(
    ("exit_info", "stop", "tail", "want"),
    [
        ({"returncode": 0}, None, "", None),
        ({"returncode": 255}, "canceled", "", ("canceled", "canceled")),
        ({"returncode": -9, "signal": 9}, "timed_out", "", ("timed_out", "timed_out")),
        ({"returncode": 255}, "stalled", "Connection timed out", ("retry", "input_stalled")),
        ({"returncode": 127, "runner_error": "OSError"}, None, "", ("retry", "ffmpeg_not_started")),
        ({"returncode": -9, "signal": 9, "orphaned": True}, None, "", ("retry", "lost_ownership")),
        ({"returncode": -9, "signal": 9}, None, "frame=1", ("retry", "ffmpeg_killed")),
        ({"returncode": -11, "signal": 11}, None, "", ("retry", "ffmpeg_killed")),
        ({"returncode": -9, "signal": 9, "oom_killed": True}, None, "", ("failed", "memory_limit_exceeded")),
        ({"returncode": -9, "signal": 9, "oom_killed": True}, "canceled", "", ("canceled", "canceled")),
        ({"returncode": 1}, None, "x.mp4: No space left on device", ("retry", "output_disk_full")),
        ({"returncode": 1}, None, "Invalid data found", ("failed", "ffmpeg_error")),
        ({"returncode": "bad"}, None, "", ("failed", "ffmpeg_error")),
    ],
)
def test_classify_exit(exit_info, stop, tail, want):
    got = classify_exit(exit_info, stop, tail, 30)
    assert (got.outcome, got.reason) == want if want else got is None


def test_a_network_input_that_broke_off_is_retried_not_completed():
    url = "rtmp://10.0.0.5/live/cam"
    cut = classify_exit({"returncode": 0}, None, f"{url}: Input/output error\n", 30, 120, url)
    assert cut is not None and (cut.outcome, cut.reason) == ("retry", "input_stalled") and url in cut.message
    timed = classify_exit({"returncode": 0}, None, "Error during demuxing: Connection timed out", 30, 0, url)
    assert timed is not None and timed.reason == "input_stalled"
    assert classify_exit({"returncode": 0}, None, "", 30, 120, url) is None  # a source that ended
    assert classify_exit({"returncode": 0}, None, f"{url}: Input/output error", 30, 120, None) is None


def test_a_signal_death_names_the_signal():
    v = classify_exit({"returncode": -9, "signal": 9}, None, "", 30)
    assert v is not None and "SIGKILL" in v.message and v.platform
    assert signal_name(signal.SIGSEGV) == "SIGSEGV" and signal_name(200) == "signal 200"


@pytest.mark.parametrize(
    ("got", "expected", "ok"),
    [
        (30.0, 30.0, True),
        (29.2, 30.0, True),  # within 1 s
        (8.8, 30.0, False),  # a truncated input
        (3590.0, 3600.0, True),  # within 2 %
        (3500.0, 3600.0, False),
        (None, 30.0, False),
        (None, None, True),
        (0.0, None, False),
        (5.0, None, True),
    ],
)
def test_duration_tolerance(got, expected, ok):
    assert duration_ok(got, expected) is ok


@pytest.mark.parametrize(
    "raw", [None, b"", b"x", b"1|2|3", b"a|b|c|d", "1|e|n|s|extra", "²|e|n|s", b"\xff|e|n|s"]
)
def test_a_malformed_lease_reads_as_none(raw):
    assert Lease.parse("j1", raw) is None


def test_a_lease_round_trips():
    lease = Lease("j1", 3, "exec", "node-a", "node-a.s0.abc")
    assert Lease.parse("j1", lease.token.encode()) == lease


def test_meta_numbers_are_untrusted():
    assert meta_int({"a": 3}, "a", 0) == 3
    assert meta_int({"a": "3"}, "a", 1) == 1 and meta_int({"a": True}, "a", 1) == 1
    assert meta_int({}, "a", 2) == 2


def test_a_disk_full_marker_holds_until_the_space_a_job_needed_is_free(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    assert not any(r.full for r in disk.check(str(work), [str(out)], 0))
    disk.mark_full(str(work), str(out / "x.mp4"), needed_bytes=1 << 60)  # more than any disk has
    spaces = disk.check(str(work), [str(out)], 0)
    assert [r.full for r in spaces] == [False, True] and "ran out of space" in spaces[1].why
    disk.mark_full(str(work), str(out / "x.mp4"), needed_bytes=1)
    assert not any(r.full for r in disk.check(str(work), [str(out)], 0))  # room again: cleared
    assert not list((work / disk.MARKERS).iterdir())
    assert disk.check(str(work), [str(tmp_path / "missing")], 0)[1].full  # unreachable counts
    assert disk.check(str(work), [str(out)], 1 << 60)[1].why.startswith("only")
