"""Beyond the report: chunked training and clip voting, the classical baseline, the predict command."""

import json
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest

import genre_utils as gu
from conftest import TINY, tone, write_tone
from test_training import fake_features

CHUNKED = TINY.replace(train_mode="chunked", chunk_seconds=0.5)  # 22 of the 65 frames of a 1.5 s clip


@pytest.fixture(scope="module")
def data():
    """fake_features with the last 8 of its 16 validation clips moved to a test split."""
    features = fake_features(n_val=16)
    features.index.loc[features.index.index[-8:], "split"] = "test"
    return features


def test_chunk_frames_follow_the_config():
    assert gu.chunk_frames(gu.get_config("demo")) == 1 + 66150 // 512 == 130
    assert gu.chunk_frames(CHUNKED) == 22
    with pytest.raises(gu.ConfigError, match="chunk_seconds=2"):
        gu.chunk_frames(CHUNKED.replace(chunk_seconds=2.0))
    with pytest.raises(gu.ConfigError, match="train_mode 'halves'"):
        gu.predict_proba(gu.build_model(TINY), fake_features(), [0], TINY.replace(train_mode="halves"))


@pytest.mark.parametrize(
    "total, length, expected",
    [
        (431, 130, [0, 65, 130, 195, 260, 301]),  # demo clip, 3 s excerpts: the last one ends with the clip
        (100, 50, [0, 25, 50]),
        (50, 50, [0]),
        (20, 50, [0]),  # shorter than one excerpt: one (padded) excerpt
    ],
)
def test_excerpts_cover_every_position_with_half_overlap(total, length, expected):
    starts = gu.excerpt_starts(total, length)
    assert starts.tolist() == expected
    covered = np.zeros(max(total, length), bool)
    for start in starts:
        covered[start : start + length] = True
    assert covered.all()


def test_chunk_sampling_is_random_per_epoch_and_seeded(data):
    def batches(seed):
        return gu.feature_batches(
            data,
            data.rows("training"),
            CHUNKED.replace(seed=seed),
            inputs=("mel", "cqt"),
            shuffle=True,
            excerpt_frames=22,
        )

    first, again, other = batches(1), batches(1), batches(2)
    x, y = first[0]
    assert x["mel"].shape == (8, CHUNKED.n_mels, 22, 1) and x["cqt"].shape == (8, CHUNKED.cqt_bins, 22, 1)
    assert len(y) == 8
    np.testing.assert_array_equal(first.starts, again.starts)  # same seed, same excerpts
    np.testing.assert_array_equal(first[0][0]["mel"], again[0][0]["mel"])
    assert not np.array_equal(first.starts, other.starts)
    assert first.starts.min() >= 0 and first.starts.max() <= CHUNKED.n_frames - 22
    epoch1 = first.starts.copy()
    first.on_epoch_end()
    assert not np.array_equal(first.starts, epoch1)  # new excerpts every epoch


def test_clip_prediction_averages_the_softmax_of_excerpts_covering_the_clip(data):
    keras.utils.set_random_seed(0)
    model = gu.build_model(CHUNKED)
    rows = data.rows("validation")[:3]
    voted = gu.predict_proba(model, data, rows, CHUNKED)

    starts = gu.excerpt_starts(CHUNKED.n_frames, 22)
    assert len(starts) > 2 and starts[-1] + 22 == CHUNKED.n_frames
    inputs = {name: getattr(data, name)[rows] for name in ("mel", "cqt")}
    per_excerpt = [
        model.predict({name: array[:, :, s : s + 22, None] for name, array in inputs.items()}, verbose=0)
        for s in starts
    ]
    # float32 rounding only, in sums a CPU's kernels may order by batch: within 1e-3, relative (as the
    # reversed-order check of test_training, the same network)
    np.testing.assert_allclose(voted, np.mean(per_excerpt, axis=0), rtol=1e-3)
    whole = gu.predict_proba(model, data, rows, CHUNKED.replace(train_mode="full"))
    assert not np.allclose(voted, whole, atol=1e-4)  # voting is not the same as one pass over the clip


