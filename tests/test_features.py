"""Feature extraction: librosa agreement, cache layout, reuse, invalidation, resume, skipping."""

import shutil
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import genre_utils as gu  # noqa: E402

CLIP_SECONDS = 2.0
FILE_RATE = 44_100  # Hz, like FMA's MP3s, so decoding also resamples
SPLITS = ["training", "training", "validation", "training", "test", "training"]


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    """Six 2 s MP3 clips: a chord per clip with a little noise, track ids 2, 3, 5, 7, 11, 13."""
    folder = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    t = np.arange(int(FILE_RATE * CLIP_SECONDS)) / FILE_RATE
    for number, track_id in enumerate([2, 3, 5, 7, 11, 13]):
        f0 = 110.0 * 2 ** (number / 4)
        y = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3)) * np.exp(-t * (number + 1) / 2)
        y = 0.3 * y / np.abs(y).max() + 0.01 * rng.standard_normal(t.size)
        sf.write(folder / f"{track_id:06d}.mp3", np.stack([y, y], axis=1).astype(np.float32), FILE_RATE)
    return folder


@pytest.fixture
def tracks(audio_dir):
    """A load_tracks-style table of the six clips, deliberately not sorted by track id."""
    ids = [13, 2, 3, 5, 7, 11]
    table = pd.DataFrame(
        {
            "genre": [gu.GENRES[i % len(gu.GENRES)] for i in range(6)],
            "split": SPLITS,
            "path": [audio_dir / f"{track_id:06d}.mp3" for track_id in ids],
        },
        index=pd.Index(ids, name="track_id"),
    )
    return table


@pytest.fixture
def cfg(tmp_path):
    return gu.get_config("demo").replace(clip_seconds=CLIP_SECONDS, n_mels=32, cache_dir=tmp_path / "cache")


def direct_features(path, cfg):
    """Reference features straight from librosa, the way the course skeleton computes them."""
    y = gu.load_audio(path, cfg.sample_rate, cfg.clip_seconds)
    mel = librosa.feature.melspectrogram(
        y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels
    )
    constant_q = np.abs(
        librosa.cqt(
            y,
            sr=cfg.sample_rate,
            hop_length=cfg.hop_length,
            fmin=cfg.cqt_fmin,
            n_bins=cfg.cqt_bins,
            bins_per_octave=cfg.cqt_bins_per_octave,
        )
    )
    return (
        librosa.power_to_db(mel, ref=np.max, top_db=80.0),
        librosa.amplitude_to_db(constant_q, ref=np.max, top_db=80.0),
    )


# ── single clips ──


def test_features_have_the_documented_shapes_dtype_and_range(cfg):
    y = np.random.default_rng(1).standard_normal(cfg.n_samples).astype(np.float32)
    mel, constant_q = gu.mel_spectrogram(y, cfg), gu.cqt(y, cfg)
    assert mel.shape == (cfg.n_mels, cfg.n_frames) and mel.dtype == np.float32
    assert constant_q.shape == (cfg.cqt_bins, cfg.n_frames) and constant_q.dtype == np.float32
    for array in (mel, constant_q):
        assert array.max() == 0.0 and array.min() >= -gu.TOP_DB


def test_seed_preset_gives_the_reports_1292_frames():
    seed = gu.get_config("seed")
    y = np.zeros(seed.n_samples, np.float32)
    y[::1000] = 1.0
    assert gu.mel_spectrogram(y, seed).shape == (128, 1292)
    assert gu.cqt(y, seed).shape == (84, 1292)


def test_features_agree_with_direct_librosa(audio_dir, cfg):
    path = audio_dir / "000005.mp3"
    y = gu.load_audio(path, cfg.sample_rate, cfg.clip_seconds)
    mel_ref, cqt_ref = direct_features(path, cfg)
    np.testing.assert_allclose(gu.mel_spectrogram(y, cfg), mel_ref, atol=1e-4)
    np.testing.assert_allclose(gu.cqt(y, cfg), cqt_ref, atol=1e-4)


def test_silence_gives_finite_features(cfg):
    silence = np.zeros(cfg.n_samples, np.float32)
    for array in (gu.mel_spectrogram(silence, cfg), gu.cqt(silence, cfg)):
        assert np.all(np.isfinite(array))


# ── the cache ──


