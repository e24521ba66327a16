import pytest

from agent.runner import parse_progress_block, with_percent
from ffrtmp.auth import KeyRing, hash_key, new_key, parse_key_file, role_allows
from ffrtmp.durations import parse_duration
from ffrtmp.queues import PLAIN_QUEUES, queue_for, slot_queues


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
