"""The data layer: FMA and folder-per-genre track tables, the split, audio loading."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import genre_utils as gu  # noqa: E402
from conftest import SR, write_tone  # noqa: E402


def write_tracks_csv(root: Path, rows: dict[int, dict], drop: tuple = ()) -> Path:
    """An FMA tracks.csv with the real two-level header; rows: track_id -> {(top, sub): value}."""
    table = pd.DataFrame.from_dict(rows, orient="index").drop(columns=list(drop))
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    table.index.name = "track_id"
    path = root / "fma_metadata" / "tracks.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path)
    return path


def fma_row(genre, split="training", subset="small", title="A Song", artist="An Artist"):
    return {
        ("artist", "name"): artist,
        ("set", "split"): split,
        ("set", "subset"): subset,
        ("track", "genre_top"): genre,
        ("track", "title"): title,
    }


@pytest.fixture
def fma_root(tmp_path):
    """Small FMA: tracks 2, 5 (small, audio), 140 (small, test), 1000 (medium), 2000 (large)."""
    rows = {
        2: fma_row("Hip-Hop", title="First"),
        5: fma_row("Rock", "validation"),
        140: fma_row("Folk", "test"),
        1000: fma_row("Rock", subset="medium"),
        2000: fma_row("Pop", subset="large"),
    }
    write_tracks_csv(tmp_path, rows)
    for tid in (2, 5, 140):
        path = gu.audio_path(tmp_path, tid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff\xfb" + bytes(100))  # load_tracks only checks that the file is there and not empty
    return tmp_path


def test_audio_path_follows_fmas_folder_scheme():
    assert gu.audio_path("/data", 2) == Path("/data/fma_small/000/000002.mp3")
    assert gu.audio_path(Path("/d"), 155066, "medium") == Path("/d/fma_medium/155/155066.mp3")


def test_read_fma_tracks_orders_subsets(fma_root):
    raw = gu.read_fma_tracks(fma_root / "fma_metadata" / "tracks.csv")
    assert raw.index.name == "track_id"
    assert raw["set", "subset"].cat.ordered
    assert sorted(raw.index[raw["set", "subset"] <= "small"]) == [2, 5, 140]
    assert sorted(raw.index[raw["set", "subset"] <= "medium"]) == [2, 5, 140, 1000]


def test_load_tracks_reads_fma_small_with_its_split_and_absolute_paths(fma_root):
    tracks = gu.load_tracks(fma_root)
    assert list(tracks.index) == [2, 5, 140]
    assert tracks.index.name == "track_id"
    assert list(tracks.columns) == ["genre", "split", "title", "artist", "path"]
    assert tracks.loc[2, ["genre", "split", "title", "artist"]].tolist() == [
        "Hip-Hop",
        "training",
        "First",
        "An Artist",
    ]
    assert tracks.loc[140, "split"] == "test"
    assert Path(tracks.loc[5, "path"]) == (fma_root / "fma_small" / "000" / "000005.mp3").resolve()
    assert all(Path(p).is_absolute() for p in tracks["path"])
    assert gu.skipped_tracks(tracks).empty


def test_load_tracks_names_the_fma_columns_that_are_missing(tmp_path):
    path = write_tracks_csv(tmp_path, {2: fma_row("Rock")}, drop=[("track", "genre_top"), ("set", "split")])
    with pytest.raises(gu.DataError, match="set/split, track/genre_top") as error:
        gu.load_tracks(tmp_path)
    assert str(path) in str(error.value)


def test_load_tracks_rejects_a_tracks_csv_without_fmas_two_header_rows(tmp_path):
    path = tmp_path / "fma_metadata" / "tracks.csv"
    path.parent.mkdir(parents=True)
    path.write_text("track_id,genre\n2,Rock\n")
    with pytest.raises(gu.DataError, match="tracks.csv"):
        gu.load_tracks(tmp_path)


def test_load_tracks_drops_unknown_genres_and_missing_or_empty_fma_audio(fma_root):
    rows = {2: fma_row("Hip-Hop"), 5: fma_row("Blues"), 7: fma_row("Rock"), 8: fma_row("Pop"), 9: fma_row(None)}
    write_tracks_csv(fma_root, rows)
    gu.audio_path(fma_root, 8).write_bytes(b"")  # empty; track 7 has no file at all
    with pytest.warns(UserWarning, match=r"skipped 4 of 5 tracks.*'Blues'"):
        tracks = gu.load_tracks(fma_root)
    assert list(tracks.index) == [2]
    skipped = gu.skipped_tracks(tracks)
    assert skipped.loc[5, "reason"] == "genre 'Blues' not in the genres used"
    assert skipped.loc[7, "reason"] == "audio file not found"
    assert skipped.loc[8, "reason"] == "audio file is empty (0 bytes)"
    assert skipped.loc[9, "reason"] == "no top genre"
    assert skipped.loc[7, "path"].endswith("000007.mp3")
    assert len(pd.concat([tracks, tracks])) == 2  # the record of skipped tracks does not break pandas


def test_load_tracks_raises_when_no_fma_track_is_left(fma_root):
    write_tracks_csv(fma_root, {2: fma_row("Blues"), 5: fma_row("Jazz")})
    with pytest.raises(gu.DataError, match="no usable track in 2"):
        gu.load_tracks(fma_root)


def test_load_tracks_rejects_an_unknown_subset(fma_root):
    with pytest.raises(gu.ConfigError, match="tiny"):
        gu.load_tracks(fma_root, subset="tiny")


def test_load_tracks_of_a_missing_root_says_how_to_get_data(tmp_path):
    with pytest.raises(gu.DataError, match="not found.*GENRE_DATA.*make data"):
        gu.load_tracks(tmp_path / "nowhere")


def test_load_tracks_lists_what_it_found_in_an_unrecognised_layout(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(gu.DataError, match=r"no dataset layout recognised.*Found: empty_folder/, notes.txt"):
        gu.load_tracks(tmp_path)


@pytest.fixture
def genre_folders(tmp_path):
    """GTZAN-like folders: 10 clips each of hiphop, Rock and blues (not one of the 8 genres)."""
    for folder in ("hiphop", "Rock", "blues"):
        for k in range(10):
            path = tmp_path / folder / f"{folder}.{k:05d}.wav"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"RIFF" + bytes(40))
    (tmp_path / "README.txt").write_text("not a genre")
    return tmp_path


def test_load_tracks_reads_one_folder_per_genre(genre_folders):
    with pytest.warns(UserWarning, match="'blues'"):
        tracks = gu.load_tracks(genre_folders)
    assert sorted(tracks["genre"].unique()) == ["Hip-Hop", "Rock"]
    assert tracks.index.is_unique and tracks.index.name == "track_id"
    counts = tracks.groupby(["genre", "split"]).size().unstack()
    assert (
        counts.loc["Hip-Hop"].to_dict() == counts.loc["Rock"].to_dict() == {"test": 1, "training": 8, "validation": 1}
    )
    # track ids number the files in sorted order: Rock/ (0-9), blues/ (10-19, dropped), hiphop/ (20-29)
    assert tracks.loc[0, "title"] == "Rock.00000" and tracks.loc[29, "title"] == "hiphop.00009"
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in tracks["path"])
    assert len(gu.skipped_tracks(tracks)) == 10


def test_genre_folders_split_is_deterministic(genre_folders):
    with pytest.warns(UserWarning):
        first, again, other = (gu.load_tracks(genre_folders, seed=seed) for seed in (42, 42, 7))
    pd.testing.assert_frame_equal(first, again)
    assert not first["split"].equals(other["split"])


def test_stratified_split_cuts_every_label_by_the_fractions():
    labels = ["a"] * 20 + ["b"] * 10 + ["c"] * 3
    splits = gu.stratified_split(labels, seed=0)
    table = pd.crosstab(pd.Series(labels, name="label"), pd.Series(splits, name="split"))
    assert table.loc["a"].to_dict() == {"test": 2, "training": 16, "validation": 2}
    assert table.loc["b"].to_dict() == {"test": 1, "training": 8, "validation": 1}
    assert table.loc["c", "training"] == 3
    assert list(splits) == list(gu.stratified_split(labels, seed=0))


def test_load_audio_pads_crops_and_mixes_down(tmp_path):
    short = tmp_path / "short.wav"
    write_tone(short, 0.5)
    y = gu.load_audio(short, SR, 1.0)
    assert y.dtype == np.float32 and y.shape == (SR,)
    assert np.abs(y[: SR // 2 - 10]).max() > 0.4 and not y[SR // 2 + 10 :].any()

    long = tmp_path / "long.wav"
    write_tone(long, 2.0, channels=2)
    y = gu.load_audio(long, SR, 1.0)
    assert y.shape == (SR,)
    assert np.abs(y).max() == pytest.approx(0.375, abs=0.01)  # mean of the two channels (0.5 and 0.25)


def test_load_audio_resamples_an_mp3(tmp_path):
    path = tmp_path / "clip.mp3"
    write_tone(path, 1.0)
    y = gu.load_audio(path, 8000, 1.0)
    assert y.shape == (8000,)
    spectrum = np.abs(np.fft.rfft(y))
    assert np.fft.rfftfreq(8000, 1 / 8000)[spectrum.argmax()] == pytest.approx(440, abs=2)


@pytest.mark.parametrize(
    "content, message",
    [(b"", "file is empty"), (b"this is a text file, not audio\n" * 20, "cannot decode")],
)
def test_load_audio_rejects_empty_and_non_audio_files_naming_them(tmp_path, content, message):
    path = tmp_path / "bad.mp3"
    path.write_bytes(content)
    with pytest.raises(gu.AudioError, match=message) as error:
        gu.load_audio(path, SR, 1.0)
    assert str(path) in str(error.value)


def test_load_audio_rejects_a_truncated_mp3(tmp_path):
    path = tmp_path / "truncated.mp3"
    write_tone(path, 1.0)
    path.write_bytes(path.read_bytes()[:64])
    with pytest.raises(gu.AudioError, match="truncated.mp3"):
        gu.load_audio(path, SR, 1.0)


def test_load_audio_says_a_missing_file_is_not_found(tmp_path):
    with pytest.raises(gu.AudioError, match="not found"):
        gu.load_audio(tmp_path / "missing.wav", SR, 1.0)


def test_audio_info_reads_headers_and_flags_broken_files(tmp_path):
    write_tone(tmp_path / "a.wav", 0.5, channels=2)
    (tmp_path / "b.mp3").write_bytes(b"\xff\xfb" + bytes(30))
    paths = pd.Series([str(tmp_path / "a.wav"), str(tmp_path / "b.mp3")], index=pd.Index([7, 9], name="track_id"))
    info = gu.audio_info(paths)
    assert info.index.name == "track_id"
    assert info.loc[7, ["sample_rate", "channels", "error"]].tolist() == [SR, 2, ""]
    assert info.loc[7, "seconds"] == pytest.approx(0.5, abs=1e-3)
    assert info.loc[9, "error"] == "cannot read the header" and pd.isna(info.loc[9, "sample_rate"])
