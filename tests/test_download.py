"""Downloading FMA: against a real HTTP server on 127.0.0.1 that serves small zips made here."""

import errno
import hashlib
import http.server
import io
import re
import shutil
import threading
import time
import warnings
import zipfile
from collections import namedtuple
from pathlib import Path

import pytest

import genre_utils as gu
from conftest import SR, write_tone

FAST = dict(retries=2, backoff=0.01, timeout=0.5, progress=False)  # short waits: the whole file runs in seconds


class FmaServer(http.server.ThreadingHTTPServer):
    """Serves `files` by name, logs every request, and misbehaves on demand."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), FmaHandler)
        self.files = files
        self.requests: list[tuple[str, str | None]] = []  # (file name, Range header)
        self.cut_after: dict[str, int] = {}  # the next answer for this file closes after N bytes of body
        self.status: dict[str, int] = {}  # this file answers with this HTTP status
        self.stall: set[str] = set()  # this file sends its headers, then nothing
        self.ignore_range = False  # answer 200 with the whole file even to a Range request
        self.release = threading.Event()  # ends the stalls when the test is over
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def requests_for(self, name: str) -> list[str | None]:
        return [range_ for file, range_ in self.requests if file == name]


class FmaHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        server, name = self.server, self.path.lstrip("/")
        range_ = self.headers.get("Range")
        server.requests.append((name, range_))
        if name in server.status:
            self.send_error(server.status[name])
            return
        if name not in server.files:
            self.send_error(404)
            return
        data, start = server.files[name], 0
        if range_ and not server.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if name in server.stall:
            self.wfile.flush()
            server.release.wait(10)
            return
        body = data[start:]
        self.wfile.write(body[: server.cut_after.pop(name, len(body))])


def zip_folder(root: Path, folder: str) -> bytes:
    """`root/folder` as zip bytes, with its directory entries, as FMA's archives are made."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted((root / folder).rglob("*")):
            archive.write(path, path.relative_to(root).as_posix())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fixture_zips(tmp_path_factory):
    """fma_metadata.zip and fma_small.zip of a 16-clip demo FMA in which one clip is deliberately
    broken (the demo's), one too short and one missing; with the facts the tests check."""
    source = tmp_path_factory.mktemp("source") / "fma"
    tracks = gu.make_demo_dataset(
        source, gu.get_config("demo"), clips_per_genre=2, seconds=1.0, sr=SR, seed=3, progress=False, workers=1
    )
    broken = gu.skipped_tracks(tracks).index.tolist() + [
        tid for tid, path in tracks["path"].items() if Path(path).stat().st_size < 100
    ]
    healthy = [tid for tid in tracks.index if tid not in broken]
    short, missing = healthy[0], healthy[1]
    write_tone(tracks.at[short, "path"], 0.3)
    Path(tracks.at[missing, "path"]).unlink()
    (source / "fma_small" / "README.txt").write_text("FMA-small, as made by the tests\n")
    files = {
        name: zip_folder(source, folder)
        for name, folder in (("fma_metadata.zip", "fma_metadata"), ("fma_small.zip", "fma_small"))
    }
    facts = dict(tracks=tracks, broken=broken[0], short=short, missing=missing)
    return files, facts


@pytest.fixture
def server(fixture_zips, monkeypatch):
    """The server, with FMA_ARCHIVES describing its zips (their own SHA-1s and sizes)."""
    files, _ = fixture_zips
    fma_server = FmaServer(dict(files))
    for key, name in (("metadata", "fma_metadata.zip"), ("small", "fma_small.zip")):
        with zipfile.ZipFile(io.BytesIO(files[name])) as archive:
            unpacked = sum(member.file_size for member in archive.infolist())
        monkeypatch.setitem(
            gu.FMA_ARCHIVES,
            key,
            gu.FmaArchive(
                name, name.removesuffix(".zip"), hashlib.sha1(files[name]).hexdigest(), len(files[name]), unpacked
            ),
        )
    thread = threading.Thread(target=fma_server.serve_forever, kwargs=dict(poll_interval=0.02), daemon=True)
    thread.start()
    yield fma_server
    fma_server.release.set()
    fma_server.shutdown()
    fma_server.server_close()