def test_the_cache_holds_the_documented_files_and_arrays(tracks, cfg, capsys):
    features = gu.extract_features(tracks, cfg, workers=1)
    said = capsys.readouterr().out  # after 5 x workers - 2 clips, before the others
    assert said.count("feature extraction: 6 clips expected to take about ") == 1 and "pace of the first 3" in said
    key = gu.features_key(tracks, cfg)
    assert features.path == cfg.cache_dir / f"features-{key}"
    assert sorted(p.name for p in features.path.iterdir()) == sorted(gu._CACHE_FILES)
    assert isinstance(features.mel, np.memmap) and features.mel.dtype == np.float16
    assert features.mel.shape == (6, cfg.n_mels, cfg.n_frames)
    assert features.cqt.shape == (6, cfg.cqt_bins, cfg.n_frames)
    assert features.index.index.tolist() == [2, 3, 5, 7, 11, 13]
    expected = tracks.sort_index()
    assert features.index["genre"].tolist() == expected["genre"].tolist()
    assert features.index["label"].tolist() == [gu.GENRES.index(g) for g in expected["genre"]]
    assert features.skipped.empty
    for row, path in enumerate(expected["path"]):
        mel_ref, cqt_ref = direct_features(path, cfg)
        np.testing.assert_allclose(features.mel[row], mel_ref, atol=0.05)  # float16 rounding
        np.testing.assert_allclose(features.cqt[row], cqt_ref, atol=0.05)


def test_unchanged_run_reuses_cache_without_decoding(tracks, cfg, monkeypatch):
    first = gu.extract_features(tracks, cfg, workers=1)

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached run must not decode audio")

    monkeypatch.setattr(gu, "load_audio", no_decoding)
    again = gu.extract_features(tracks.sample(frac=1.0, random_state=0), cfg, workers=1)
    assert again.path == first.path
    np.testing.assert_array_equal(again.mel, first.mel)