@pytest.fixture(scope="module")
def chunked_run(tmp_path_factory, data):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny-chunked"
    keras.utils.set_random_seed(CHUNKED.seed)
    history = gu.train(gu.build_model(CHUNKED), data, CHUNKED, run_dir, verbose=0)
    return run_dir, history


def test_chunked_training_validates_whole_clips_by_voting(chunked_run, data):
    run_dir, history = chunked_run
    assert history["epoch"].tolist() == [0, 1]
    assert (history["epoch_seconds"] > 0).all()
    model, cfg, _ = gu.load_run(run_dir)
    assert cfg == CHUNKED
    scores = gu.evaluate(model, data, cfg, "validation")
    assert scores.accuracy == pytest.approx(history["val_accuracy"].max(), abs=1e-6)


def test_a_finished_experiment_run_is_reused_not_retrained(chunked_run, data):
    run_dir, _ = chunked_run
    before = (run_dir / "best.keras").stat().st_mtime_ns
    row = gu.cnn_experiment("chunked", CHUNKED, data, run_dir)
    assert (run_dir / "best.keras").stat().st_mtime_ns == before
    assert list(row.index) == list(gu.EXPERIMENT_COLUMNS)
    assert row["epochs"] == 2 and row["parameters"] > 0 and row["input"] == "0.5 s excerpts, averaged"
    assert row["val_accuracy"] == pytest.approx(gu.load_run(run_dir)[2]["val_accuracy"].max(), abs=1e-6)
    assert 0 <= row["test_accuracy"] <= 1 and row["train_seconds"] > 0


def test_an_experiment_run_is_reused_only_for_the_same_settings_and_data(chunked_run, data):
    run_dir = chunked_run[0]
    assert json.loads((run_dir / "data.json").read_text())["fingerprint"] == data.fingerprint()
    assert gu._finished_run(run_dir, CHUNKED, data), "the same inputs: cnn_experiment reads the run back"
    other = fake_features(n_val=16, seed=1)  # the same clips and splits as `data`, other values
    other.index["split"] = data.index["split"]
    assert not gu._finished_run(run_dir, CHUNKED, other), "changing the data retrains"
    assert not gu._finished_run(run_dir, CHUNKED.replace(learning_rate=0.01), data), "changing a setting retrains"


def test_clip_statistics_have_fixed_names_and_are_finite_even_for_silence():
    cfg = gu.get_config("demo")
    sine = tone(1.0, cfg.sample_rate).astype(np.float32)
    statistics = [gu.clip_statistics(y, cfg) for y in (sine, np.zeros_like(sine))]
    for series in statistics:
        assert series.shape == (88,) and series.dtype == np.float64 and np.isfinite(series).all()
        assert series.index.is_unique
    assert statistics[0].index.equals(statistics[1].index)
    assert {"mfcc_01_mean", "mfcc_20_std", "contrast_07_mean", "chroma_12_std", "zcr_mean"} <= set(statistics[0].index)
    assert statistics[0]["centroid_mean"] == pytest.approx(440, rel=0.1)  # a pure tone's centroid is its pitch
    assert statistics[0]["chroma_10_mean"] == statistics[0][[f"chroma_{k:02d}_mean" for k in range(1, 13)]].max()  # A


def test_clip_statistics_are_cached_and_skip_undecodable_files(tmp_path):
    cfg = gu.get_config("demo", clip_seconds=1.0)
    (tmp_path / "empty.wav").write_bytes(b"")
    tracks = pd.DataFrame(
        {
            "genre": ["Rock", "Pop", "Folk"],
            "split": ["training", "validation", "test"],
            "path": [
                str(write_tone(tmp_path / "a.wav", 1.0, 220, amplitude=0.4)),
                str(write_tone(tmp_path / "b.wav", 0.5, 880, amplitude=0.4)),
                str(tmp_path / "empty.wav"),
            ],
        },
        index=pd.Index([5, 3, 9], name="track_id"),
    )
    statistics = gu.extract_clip_statistics(tracks, cfg, cache_dir=tmp_path / "cache", workers=1)
    assert statistics.index.tolist() == [3, 5]  # sorted, the empty file left out
    assert statistics.shape[1] == 88 and np.isfinite(statistics.to_numpy()).all()
    cached = list((tmp_path / "cache").glob("clip-statistics-v1-*.csv"))
    assert len(cached) == 1 and not list((tmp_path / "cache").glob(".*partial"))
    mtime = cached[0].stat().st_mtime_ns
    pd.testing.assert_frame_equal(gu.extract_clip_statistics(tracks, cfg, cache_dir=tmp_path / "cache"), statistics)
    assert cached[0].stat().st_mtime_ns == mtime  # read back, not recomputed


