"""`predict` decodes and classifies a file window by window: the same windows, features and probabilities as
decoding it whole, with memory that does not grow with the file's length (benchmarks/predict_memory.py measures it)."""

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import genre_utils as gu
from conftest import SR, TINY, tone, write_tone


@pytest.fixture
def small_blocks(monkeypatch):
    """Decode a fraction of a second at a time and predict 3 windows at a time, so short files cross many
    block and batch boundaries."""
    monkeypatch.setattr(gu._AudioStream, "BLOCK_SECONDS", 0.37)
    monkeypatch.setattr(gu, "_PREDICT_BATCH", 3)


def _music(path, seconds: float, sr: int, channels: int = 1):
    """A few seconds of chords and noise at `sr` Hz."""
    rng = np.random.default_rng(3)
    y = sum(tone(seconds, sr, f, 0.15) for f in (110, 277, 440)) + 0.05 * rng.standard_normal(int(round(sr * seconds)))
    data = np.stack([y, np.roll(y, 7)], axis=1) if channels == 2 else y
    sf.write(path, data.astype(np.float32), sr)
    return path


@pytest.mark.parametrize(
    "name, seconds, sr, channels",
    [
        ("same-rate.wav", 4.3, SR, 1),
        ("stereo-44k.wav", 4.3, 44_100, 2),
        ("song.mp3", 4.3, 44_100, 1),
        ("short.flac", 0.6, 16_000, 1),
        ("exact.wav", 3.0, SR, 1),  # ends with a window on the grid
    ],
)
def test_streamed_windows_are_the_whole_files_windows(tmp_path, small_blocks, name, seconds, sr, channels):
    path = _music(tmp_path / name, seconds, sr, channels)
    length = int(1.5 * SR)
    y = gu.load_audio(path, SR, None)
    padded = np.pad(y, (0, max(0, length - y.size)))
    stream = gu._AudioStream(path, SR)
    windows = list(stream.windows(length))
    assert [start for start, _ in windows] == gu.excerpt_starts(len(padded), length).tolist()
    # soxr's stream resamples exactly as its one-shot call; libmpg123 rounds a few samples of an MP3 read in
    # blocks differently, by one float32 ulp (at most 2**-23 for samples within full scale): 4 ulps allowed
    for start, window in windows:
        np.testing.assert_allclose(window, padded[start : start + length], rtol=0, atol=2**-21)
    assert stream.total == y.size
    assert stream.level_db == pytest.approx(10 * np.log10(np.mean(np.square(y, dtype=np.float64))), abs=1e-6)


def test_streamed_musicnn_patches_are_the_whole_files_patches(tmp_path, small_blocks):
    path = _music(tmp_path / "song.wav", 9.7, 44_100)
    whole = gu.musicnn_patches(gu.load_audio(path, gu.MUSICNN_SAMPLE_RATE, None))
    starts, patches = map(np.concatenate, zip(*gu._streamed_musicnn_patches(gu._AudioStream(path, 16_000))))
    assert patches.shape == whole.shape == (3, 187, 96) and starts.tolist() == pytest.approx([0, 2.992, 5.984])
    # the same samples and frames; only the mel product's summation order may differ, by a float32 ulp,
    # which moves a float16 log-mel value by at most one of its own ulps (2**-8 at values up to 4)
    np.testing.assert_allclose(patches.astype(np.float32), whole.astype(np.float32), rtol=0, atol=2**-8)


def _whole_file_cnn_windows(path, model, cfg) -> pd.DataFrame:
    """`predict_file` as it was before streaming: the file decoded whole, cut, featurised and predicted at once."""
    y = gu.load_audio(path, cfg.sample_rate, None)
    y = np.pad(y, (0, max(0, cfg.n_samples - y.size)))
    starts = gu.excerpt_starts(len(y), cfg.n_samples)
    windows = [y[start : start + cfg.n_samples] for start in starts]
    index = pd.DataFrame({"genre": cfg.genres[0], "split": "prediction", "label": 0}, index=starts / cfg.sample_rate)
    features = gu.Features(
        index=index,
        mel=np.stack([gu.mel_spectrogram(w, cfg) for w in windows]).astype(np.float16),
        cqt=np.stack([gu.cqt(w, cfg) for w in windows]).astype(np.float16),
    )
    return pd.DataFrame(gu.predict_proba(model, features, np.arange(len(windows)), cfg), index=index.index)


# Both runs feed the model bitwise-equal features (equal samples, per-window transforms); only the batches'
# composition differs, which reorders float32 sums inside the convolutions: a probability (at most 1) moves
# by a few float32 ulps (2**-24 each), far below 1e-5
PROBABILITY_TOLERANCE = 1e-5


def test_a_streamed_cnn_prediction_equals_the_whole_files(tmp_path, small_blocks):
    model = gu.build_model(TINY)
    path = _music(tmp_path / "song.wav", 7.9, 44_100, channels=2)
    streamed = gu.predict_file(path, model, TINY)
    whole = _whole_file_cnn_windows(path, model, TINY)
    assert len(streamed) == 10 and streamed.index.tolist() == pytest.approx(whole.index.tolist())
    np.testing.assert_allclose(streamed.to_numpy(), whole.to_numpy(), rtol=0, atol=PROBABILITY_TOLERANCE)
    assert streamed.attrs["seconds"] == pytest.approx(7.9, abs=1 / SR)


def test_a_streamed_zero_shot_prediction_equals_the_whole_files(tmp_path, small_blocks):
    network = gu.load_musicnn()
    path = write_tone(tmp_path / "song.wav", 13.0, 220, sr=44_100, amplitude=0.3)
    streamed = gu.predict_file_zero_shot(path, network)
    whole = gu.zero_shot_genres(gu.musicnn_tags(gu.load_audio(path, gu.MUSICNN_SAMPLE_RATE, None), network))
    assert streamed.index.tolist() == pytest.approx(whole.index.tolist()) and len(streamed) == 4
    # a log-mel value may differ by one float16 ulp (see the patches' test), which moves a tag probability
    # by far less than 1e-4
    np.testing.assert_allclose(streamed.to_numpy(), whole.to_numpy(), rtol=0, atol=1e-4)
