import pytest

from ffrtmp.redact import redact, redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pw@h:8080/a.mp4?x=1&token=abc", "http://user:***@h:8080/a.mp4?x=1&token=***"),
        ("https://tok@h/x.m3u8", "https://***@h/x.m3u8"),
        ("rtmp://live.example/app/sk_live_123", "rtmp://live.example/app/***"),
        ("rtmps://a.b/live2/key?foo=1", "rtmps://a.b/live2/***?foo=1"),
        ("RTMP://u:p@h/app/k", "rtmp://u:***@h/app/***"),
        ("rtmp://h/app", "rtmp://h/app"),  # no stream key in it
        ("srt://h:9000?passphrase=s3cret&latency=200", "srt://h:9000?passphrase=***&latency=200"),
        ("srt://h:9000?streamid=#!::r=live/k,m=publish", "srt://h:9000?streamid=***#***"),
        ("https://b.s3.amazonaws.com/o.mp4?X-Amz-Signature=ab&X-Amz-Credential=c", None),
        ("http://[::1", "***"),  # too broken to parse: hidden whole
        ("/media/in/clip.mp4", "/media/in/clip.mp4"),
    ],
)
def test_secrets_in_urls_are_masked(url, shown):
    got = redact_url(url)
    if shown is None:
        assert "ab" not in got.split("?")[1] and "=c" not in got and got.count("***") == 2
    else:
        assert got == shown


def test_urls_inside_ffmpeg_text_and_nested_views_are_masked():
    line = "Input #0, flv, from 'rtmp://u:p@h/app/key':\n  Duration: N/A"
    assert redact_text(line) == "Input #0, flv, from 'rtmp://u:***@h/app/***':\n  Duration: N/A"
    view = {"input": "http://a:b@h/x", "history": [{"reason": "x", "n": 3}], "error": None}
    assert redact(view) == {"input": "http://a:***@h/x", "history": [{"reason": "x", "n": 3}], "error": None}