def test_a_second_builder_of_the_same_cache_waits_for_the_first_and_reads_its_result(tracks, cfg):
    import fcntl
    import threading

    key = gu.features_key(tracks, cfg)
    cfg.cache_dir.mkdir(parents=True)
    result = {}
    with open(cfg.cache_dir / f"features-{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process building this cache
        waiting = threading.Thread(target=lambda: result.update(features=gu.extract_features(tracks, cfg, workers=1)))
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and not (cfg.cache_dir / f"features-{key}.partial").exists(), "it waits"
        first = gu._build_features(gu._checked_tracks(tracks, cfg), key, cfg.cache_dir, cfg, 1)
        fcntl.flock(lock, fcntl.LOCK_UN)
    waiting.join(timeout=60)
    assert first is None and result["features"].path == cfg.cache_dir / f"features-{key}"
    assert len(result["features"].index) == len(tracks)


def test_a_changed_setting_or_file_recomputes_the_features(tracks, cfg, tmp_path):
    first = gu.extract_features(tracks, cfg, workers=1)
    fewer_bands = gu.extract_features(tracks, cfg.replace(n_mels=16), workers=1)
    assert fewer_bands.path != first.path and fewer_bands.mel.shape[1] == 16
    # training settings do not change the features
    assert gu.features_key(tracks, cfg.replace(epochs=3, batch_size=8)) == gu.features_key(tracks, cfg)
    # a re-encoded file does
    copy_dir = tmp_path / "copy"
    shutil.copytree(Path(tracks["path"].iloc[0]).parent, copy_dir)
    moved = tracks.assign(path=[copy_dir / Path(p).name for p in tracks["path"]])
    key = gu.features_key(moved, cfg)
    sf.write(copy_dir / "000007.mp3", np.zeros((FILE_RATE, 2), np.float32), FILE_RATE)
    assert gu.features_key(moved, cfg) != key


def test_interrupted_run_is_not_complete_and_resumes(tracks, cfg, monkeypatch, tmp_path):
    real_load_audio = gu.load_audio
    calls = []

    def interrupted_after_three(path, *args):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(path)
        return real_load_audio(path, *args)

    monkeypatch.setattr(gu, "load_audio", interrupted_after_three)
    with pytest.raises(KeyboardInterrupt):
        gu.extract_features(tracks, cfg, workers=1)
    key = gu.features_key(tracks, cfg)
    partial = cfg.cache_dir / f"features-{key}.partial"
    assert not (cfg.cache_dir / f"features-{key}").exists()
    assert np.load(partial / "done.npy").tolist() == [1, 1, 1, 0, 0, 0]
    with pytest.raises(gu.CacheError, match="unfinished"):
        gu.open_features(partial)

    calls.clear()
    monkeypatch.setattr(gu, "load_audio", lambda path, *args: calls.append(path) or real_load_audio(path, *args))
    resumed = gu.extract_features(tracks, cfg, workers=1)
    assert [Path(p).name for p in calls] == ["000007.mp3", "000011.mp3", "000013.mp3"]
    assert not partial.exists()
    clean = gu.extract_features(tracks, cfg, cache_dir=tmp_path / "clean", workers=1)
    np.testing.assert_array_equal(resumed.mel, clean.mel)
    np.testing.assert_array_equal(resumed.cqt, clean.cqt)


def test_broken_files_are_skipped_and_listed(tracks, cfg, tmp_path):
    empty, garbage = tmp_path / "000017.mp3", tmp_path / "000019.mp3"
    empty.write_bytes(b"")
    garbage.write_bytes(b"this is not an mp3 file" * 100)
    broken = pd.DataFrame(
        {"genre": ["Pop", "Rock"], "split": ["training", "validation"], "path": [empty, garbage]},
        index=pd.Index([17, 19], name="track_id"),
    )
    with pytest.warns(UserWarning, match="skipped 2 of 8 audio files"):
        features = gu.extract_features(pd.concat([tracks, broken]), cfg, workers=1)
    assert features.index.index.tolist() == [2, 3, 5, 7, 11, 13]
    assert len(features.mel) == len(features.cqt) == 6
    assert features.skipped["path"].tolist() == [str(empty), str(garbage)]
    assert "empty" in features.skipped["reason"].iloc[0]
    assert "cannot decode" in features.skipped["reason"].iloc[1]
    on_disk = pd.read_csv(features.path / "skipped.csv")
    assert on_disk["path"].tolist() == [str(empty), str(garbage)]
    # the kept rows are the right ones, not shifted by the skipped rows
    reference = gu.extract_features(tracks, cfg, cache_dir=tmp_path / "reference", workers=1)
    np.testing.assert_array_equal(features.mel, reference.mel)


def test_skipped_rows_are_removed_in_place_and_a_kill_meanwhile_resumes_without_decoding(
    tracks, cfg, tmp_path, monkeypatch
):
    empty = tmp_path / "000004.mp3"  # between tracks 3 and 5: every later row moves up by one
    empty.write_bytes(b"")
    broken = pd.DataFrame(
        {"genre": ["Pop"], "split": ["training"], "path": [empty]}, index=pd.Index([4], name="track_id")
    )
    with_broken = pd.concat([tracks, broken])
    real_write_json, real_load_audio = gu._write_json, gu.load_audio

    def killed_after_a_move(path, content):
        real_write_json(path, content)
        if path.name == "compaction.json" and content["moved"]["mel"] > 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(gu, "_write_json", killed_after_a_move)
    with pytest.raises(KeyboardInterrupt):
        gu.extract_features(with_broken, cfg, workers=1)
    partial = cfg.cache_dir / f"features-{gu.features_key(with_broken, cfg)}.partial"
    assert (partial / "compaction.json").is_file()

    monkeypatch.setattr(gu, "_write_json", real_write_json)
    decoded = []
    monkeypatch.setattr(gu, "load_audio", lambda path, *args: decoded.append(path) or real_load_audio(path, *args))
    with pytest.warns(UserWarning, match="skipped 1 of 7 audio files"):
        features = gu.extract_features(with_broken, cfg, workers=1)
    assert decoded == [] and not partial.exists()
    assert features.skipped["path"].tolist() == [str(empty)]
    reference = gu.extract_features(tracks, cfg, cache_dir=tmp_path / "reference", workers=1)
    for name in ("mel", "cqt"):
        np.testing.assert_array_equal(getattr(features, name), getattr(reference, name))
        np.testing.assert_array_equal(features.stats[f"{name}_mean"], reference.stats[f"{name}_mean"])
        assert (features.path / f"{name}.npy").stat().st_size == (reference.path / f"{name}.npy").stat().st_size


def test_nan_feature_is_skipped(tracks, cfg, monkeypatch):
    real_mel = gu.mel_spectrogram
    calls = []

    def nan_on_second_clip(y, cfg):
        calls.append(1)
        mel = real_mel(y, cfg)
        return np.full_like(mel, np.nan) if len(calls) == 2 else mel

    monkeypatch.setattr(gu, "mel_spectrogram", nan_on_second_clip)
    with pytest.warns(UserWarning, match="000003.mp3: mel-spectrogram contains NaN"):
        features = gu.extract_features(tracks, cfg, workers=1)
    assert 3 not in features.index.index  # second in track-id order
    assert Path(features.skipped["path"].iloc[0]).name == "000003.mp3"
    assert "NaN" in features.skipped["reason"].iloc[0]


def test_stats_come_from_training_rows_only(tracks, cfg):
    features = gu.extract_features(tracks, cfg, workers=1)
    training = features.rows("training")
    assert len(training) == 4
    for name in ("mel", "cqt"):
        values = getattr(features, name)[training].astype(np.float64)
        np.testing.assert_allclose(features.stats[f"{name}_mean"], values.mean(axis=(0, 2)), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(features.stats[f"{name}_std"], values.std(axis=(0, 2)), rtol=1e-4, atol=1e-4)
        everything = getattr(features, name)[:].astype(np.float64).mean(axis=(0, 2))
        assert not np.allclose(features.stats[f"{name}_mean"], everything, atol=1e-3)


def test_parallel_extraction_equals_serial_extraction(tracks, cfg, tmp_path):
    serial = gu.extract_features(tracks, cfg, cache_dir=tmp_path / "serial", workers=1)
    parallel = gu.extract_features(tracks, cfg, cache_dir=tmp_path / "parallel", workers=2)
    pd.testing.assert_frame_equal(parallel.index, serial.index)
    np.testing.assert_array_equal(parallel.mel, serial.mel)
    np.testing.assert_array_equal(parallel.cqt, serial.cqt)


# ── bad input ──


def test_open_features_names_the_problem(tracks, cfg, tmp_path):
    with pytest.raises(gu.CacheError, match="no feature cache"):
        gu.open_features(tmp_path / "nowhere")
    features = gu.extract_features(tracks, cfg, workers=1)
    broken = tmp_path / features.path.name
    shutil.copytree(features.path, broken)
    (broken / "stats.npz").unlink()
    with pytest.raises(gu.CacheError, match="missing stats.npz"):
        gu.open_features(broken)
    shutil.copy(features.path / "stats.npz", broken)
    features.index.iloc[:3].to_csv(broken / "index.csv")
    with pytest.raises(gu.CacheError, match="3 index rows but 6 mel"):
        gu.open_features(broken)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop(columns="split"), "lacks column"),
        (lambda t: t.assign(genre="Polka"), "Polka"),
        (lambda t: t.assign(split="train"), "split"),
        (lambda t: t.assign(split="validation"), "no 'training' track"),
        (lambda t: t.iloc[:0], "empty"),
    ],
)
def test_bad_track_table_raises_data_error(tracks, cfg, change, message):
    with pytest.raises(gu.DataError, match=message):
        gu.extract_features(change(tracks), cfg, workers=1)