def download(root, server, **changes):
    return gu.download_fma(root, base_url=server.url, **dict(FAST, **changes))


def test_download_fetches_verifies_and_unpacks_both_archives(tmp_path, server, fixture_zips):
    _, facts = fixture_zips
    folders = download(tmp_path / "fma", server)
    assert folders == [tmp_path / "fma" / "fma_metadata", tmp_path / "fma" / "fma_small"]
    assert server.requests == [("fma_metadata.zip", None), ("fma_small.zip", None)]
    assert sorted(p.name for p in (tmp_path / "fma").iterdir()) == [
        "fma_metadata",
        "fma_metadata.zip",
        "fma_metadata.zip.verified.json",
        "fma_small",
        "fma_small.zip",
        "fma_small.zip.verified.json",
    ]
    with pytest.warns(UserWarning, match="skipped 1 of"):  # the missing file
        tracks = gu.load_tracks(tmp_path / "fma")
    source = facts["tracks"].drop(index=facts["missing"])
    assert list(tracks.index) == list(source.index)
    assert all(Path(p).read_bytes() == Path(q).read_bytes() for p, q in zip(tracks["path"], source["path"]))


def test_a_second_run_makes_no_request_and_unpacks_nothing(tmp_path, server):
    download(tmp_path, server)
    marker = tmp_path / "fma_small" / ".unpacked.json"
    before = marker.stat().st_mtime_ns
    server.requests.clear()
    download(tmp_path, server)
    assert server.requests == []
    assert marker.stat().st_mtime_ns == before


def test_a_cut_connection_is_resumed_with_a_range_request(tmp_path, server):
    size = len(server.files["fma_small.zip"])
    server.cut_after["fma_small.zip"] = size // 3
    download(tmp_path, server)
    assert server.requests_for("fma_small.zip") == [None, f"bytes={size // 3}-"]
    assert (tmp_path / "fma_small" / "README.txt").is_file()


def test_a_download_cut_in_one_run_resumes_in_the_next(tmp_path, server):
    size = len(server.files["fma_small.zip"])
    server.cut_after["fma_small.zip"] = size // 2
    message = (
        r"fma_small.zip: download failed 1 time\(s\) in a row, last: Connection broken: "
        r"IncompleteRead\(\d+ bytes read, \d+ more expected\)\. .* keeps the [\d.]+ MiB received and the "
        r"next run resumes"
    )
    with pytest.raises(gu.DownloadError, match=message):
        download(tmp_path, server, retries=0)
    assert (tmp_path / "fma_small.zip.part").stat().st_size == size // 2
    assert not (tmp_path / "fma_small").exists()
    download(tmp_path, server)
    assert server.requests_for("fma_small.zip") == [None, f"bytes={size // 2}-"]
    assert (tmp_path / "fma_small.zip").read_bytes() == server.files["fma_small.zip"]


def test_a_part_file_killed_just_before_its_rename_is_finished_without_data(tmp_path, server):
    size = len(server.files["fma_small.zip"])
    (tmp_path / "fma_small.zip.part").write_bytes(server.files["fma_small.zip"])
    download(tmp_path, server, archives=["small"])
    assert server.requests == [("fma_small.zip", f"bytes={size}-")]  # answered 416: nothing left to send
    assert (tmp_path / "fma_small" / "README.txt").is_file()


def test_a_server_that_ignores_range_is_downloaded_again_from_the_start(tmp_path, server):
    server.ignore_range = True
    server.cut_after["fma_small.zip"] = 1000
    download(tmp_path, server)
    assert (tmp_path / "fma_small.zip").read_bytes() == server.files["fma_small.zip"]


