"""The master playlist's rates, measured from the segments (unit: hand-made playlists)."""

from __future__ import annotations

from agent.hls import rewrite_master, segment_rates


def test_rates_are_measured_and_hostile_entries_are_skipped(tmp_path):
    v = tmp_path / "v0"
    v.mkdir()
    (v / "a.ts").write_bytes(b"x" * 1000)  # 8,000 bits over 2 s: 4,000 b/s
    (v / "b.ts").write_bytes(b"x" * 3000)  # 24,000 bits over 4 s: 6,000 b/s
    (v / "index.m3u8").write_text(
        "#EXTM3U\n#EXTINF:2.0,\na.ts\n#EXTINF:bad,\nb.ts\n#EXTINF:4.0,\n../../etc/passwd\n"
        "#EXTINF:4.0,\nb.ts\n#EXT-X-ENDLIST\n"
    )
    rates = segment_rates(str(v / "index.m3u8"))
    assert rates is not None and rates.peak_bps == 6000 and rates.average_bps == 5334  # 32,000 / 6
    master = tmp_path / "master.m3u8"
    master.write_text(
        '#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=100,RESOLUTION=64x64,CODECS="avc1.64001e,mp4a.40.2"\nv0/index.m3u8\n'
    )
    rewrite_master(str(master), 30)
    inf = master.read_text().splitlines()[1]
    assert inf == (
        '#EXT-X-STREAM-INF:BANDWIDTH=6000,RESOLUTION=64x64,CODECS="avc1.64001e,mp4a.40.2",'
        "AVERAGE-BANDWIDTH=5334,FRAME-RATE=30.000"
    )


def test_the_peak_is_over_runs_of_about_a_target_duration_not_a_tiny_tail(tmp_path):
    (tmp_path / "a.ts").write_bytes(b"x" * 2000)  # 16,000 bits over 4 s: 4,000 b/s
    (tmp_path / "b.ts").write_bytes(b"x" * 2500)  # 20,000 bits over 4 s: 5,000 b/s
    (tmp_path / "c.ts").write_bytes(b"x" * 100)  # 800 bits over 0.04 s: 20,000 b/s alone
    (tmp_path / "i.m3u8").write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\na.ts\n#EXTINF:4.0,\nb.ts\n#EXTINF:0.04,\nc.ts\n"
        "#EXTINF:0.0000001,\nc.ts\n"  # a duration too small to divide by: not measured
    )
    rates = segment_rates(str(tmp_path / "i.m3u8"))
    # runs of 2 to 6 s: a, b, b+c (a+b is 8 s: too long); b+c is 20,800 bits over 4.04 s
    assert rates is not None and rates.peak_bps == 5149 and rates.average_bps == 4578