def _worker_that_dies(path, cfg):
    """A feature computation whose process ends abruptly, as when the kernel's OOM killer strikes."""
    import os

    os._exit(1)


def test_a_dying_worker_gives_a_genre_error_saying_what_to_do(tracks, cfg):
    jobs = [(row, str(path)) for row, path in enumerate(tracks["path"])]
    with pytest.raises(gu.GenreError, match=r"worker process .* died.*memory.*if __name__ == \"__main__\":.*resumes"):
        list(gu._feature_results(jobs, cfg, workers=2, compute=_worker_that_dies))


def test_a_script_without_main_guard_gets_the_genre_error(tracks, cfg, tmp_path):
    """Under 'spawn' each worker re-imports the calling script; unguarded, the workers die at start-up."""
    import subprocess
    import sys

    tracks.to_csv(tmp_path / "tracks.csv")
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import sys\nimport pandas as pd\n"
        f"sys.path.insert(0, {str(gu.ROOT)!r})\n"
        "import genre_utils as gu\n"
        f"tracks = pd.read_csv({str(tmp_path / 'tracks.csv')!r}, index_col=0)\n"
        f"gu.extract_features(tracks, gu.get_config('demo', cache_dir={str(tmp_path / 'cache')!r}, "
        f"clip_seconds={CLIP_SECONDS}), workers=2)\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("genre_utils.GenreError:")]
    assert errors and 'if __name__ == "__main__":' in errors[0]
    assert "BrokenProcessPool" not in result.stderr


class ChunkOnlyArray:
    """A (clips, bands, frames) array that refuses to hand out more than `limit` clips at once."""

    def __init__(self, array, limit):
        self.array, self.limit, self.shape = array, limit, array.shape

    def __len__(self):
        return len(self.array)

    def __getitem__(self, rows):
        assert len(np.atleast_1d(rows)) <= self.limit, "read more clips at once than one chunk"
        return self.array[rows]


def test_band_means_reads_a_chunk_at_a_time_and_match_the_whole_array_mean():
    array = np.random.default_rng(0).normal(-40, 10, (7, 3, 5)).astype(np.float16)
    rows = np.array([6, 0, 3, 2, 5])
    means = gu.band_means(ChunkOnlyArray(array, 2), rows, chunk_rows=2)
    assert means.dtype == np.float32
    np.testing.assert_array_equal(means, array[rows].astype(np.float32).mean(axis=2))
    assert gu.band_means(array).shape == (7, 3)