def test_a_wrong_checksum_is_an_error_and_the_file_is_set_aside(tmp_path, server):
    digest = hashlib.sha1(server.files["fma_small.zip"]).hexdigest()
    with pytest.raises(gu.DownloadError, match=f"fma_small.zip: SHA-1 {digest} but 0{{40}} expected.*not unpacked"):
        download(tmp_path, server, sha1={"fma_small.zip": "0" * 40})
    assert (tmp_path / f"fma_small.zip.bad-{digest}").is_file()
    assert not (tmp_path / "fma_small.zip").exists() and not (tmp_path / "fma_small").exists()
    server.requests.clear()
    download(tmp_path, server)  # the set-aside file is never used: fetched again
    assert server.requests == [("fma_small.zip", None)]


def test_a_corrupt_zip_put_there_by_hand_is_set_aside_and_fetched_again(tmp_path, server):
    (tmp_path / "fma_metadata.zip").write_bytes(b"not the archive")
    with pytest.warns(UserWarning, match="fma_metadata.zip: SHA-1 .* expected; renamed .*bad-.*downloading it again"):
        download(tmp_path, server)
    assert server.requests_for("fma_metadata.zip") == [None]
    assert len(list(tmp_path.glob("fma_metadata.zip.bad-*"))) == 1


def test_a_sha1_override_is_checked_and_used(tmp_path, server):
    digest = hashlib.sha1(server.files["fma_small.zip"]).hexdigest()
    with pytest.raises(gu.ConfigError, match="40 hexadecimal digits"):
        download(tmp_path, server, sha1={"small": "abc"})
    with pytest.raises(gu.ConfigError, match="no such archive"):
        download(tmp_path, server, sha1={"fma_tiny.zip": digest})
    download(tmp_path, server, archives=["small"], sha1={"small": digest.upper()})
    assert (tmp_path / "fma_small").is_dir()


def test_not_found_is_a_clear_error_and_not_retried(tmp_path, server):
    with pytest.raises(gu.DownloadError, match=r"/nowhere/fma_metadata.zip: HTTP 404 .*--base-url"):
        gu.download_fma(tmp_path, base_url=server.url + "/nowhere", **FAST)
    assert len(server.requests) == 1


def test_a_server_error_is_retried_with_back_off_then_fails(tmp_path, server):
    server.status["fma_metadata.zip"] = 500
    start = time.monotonic()
    with pytest.raises(gu.DownloadError, match=r"failed 3 time\(s\) in a row, last: HTTP 500"):
        download(tmp_path, server, backoff=0.1)
    assert len(server.requests) == 3  # the first try and two retries
    assert time.monotonic() - start >= 0.1 + 0.2  # waited 0.1 s, then twice as long


def test_a_stalled_server_times_out(tmp_path, server):
    server.stall.add("fma_metadata.zip")
    start = time.monotonic()
    with pytest.raises(gu.DownloadError, match=r"last: no answer or no data for 0.2 s"):
        download(tmp_path, server, timeout=0.2, retries=1)
    assert len(server.requests) == 2 and time.monotonic() - start < 5


def test_not_enough_disk_space_fails_before_any_request(tmp_path, server, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(
        gu.DownloadError,
        match=r"not enough free disk space: .* needed \(fma_metadata.zip: .* to "
        r"download, .* unpacked; fma_small.zip.*\), 0.0 MiB free",
    ):
        download(tmp_path, server)
    assert server.requests == []


def test_a_disk_that_fills_up_while_downloading_is_a_clear_error(tmp_path, server, monkeypatch):
    real_open = open

    class FullDisk(io.RawIOBase):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):  # genre_utils' `open` while the test runs
        return FullDisk() if str(path).endswith(".part") else real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(gu, "open", open_on_a_full_disk, raising=False)
    with pytest.raises(gu.DownloadError, match=f"{tmp_path}: cannot write there: disk full"):
        download(tmp_path, server)


