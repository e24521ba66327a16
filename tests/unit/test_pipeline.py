import os

import pytest

from agent.pipeline import AgentContext, PlanError, build_plan, pick_encoder
from ffrtmp.model import validate_spec
from ffrtmp.presets import PRESETS

CPU = {"libx264": True, "libx265": True, "libvpx-vp9": True, "libsvtav1": True, "h264_nvenc": False}


@pytest.fixture()
def ctx(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "in" / "clip.mp4").write_bytes(b"x")
    return AgentContext("n1", [str(tmp_path / "in")], [str(tmp_path / "out")], str(tmp_path / "work"), CPU)


@pytest.mark.parametrize("scenario", [s for s in PRESETS if PRESETS[s].kind != "restream"])
def test_every_scenario_builds_an_argv_list(scenario, ctx):
    plan = build_plan(validate_spec({"scenario": scenario, "duration": 1}), "jx", 1, ctx)
    assert isinstance(plan.argv, list) and all(isinstance(a, str) for a in plan.argv)
    assert plan.argv[0] == "ffmpeg" and "-progress" in plan.argv
    assert plan.tmp_output and plan.tmp_output != plan.final_output
    assert os.path.dirname(plan.tmp_output) == os.path.dirname(plan.final_output)


def test_local_input_uses_file_protocol(ctx):
    plan = build_plan(validate_spec({"scenario": "480p-h264", "input": "clip.mp4"}), "jx", 1, ctx)
    i = plan.argv.index("-i")
    assert plan.argv[i + 1] == "file:" + os.path.join(ctx.input_roots[0], "clip.mp4")


def test_symlink_escape_is_refused(ctx, tmp_path):
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"x")
    os.symlink(secret, os.path.join(ctx.input_roots[0], "link.mp4"))
    with pytest.raises(PlanError) as exc:
        build_plan(validate_spec({"scenario": "480p-h264", "input": "link.mp4"}), "jx", 1, ctx)
    assert exc.value.reason == "input_not_found" and not exc.value.platform


def test_absolute_output_outside_roots_is_refused(ctx):
    with pytest.raises(PlanError) as exc:
        build_plan(validate_spec({"scenario": "480p-h264", "output": "/etc/x.mp4"}), "jx", 1, ctx)
    assert exc.value.reason == "output_outside_roots"


def test_unmounted_input_root_is_a_platform_failure(ctx, tmp_path):
    ctx.input_roots = [str(tmp_path / "not-mounted")]
    with pytest.raises(PlanError) as exc:
        build_plan(validate_spec({"scenario": "480p-h264", "input": "clip.mp4"}), "jx", 1, ctx)
    assert exc.value.platform


def test_hw_job_on_node_without_encoder_is_platform_failure(ctx):
    with pytest.raises(PlanError) as exc:
        pick_encoder("h264", "nvenc", ctx)
    assert exc.value.platform and exc.value.reason == "encoder_unavailable"


def test_auto_prefers_a_proven_hw_encoder(ctx):
    ctx.encoders = {**CPU, "h264_nvenc": True}
    assert pick_encoder("h264", "auto", ctx) == ("h264_nvenc", "nvenc")
    assert pick_encoder("h264", "none", ctx) == ("libx264", "cpu")


def test_rtmp_output_is_flv_and_has_no_temp_file(ctx):
    plan = build_plan(
        validate_spec({"scenario": "rtmp-restream", "output": "rtmp://127.0.0.1/live/k", "duration": 5}),
        "jx",
        1,
        ctx,
    )
    assert plan.kind == "stream" and plan.tmp_output is None
    assert plan.argv[-3:] == ["-f", "flv", "rtmp://127.0.0.1/live/k"]


def test_hls_ladder_has_three_renditions(ctx):
    plan = build_plan(validate_spec({"scenario": "hls-ladder", "duration": 1}), "jx", 1, ctx)
    vsm = plan.argv[plan.argv.index("-var_stream_map") + 1]
    assert vsm == "v:0,a:0 v:1,a:1 v:2,a:2"
    assert "master.m3u8" in plan.argv


def test_limits_wrap_ffmpeg_in_a_systemd_scope_where_there_is_no_cgroup_of_ours():
    from agent.limits import limited_argv

    argv, layout = limited_argv(["ffmpeg", "-i", "x"], "jx-2", 150, 512, (None, "/usr/bin/systemd-run"))
    assert layout is None
    assert argv[:5] == ["/usr/bin/systemd-run", "--scope", "--quiet", "--collect", "--unit=ffrtmp-job-jx-2"]
    assert "CPUQuota=150%" in argv and "MemoryMax=512M" in argv
    assert argv[argv.index("--") + 1 :] == ["ffmpeg", "-i", "x"]
    assert limited_argv(["ffmpeg"], "jx-1", None, None, (None, None)) == (["ffmpeg"], None)


@pytest.mark.parametrize(
    ("spec_input", "protocols"),
    [
        ("clip.mp4", "file"),
        ("rtmp://h/app/key", "rtmp,tcp"),
        ("rtmps://h/app/key", "rtmps,rtmp,tls,tcp"),
        ("srt://h:9000", "srt,udp"),
        ("https://h/a.m3u8", "https,http,httpproxy,tls,tcp"),
    ],
)
def test_every_input_kind_pins_what_ffmpeg_may_open(ctx, spec_input, protocols):
    from agent.pipeline import LOCAL_DEMUXERS

    argv = build_plan(validate_spec({"scenario": "480p-h264", "input": spec_input}), "jx", 1, ctx).argv
    i = argv.index("-i")
    assert argv[argv.index("-protocol_whitelist") + 1] == protocols and argv.index("-protocol_whitelist") < i
    if protocols == "file":  # local: media containers only, never a playlist or a list
        allowed = set(argv[argv.index("-format_whitelist") + 1].split(","))
        assert allowed == set(LOCAL_DEMUXERS.split(",")) and not allowed & {
            "hls",
            "dash",
            "concat",
            "image2",
            "tee",
        }
    else:
        assert "-format_whitelist" not in argv


def test_a_url_of_an_unknown_scheme_is_refused_by_the_guard():
    from agent.pipeline import input_guard

    with pytest.raises(PlanError) as exc:
        input_guard("gopher://h/x")
    assert exc.value.reason == "input_scheme_refused"
