"""The demo dataset: a miniature FMA of synthesized music, written in FMA's own format."""

import json
from pathlib import Path

import numpy as np
import pytest

import genre_utils as gu  # noqa: E402
from conftest import SR  # noqa: E402

DEMO_SR = SR // 2  # Hz, 11,025: the demo is synthesized at half the shared rate, half the samples
SMALL = dict(clips_per_genre=3, seconds=1.0, sr=DEMO_SR, seed=1, progress=False)  # 24 clips of 1 s


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "fma"
    return root, gu.make_demo_dataset(root, gu.get_config("demo"), **SMALL)


def test_demo_is_an_fma_small(demo):
    root, tracks = demo
    assert (root / "fma_metadata" / "tracks.csv").is_file()
    assert gu.load_tracks(root).equals(tracks)
    assert tracks.groupby("genre").size().to_dict() == {g: 3 for g in gu.GENRES}
    assert set(tracks["split"]) == {"training"}  # 3 per genre rounds to 3/0/0
    assert all(Path(p).parent.parent.name == "fma_small" for p in tracks["path"])


def test_demo_metadata_lists_medium_tracks_without_audio(demo):
    root, tracks = demo
    raw = gu.read_fma_tracks(root / "fma_metadata" / "tracks.csv")
    medium = raw[raw["set", "subset"] == "medium"]
    assert len(medium) > 0 and {"Blues", "Classical"} <= set(medium["track", "genre_top"])
    assert not any(gu.audio_path(root, tid).exists() for tid in medium.index)
    assert not set(medium.index) & set(tracks.index)


def test_demo_has_exactly_one_broken_training_file(demo):
    root, tracks = demo
    broken = []
    for track_id, row in tracks.iterrows():
        try:
            y = gu.load_audio(row["path"], DEMO_SR, 1.0)
        except gu.AudioError:
            broken.append(track_id)
            continue
        assert 0.3 < np.abs(y).max() < 0.9  # normalized, not clipped (MP3 adds a little overshoot)
    assert len(broken) == 1 and tracks.loc[broken[0], "split"] == "training"


def test_demo_is_not_regenerated_when_complete(demo):
    root, tracks = demo
    marker = root / gu.DEMO_MARKER
    before = marker.stat().st_mtime_ns, Path(tracks["path"].iloc[0]).stat().st_mtime_ns
    again = gu.make_demo_dataset(root, gu.get_config("demo"), **SMALL)
    assert again.equals(tracks)
    assert (marker.stat().st_mtime_ns, Path(tracks["path"].iloc[0]).stat().st_mtime_ns) == before
    assert json.loads(marker.read_text())["clips_per_genre"] == 3


def test_demo_is_deterministic_and_seeded(tmp_path):
    cfg = gu.get_config("demo", genres=("Rock", "Folk"))
    params = dict(SMALL, clips_per_genre=2)
    first = gu.make_demo_dataset(tmp_path / "a", cfg, **params)
    second = gu.make_demo_dataset(tmp_path / "b", cfg, **params)
    other = gu.make_demo_dataset(tmp_path / "c", cfg, **dict(params, seed=2))
    assert (tmp_path / "a/fma_metadata/tracks.csv").read_bytes() == (
        tmp_path / "b/fma_metadata/tracks.csv"
    ).read_bytes()
    assert [Path(p).read_bytes() for p in first["path"]] == [Path(p).read_bytes() for p in second["path"]]
    assert list(first.index) != list(other.index)


def test_demo_clips_are_the_same_bytes_from_any_number_of_worker_processes(tmp_path):
    cfg = gu.get_config("demo", genres=("Rock",))
    params = dict(SMALL, clips_per_genre=2, seconds=0.25)
    serial = gu.make_demo_dataset(tmp_path / "serial", cfg, workers=1, **params)
    parallel = gu.make_demo_dataset(tmp_path / "parallel", cfg, workers=2, **params)
    assert [Path(p).read_bytes() for p in serial["path"]] == [Path(p).read_bytes() for p in parallel["path"]]


def test_demo_redoes_an_interrupted_run_and_replaces_other_parameters(tmp_path):
    cfg = gu.get_config("demo", genres=("Pop",))
    root = tmp_path / "demo"
    leftover = tmp_path / ".demo.partial"
    (leftover / "fma_small").mkdir(parents=True)  # as if killed mid-way
    gu.make_demo_dataset(root, cfg, **dict(SMALL, clips_per_genre=2))
    assert not leftover.exists()
    tracks = gu.make_demo_dataset(root, cfg, **dict(SMALL, clips_per_genre=4))
    assert len(tracks) == 4 and len(list(root.glob("fma_small/*/*.mp3"))) == 4


def test_demo_never_overwrites_other_data(tmp_path):
    (tmp_path / "my_music").mkdir()
    (tmp_path / "my_music" / "song.mp3").write_bytes(b"precious")
    with pytest.raises(gu.DataError, match="not a demo dataset"):
        gu.make_demo_dataset(tmp_path / "my_music", **SMALL)
    assert (tmp_path / "my_music" / "song.mp3").read_bytes() == b"precious"


def test_cli_demo_data_reports_errors(tmp_path, capsys):
    (tmp_path / "song.mp3").write_bytes(b"precious")
    with pytest.raises(SystemExit) as exit_:
        gu.main(["--data", str(tmp_path), "demo-data", "--quiet"])
    assert exit_.value.code == 1
    assert "not a demo dataset" in capsys.readouterr().err


@pytest.mark.parametrize("genre", gu.GENRES)
def test_synthesized_clip_is_listenable(genre):
    y = gu.synthesize_clip(genre, 2 * DEMO_SR, DEMO_SR, np.random.default_rng(0))
    assert y.dtype == np.float32 and y.shape == (2 * DEMO_SR,)
    assert np.isfinite(y).all() and 0.5 <= np.abs(y).max() <= 0.8
    assert np.sqrt(np.mean(y**2)) > 0.02  # not silence


def low_band_share(genre: str, clips: int = 6) -> float:
    """Mean share of a clip's energy below 150 Hz."""
    shares = []
    for k in range(clips):
        y = gu.synthesize_clip(genre, 2 * DEMO_SR, DEMO_SR, np.random.default_rng([0, k]))
        power = np.abs(np.fft.rfft(y)) ** 2
        shares.append(power[np.fft.rfftfreq(y.size, 1 / DEMO_SR) < 150].sum() / power.sum())
    return float(np.mean(shares))


def test_genres_differ_in_a_simple_statistic():
    # Hip-Hop's 808 sub bass against Experimental's bells and noise
    assert low_band_share("Hip-Hop") > 2 * low_band_share("Experimental")
