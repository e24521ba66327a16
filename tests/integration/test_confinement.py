"""FFmpeg's own demuxers must not open files outside the input roots: a playlist or a concat
list inside a root, under any name, that names a file outside them is refused, and nothing of
the outside file reaches an output. Each trick is run as a real job on a real fleet."""

import subprocess

import pytest

pytestmark = pytest.mark.integration


def _clip(path, seconds=2):
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size=64x64:rate=10:duration={seconds}",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            str(path),
        ],
        check=True,
    )


@pytest.fixture(scope="module")
def tricks(fleet, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    secret = outside / "secret.ts"
    _clip(secret)
    root = fleet.inputs
    root.mkdir(parents=True, exist_ok=True)
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n{secret}\n#EXT-X-ENDLIST\n"
    (root / "evil.m3u8").write_text(playlist)
    (root / "evil-playlist.mp4").write_text(playlist)  # the name says mp4, the content is HLS
    (root / "outside-dir").symlink_to(outside, target_is_directory=True)
    (root / "evil.ffconcat").write_text("ffconcat version 1.0\nfile 'outside-dir/secret.ts'\n")
    (root / "evil-concat.mkv").write_text(f"ffconcat version 1.0\nfile '{secret}'\n")
    (root / "evil.mpd").write_text(
        '<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
        f'mediaPresentationDuration="PT2S"><Period><AdaptationSet><Representation id="1" bandwidth="1">'
        f"<BaseURL>file://{secret}</BaseURL></Representation></AdaptationSet></Period></MPD>"
    )
    _clip(root / "good.ts")
    return root


@pytest.mark.parametrize(
    "name", ["evil.m3u8", "evil-playlist.mp4", "evil.ffconcat", "evil-concat.mkv", "evil.mpd"]
)
def test_a_list_inside_the_roots_naming_a_file_outside_them_is_refused(fleet, tricks, name):
    out = f"confined-{name.replace('.', '-')}.mp4"
    res = fleet.cli(
        "--output",
        "json",
        "jobs",
        "submit",
        "-s",
        "480p-h264",
        "--input",
        name,
        "--output",
        out,
        "--resolution",
        "64x64",
        "--max-attempts",
        "1",
        "--wait",
    )
    assert res.returncode != 0, res.stdout
    assert '"completed"' not in res.stdout
    assert not (fleet.outputs / out).exists()
    assert not list(fleet.outputs.glob(f".confined-{name.replace('.', '-')}*"))  # no part left


def test_a_real_clip_inside_the_roots_still_encodes(fleet, tricks):
    res = fleet.cli(
        "jobs",
        "submit",
        "-s",
        "480p-h264",
        "--input",
        "good.ts",
        "--output",
        "confined-good.mp4",
        "--resolution",
        "64x64",
        "--wait",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert (fleet.outputs / "confined-good.mp4").stat().st_size > 0


def _submit(fleet, *args):
    return fleet.cli("--output", "json", "jobs", "submit", "-s", *args, "--resolution", "64x64", "--wait")


def test_an_existing_output_is_never_replaced_unless_the_job_says_overwrite(fleet, tricks):
    assert _submit(fleet, "480p-h264", "--duration", "1", "--output", "mine.mp4").returncode == 0
    path = fleet.outputs / "mine.mp4"
    before = path.stat()
    res = _submit(fleet, "480p-h264", "--duration", "2", "--output", "mine.mp4")
    assert res.returncode != 0 and "output_exists" in res.stdout, res.stdout
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )
    res = _submit(fleet, "480p-h264", "--duration", "2", "--output", "mine.mp4", "--overwrite")
    assert res.returncode == 0, res.stdout
    assert path.stat().st_ino != before.st_ino


def test_an_hls_ladder_never_empties_an_existing_directory(fleet, tricks):
    precious = fleet.outputs / "precious"
    precious.mkdir(parents=True, exist_ok=True)
    (precious / "keep.txt").write_text("mine")
    res = _submit(fleet, "hls-ladder", "--duration", "2", "--output", "precious")
    assert res.returncode != 0 and "output_exists" in res.stdout, res.stdout
    assert (precious / "keep.txt").read_text() == "mine"