@pytest.mark.parametrize("kind", gu.BASELINE_KINDS)
def test_baseline_learns_separable_statistics(kind):
    rng = np.random.default_rng(0)
    labels = np.arange(240) % 8
    statistics = pd.DataFrame(rng.normal(size=(240, 6)) + labels[:, None], index=pd.Index(range(240), name="track_id"))
    index = pd.DataFrame(
        {"split": np.array(["training", "validation", "test"])[np.arange(240) // 80], "label": labels},
        index=statistics.index,
    )
    row = gu.baseline_experiment(kind, statistics, index, kind=kind)
    assert list(row.index) == list(gu.EXPERIMENT_COLUMNS)
    assert row["val_accuracy"] > 0.5 and row["test_accuracy"] > 0.5 and row["parameters"] > 0
    with pytest.raises(gu.DataError, match="test split"):
        gu.baseline_experiment(kind, statistics, index[index["split"] != "test"], kind=kind)
    with pytest.raises(gu.ConfigError, match="baseline kind 'tree'"):
        gu.baseline_classifier("tree")


def test_predict_file_covers_a_long_file_with_overlapping_windows(chunked_run, tmp_path):
    run_dir, _ = chunked_run
    model, cfg, _ = gu.load_run(run_dir)
    long_file = write_tone(tmp_path / "long.wav", 4.0, 330, amplitude=0.4)
    windows = gu.predict_file(long_file, model, cfg)
    assert windows.index.name == "start_s" and windows.index.tolist() == pytest.approx(
        [0, 0.75, 1.5, 2.25, 2.5], abs=1e-4
    )
    assert list(windows.columns) == list(cfg.genres)
    np.testing.assert_allclose(windows.sum(axis=1), 1.0, rtol=1e-5)


def test_predict_command_ranks_genres_and_reports_bad_files(chunked_run, tmp_path):
    run_dir, _ = chunked_run
    long_song = write_tone(tmp_path / "long song.wav", 4.0, 330, amplitude=0.4)
    short = write_tone(tmp_path / "short.flac", 0.4, 550, amplitude=0.4)
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"ID3 not really an mp3")
    result = subprocess.run(
        [
            sys.executable,
            str(gu.ROOT / "genre_utils.py"),
            "predict",
            long_song,
            str(broken),
            short,
            "--run",
            str(run_dir),
            "--plot",
            str(tmp_path / "timeline.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1  # one file failed; the others were still predicted
    assert f"{broken}: cannot decode audio" in result.stderr and "Traceback" not in result.stderr
    out = result.stdout
    assert f"{long_song}: 5 windows of 1.5 s (4.0 s of audio)" in out and f"{short}: 1 window of 1.5 s (0.4 s" in out
    assert f"  warning: {short}: only 0.4 s of audio; the model hears 1.5 s windows" in out
    ranked = [line.split() for line in out.splitlines() if line.startswith("  ") and line.strip()[0].isdigit()]
    assert [line[0] for line in ranked] == ["1.", "2.", "3."] * 2
    shares = [float(line[-1].rstrip("%")) for line in ranked]
    assert shares[0] >= shares[1] >= shares[2] and shares[3] >= shares[4] >= shares[5]
    assert all(label[1] in gu.GENRES for label in ranked)
    assert (tmp_path / "timeline-long song.png").stat().st_size > 0 and (tmp_path / "timeline-short.png").is_file()


def test_predict_command_with_a_missing_run_fails_clearly(tmp_path):
    result = subprocess.run(
        [sys.executable, str(gu.ROOT / "genre_utils.py"), "predict", "x.wav", "--run", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "config.json: not found" in result.stderr and "Traceback" not in result.stderr
