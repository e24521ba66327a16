import re

import pytest

from agent.pipeline import PlanError
from agent.urlpolicy import check_url_input
from ffrtmp.networks import parse_networks


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.ts",
        "http://0x7f.1/x.ts",
        "http://2130706433/x.ts",
        "http://localhost:8080/x",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://169.254.169.254/latest/meta-data/",
        "https://10.1.2.3/a.m3u8",
        "rtmp://192.168.1.10/live/key",
        "rtmps://172.16.0.1/live/key",
        "srt://100.64.0.5:9000",
        "http://0.0.0.0/x",
        "http://[fe80::1]/x",
        "http://224.0.0.1/x",
    ],
)
def test_inside_destinations_are_refused_with_one_message(url):
    with pytest.raises(PlanError) as exc:
        check_url_input(url, [])
    assert exc.value.reason == "destination_not_allowed" and exc.value.message == "destination not allowed"


def test_public_addresses_pass_and_an_allowed_network_opens_a_range():
    check_url_input("rtmp://8.8.8.8/live/key", [])
    check_url_input("http://[2001:4860:4860::8888]/x", [])
    check_url_input("srt://10.1.2.3:9000?mode=caller", ["10.1.0.0/16"])
    with pytest.raises(PlanError):
        check_url_input("srt://10.2.2.3:9000", ["10.1.0.0/16"])


def test_srt_listener_mode_and_unresolvable_names_are_refused():
    with pytest.raises(PlanError) as exc:
        check_url_input("srt://8.8.8.8:9000?mode=listener", [])
    assert exc.value.reason == "srt_listener_refused"
    with pytest.raises(PlanError) as exc:
        check_url_input("http://no-such-host.invalid/x", [])
    assert exc.value.reason == "input_unresolvable"


def test_networks_are_parsed_and_a_bad_one_is_named():
    assert [str(n) for n in parse_networks(["10.1.0.0/16 fd00::/8"])] == ["10.1.0.0/16", "fd00::/8"]
    with pytest.raises(ValueError, match=re.escape("'10.1.0.0/33'")):
        parse_networks(["10.1.0.0/33"])
