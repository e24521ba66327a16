"""Segmented jobs' pure parts: the refusals at submission, the cut planner, a segment's place
read from a job (untrusted), the job ids of segments, and the segment plan's FFmpeg argv."""

import pytest

from agent import segments
from agent.pipeline import AgentContext, build_join_plan, build_plan
from ffrtmp import keys
from ffrtmp.model import SubmissionError, validate_spec

FILE = {"scenario": "720p-h264", "input": "a.mp4", "segmented": True}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"scenario": "live-4k"}, "segmented"),
        ({"input": None}, "segmented"),
        ({"input": "rtmp://cam.example/live/x"}, "segmented"),
        ({"output": "rtmp://out.example/live/y"}, "segmented"),
        ({"node": "gpu-1"}, "node"),
        ({"segmented": False, "segment_seconds": 30}, "segment_seconds"),
        ({"segment_seconds": 1}, "segment_seconds"),
        ({"segment_seconds": 7200}, "segment_seconds"),
        ({"segment_seconds": True}, "segment_seconds"),
        ({"segmented": "yes"}, "segmented"),
        ({"output": ".ffrtmp-segments/jabcdefghij/r0/s00001.mp4"}, "output"),
        ({"output": "/srv/out/.ffrtmp-segments/x.mp4", "segmented": False}, "output"),
    ],
)
def test_segmented_is_refused_where_it_cannot_work(extra, field):
    body = {k: v for k, v in {**FILE, **extra}.items() if v is not None}
    with pytest.raises(SubmissionError) as err:
        validate_spec(body)
    assert err.value.field == field, err.value.message


def test_a_segmented_hls_ladder_is_accepted():
    spec = validate_spec({**FILE, "scenario": "hls-ladder", "output": None})
    assert spec.segmented is True


def test_a_segmented_file_job_is_accepted():
    spec = validate_spec({**FILE, "codec": "vp9", "output": "x.webm", "segment_seconds": 45})
    assert spec.segmented and spec.segment_seconds == 45


def test_cuts_fall_on_source_keyframes_when_the_gop_allows():
    frames = [i / 30 for i in range(1800)]
    keyframes = [i * 2.0 for i in range(30)]
    cuts = segments.plan_cuts(frames, keyframes, 60.0, 15.0)
    assert cuts == [0.0, 16.0, 32.0, 48.0, 60.0]  # the first keyframe at least 15 s after the last cut


def test_a_gop_too_long_to_use_cuts_on_frames():
    frames = [i / 25 for i in range(250)]
    cuts = segments.plan_cuts(frames, [0.0], 10.0, 2.0)
    assert cuts[0] == 0.0 and cuts[-1] == 10.0 and len(cuts) == 6
    assert all(round(c * 25, 6) == round(c * 25) for c in cuts)  # each on a frame


def test_a_short_tail_joins_the_segment_before_it():
    frames = [i / 10 for i in range(620)]
    cuts = segments.plan_cuts(frames, [i * 1.0 for i in range(62)], 62.0, 20.0)
    assert cuts == [0.0, 20.0, 40.0, 62.0]


def test_an_input_shorter_than_a_segment_is_one_segment():
    assert segments.plan_cuts([0.0, 0.04], [0.0], 5.0, 30.0) == [0.0, 5.0]


def test_default_segment_length_follows_the_input():
    assert segments.default_seconds(60) == 30 and segments.default_seconds(7200) == 120
    assert segments.default_seconds(16 * 50) == 50


def test_a_place_is_read_as_untrusted():
    good = {"parent": "jabcdefghij", "index": 2, "start": 10.0, "end": 20.5}
    seg = segments.parse_place("jabcdefghij-s2", good)
    assert seg is not None and seg.path == ".ffrtmp-segments/jabcdefghij/r0/s00002.mp4"
    again = segments.parse_place("jabcdefghij-r3s2", {**good, "run": 3})
    assert again is not None and again.path == ".ffrtmp-segments/jabcdefghij/r3/s00002.mp4"
    assert segments.parse_place("jzzzzzzzzzz-s2", good) is None  # another job's segment: never
    for bad in (
        None,
        [],
        {**good, "parent": "../etc"},
        {**good, "parent": "jabcdefghij-s1"},
        {**good, "index": -1},
        {**good, "index": True},
        {**good, "start": 30.0},
        {**good, "end": "20"},
        {**good, "start": float("nan")},
        {**good, "run": -1},
        {**good, "run": "1"},
    ):
        assert segments.parse_place("jabcdefghij-s2", bad) is None, bad


def test_segment_ids_name_their_parent():
    assert keys.child_id("jabcdefghij", 7) == "jabcdefghij-s7"
    assert keys.is_child_id("jabcdefghij-s7") and not keys.is_child_id("jabcdefghij")
    assert keys.JOB_ID.fullmatch("jabcdefghij-s12") and not keys.JOB_ID.fullmatch("jabcdefghij-s")


def test_a_segment_encodes_its_range_without_audio_and_the_join_copies(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "in" / "a.mp4").write_bytes(b"x")
    ctx = AgentContext(
        "n1", [str(tmp_path / "in")], [str(tmp_path / "out")], str(tmp_path), {"libx264": True}
    )
    spec = validate_spec({**FILE, "output": "final.mp4"})
    seg = segments.parse_place(
        "jabcdefghij-s1", {"parent": "jabcdefghij", "index": 1, "start": 16.0, "end": 32.0}
    )
    plan = build_plan(spec, "jabcdefghij-s1", 1, ctx, seg)
    argv = plan.argv
    assert argv[argv.index("-ss") + 1] == "16.000000" and argv.index("-ss") < argv.index("-i")
    assert "-an" in argv and argv[argv.index("-t") + 1] == "16.000000"
    assert plan.final_output.endswith(".ffrtmp-segments/jabcdefghij/r0/s00001.mp4")
    join = build_join_plan(spec, "jabcdefghij", 1, ctx, str(tmp_path / "list.txt"), 60.0)
    assert join.argv[join.argv.index("-c:v") + 1] == "copy" and "concat" in join.argv
    assert join.final_output == str(tmp_path / "out" / "final.mp4") and join.tmp_output != join.final_output


def test_a_very_long_input_gets_longer_segments_not_more_than_the_cap():
    frames = [i * 1.0 for i in range(200_000)]
    cuts = segments.plan_cuts(frames, frames, 200_000.0, 2.0)
    assert len(cuts) - 1 <= segments.MAX_SEGMENTS