def test_an_unzip_that_fails_midway_leaves_no_dataset_and_is_redone(tmp_path, server, monkeypatch):
    real_extract = zipfile.ZipFile.extract

    def extract_then_fail(self, member, path=None, pwd=None):
        if len(list(Path(path).rglob("*.mp3"))) >= 3:
            raise RuntimeError("killed")
        return real_extract(self, member, path, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "extract", extract_then_fail)
    with pytest.raises(RuntimeError, match="killed"):
        download(tmp_path, server)
    assert (tmp_path / "fma_metadata").is_dir()
    assert not (tmp_path / "fma_small").exists() and not (tmp_path / ".fma_small.unpacking").exists()
    with pytest.raises(gu.DataError, match="no usable track"):
        gu.load_tracks(tmp_path)
    monkeypatch.setattr(zipfile.ZipFile, "extract", real_extract)
    (tmp_path / ".fma_small.unpacking" / "fma_small").mkdir(parents=True)  # as a killed unzip leaves it
    server.requests.clear()
    download(tmp_path, server)
    assert server.requests == []  # the verified zip is unpacked, not fetched again
    assert (tmp_path / "fma_small" / "README.txt").is_file() and not (tmp_path / ".fma_small.unpacking").exists()


def test_a_folder_unpacked_by_hand_is_left_alone(tmp_path, server):
    (tmp_path / "fma_metadata").mkdir()
    with pytest.warns(UserWarning, match="fma_metadata: already there but not unpacked .* left as it is"):
        download(tmp_path, server)
    assert server.requests == [("fma_small.zip", None)]


def test_check_dataset_counts_tracks_and_flags_missing_broken_and_short_files(
    tmp_path, server, fixture_zips, monkeypatch
):
    _, facts = fixture_zips
    download(tmp_path, server)
    monkeypatch.setattr(gu, "FMA_BROKEN_TRACKS", {facts["broken"]: "no audio"})
    check = gu.check_dataset(gu.get_config("demo", tmp_path, clip_seconds=1.0))
    assert check.counts.loc["total", "total"] == len(check.tracks) == 15
    per_genre = check.counts.drop(index="total")["total"]
    assert per_genre.to_dict() == {g: 1 + (g != facts["tracks"].at[facts["missing"], "genre"]) for g in gu.GENRES}
    problems = check.problems
    assert problems.loc[facts["missing"], "problem"] == "audio file not found"
    assert problems.loc[facts["short"], "problem"] == "0.3 s long, much shorter than 1 s"
    assert problems.loc[facts["broken"], "known"] and problems["known"].sum() == 1
    assert len(problems) == 3
    text = check.summary()
    assert "15 tracks" in text and "3 file(s) missing, unreadable or much shorter" in text and "(known)" in text


def test_cli_downloads_from_the_environment_url_and_prints_the_check(tmp_path, server, monkeypatch, capsys):
    monkeypatch.setenv(gu.FMA_URL_VARIABLE, server.url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert gu.main(["--data", str(tmp_path), "download", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"unpacked in {tmp_path}: fma_metadata/, fma_small/" in out
    # the seed preset's 30 s clips: every 1 s clip of the fixture is much too short
    assert "15 tracks" in out and "16 file(s) missing, unreadable or much shorter than the clips" in out


def test_cli_reports_download_errors(tmp_path, server, capsys):
    with pytest.raises(SystemExit) as exit_:
        gu.main(["--data", str(tmp_path), "download", "metadata", "--base-url", server.url + "/gone", "--quiet"])
    assert exit_.value.code == 1
    assert re.search(r"download: error: .*/gone/fma_metadata.zip: HTTP 404", capsys.readouterr().err)
    with pytest.raises(SystemExit):
        gu.main(["--data", str(tmp_path), "download", "--sha1", "fma_small.zip", "--quiet"])
    assert "expected NAME=HEX" in capsys.readouterr().err
