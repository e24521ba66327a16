import pytest

from agent.runner import parse_progress_block, with_percent
from ffrtmp.auth import KeyRing, hash_key, new_key, parse_key_file, role_allows
from ffrtmp.durations import parse_duration
from ffrtmp.nodes import _node_record
from ffrtmp.queues import PLAIN_QUEUES, queue_for, slot_queues, split_queue


@pytest.mark.parametrize(
    ("text", "s"), [("10s", 10), ("1m30s", 90), ("500ms", 0.5), ("2h", 7200), ("15", 15)]
)
def test_go_durations(text, s):
    assert parse_duration(text) == s


@pytest.mark.parametrize("bad", ["", "10x", "s10", "-5s", "1m 2s"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_queue_order_is_strict():
    assert PLAIN_QUEUES[0] == "live.high" and PLAIN_QUEUES[-1] == "batch.low" and len(PLAIN_QUEUES) == 9
    assert slot_queues([], live_only=True) == ["live.high", "live.medium", "live.low"]
    qs = slot_queues(["nvenc"], live_only=False)
    assert qs[:3] == ["live.high.nvenc", "live.high", "live.medium.nvenc"]
    assert (
        queue_for("batch", "low", "nvenc") == "batch.low.nvenc"
        and queue_for("live", "high", "auto") == "live.high"
    )


def test_pinned_queues_come_first_in_each_tier_and_parse_back():
    assert queue_for("default", "high", "nvenc", node="gpu-1.dc") == "default.high@gpu-1.dc"
    assert split_queue("default.high@gpu-1.dc") == ("default", "high", None)
    assert split_queue("batch.low.qsv") == ("batch", "low", "qsv")
    qs = slot_queues(["nvenc"], live_only=True, node="n1")
    assert qs[:4] == ["live.high@n1", "live.high.nvenc", "live.high", "live.medium@n1"]
    assert len(slot_queues([], live_only=False, node="n1")) == 18


@pytest.mark.parametrize("blob", [b"not json", b"[1, 2]", b'{"no": "name"}', b'{"name": 5}', None])
def test_a_broken_node_record_is_no_node(blob):
    assert _node_record(blob, 0, 0, 100.0, 15.0) is None


def test_node_record_state_schema_and_a_garbled_heartbeat():
    rec = _node_record(b'{"name": "a", "last_heartbeat": 95}', 1, 4, 100.0, 15.0)
    assert (
        rec["state"] == "draining" and rec["schema"] == 1 and rec["flapping"] and rec["heartbeat_age_s"] == 5
    )
    rec = _node_record(b'{"name": "a", "last_heartbeat": "soon", "schema": 2}', 0, 0, 100.0, 15.0)
    assert rec["state"] == "dead" and rec["schema"] == 2


def test_progress_parsing_and_percent():
    block = {
        "frame": "120",
        "fps": "30.00",
        "bitrate": "2000.1kbits/s",
        "total_size": "1000",
        "out_time_us": "4000000",
        "speed": "2.00x",
        "progress": "continue",
    }
    p = with_percent(parse_progress_block(block), duration=10)
    assert p["frame"] == 120 and p["out_time_s"] == 4.0 and p["speed"] == 2.0
    assert p["percent"] == 40.0 and p["eta_s"] == 3.0
    na = parse_progress_block({"frame": "0", "out_time_us": "N/A", "speed": "N/A", "progress": "continue"})
    assert na["out_time_s"] is None and "percent" not in with_percent(na, 10)


def test_key_file_and_roles():
    key = new_key()
    ring = KeyRing(parse_key_file(f"# comment\nops operator {hash_key(key)}\n"))
    assert ring.lookup(key).role == "operator" and ring.lookup(key + "x") is None
    assert role_allows("admin", "operator") and not role_allows("viewer", "operator")
    with pytest.raises(ValueError):
        parse_key_file("ops root sha256:abc")


def test_nvidia_smi_rows_parse():
    from agent.probe import parse_nvidia_smi

    # recorded from a real H200 host (driver 580.159.04) with the agent's exact query
    gpus = parse_nvidia_smi("0, NVIDIA H200, 143771, 0, 580.159.04, 0\n")
    assert gpus == [
        {
            "vendor": "nvidia",
            "index": "0",
            "model": "NVIDIA H200",
            "memory_mb": 143771,
            "utilization_percent": 0,
            "driver": "580.159.04",
            "encoder_sessions": 0,
        }
    ]
    assert parse_nvidia_smi("0, Tesla T4, 15360, [N/A], 535.1, [N/A]\n")[0]["utilization_percent"] is None


@pytest.mark.parametrize("hb", [0.5, 1, 2, 5, 10, 30, 60, 120])
def test_recovery_timings_never_overlap_a_run_with_its_retry(hb):
    from ffrtmp.timing import execution_ttl, orphan_deadline, renewal_interval

    deadline, renew, ttl = orphan_deadline(hb), renewal_interval(hb), execution_ttl(hb)
    # the execution can be a whole renewal old when the horse dies; the orphan stops 3 s after its deadline
    assert ttl - renew >= deadline + 3
    assert deadline >= 3 * hb  # re-adoption works for a restart within the heartbeat timeout
    if hb == 30:  # default timings: requeued within heartbeat timeout + 15 s (recovery tick 10 s)
        assert ttl + 10 <= 3 * hb + 15


def test_run_directory_format_is_read_and_a_garbled_one_counts_as_newer(tmp_path):
    import json

    from ffrtmp.rundir import FORMAT, RunDir

    rd = RunDir.create(str(tmp_path), "jabc", 1, "e" * 32, "1|" + "e" * 32 + "|n1|s0")
    assert rd.format == FORMAT and rd.token.endswith("|n1|s0")
    for written, read in (
        ({}, 1),
        ({"format": 7}, 7),
        ({"format": "7"}, FORMAT + 1),
        ({"format": True}, FORMAT + 1),
    ):
        (tmp_path / "runs" / "jabc" / f"1-{'e' * 12}" / "attempt.json").write_text(json.dumps(written))
        assert rd.format == read, written


@pytest.mark.parametrize(
    ("node", "ok"), [("gpu-1", True), ("a.b_c", True), ("-x", False), ("a b", False), ("", False)]
)
def test_a_pinned_node_name_is_validated(node, ok):
    from ffrtmp.model import SubmissionError, validate_spec

    if ok:
        assert validate_spec({"scenario": "480p-h264", "node": node}).node == node
    else:
        with pytest.raises(SubmissionError) as exc:
            validate_spec({"scenario": "480p-h264", "node": node})
        assert exc.value.field == "node"


def test_the_supervisor_program_records_a_command_it_cannot_run(tmp_path):
    """agent.runner is a program of its own: a cmd.json naming no command ends it with an
    exit record (returncode 127 and the error), never silently."""
    import json
    import subprocess
    import sys

    from ffrtmp.rundir import RunDir

    rd = RunDir.create(str(tmp_path), "jbad", 1, "f" * 32, "1|" + "f" * 32 + "|n1|s0")
    (tmp_path / "runs" / "jbad" / f"1-{'f' * 12}" / "cmd.json").write_text(
        json.dumps({"argv": "ffmpeg -i x"})
    )
    res = subprocess.run(
        [sys.executable, "-P", "-m", "agent.runner", rd.path], capture_output=True, timeout=60
    )
    assert res.returncode == 1 and b"runner failed" in res.stderr
    exit_rec = json.loads((tmp_path / "runs" / "jbad" / f"1-{'f' * 12}" / "exit.json").read_text())
    assert exit_rec["returncode"] == 127 and "names no command" in exit_rec["runner_error"]


def test_the_supervisor_removes_the_output_of_a_run_that_failed(tmp_path):
    """Nobody publishes what a failed run wrote: its supervisor removes the partial output
    itself (its watcher may be dead) and records how much it took (for the disk-full marker)."""
    import json
    import subprocess
    import sys

    from ffrtmp.rundir import RunDir

    rd = RunDir.create(str(tmp_path), "jfail", 1, "a" * 32, "1|" + "a" * 32 + "|n1|s0")
    part = tmp_path / ".out.jfail-a1.part.ts"
    argv = ["sh", "-c", f"printf 12345 > {part}; exit 3"]
    (tmp_path / "runs" / "jfail" / f"1-{'a' * 12}" / "cmd.json").write_text(
        json.dumps({"argv": argv, "tmp_output": str(part)})
    )
    subprocess.run([sys.executable, "-P", "-m", "agent.runner", rd.path], capture_output=True, timeout=60)
    exit_rec = rd.exit()
    assert exit_rec is not None and exit_rec["returncode"] == 3 and exit_rec["partial_bytes"] == 5
    assert not part.exists()
