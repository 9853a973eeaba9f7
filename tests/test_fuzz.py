"""Damaged audio as downloads, disks and users make it, from the demo's own clips with a fixed seed: every
file ends as finite samples, features and probabilities, or as a one-line AudioError naming it and the
reason; no warning escapes but extraction's list of skipped files."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import genre_utils as gu
from conftest import SR, TINY

pytestmark = pytest.mark.filterwarnings("error")

DEMO_CLIPS = Path(__file__).resolve().parents[1] / "data" / "demo" / "fma_small"
FLIPPED_COPIES = 8  # copies with 1 % of their bytes flipped: some decode far beyond full scale
CFG = TINY.replace(clip_seconds=10.0)  # the demo clips' length: one window a file


def flipped(data: bytes, share: float, rng: np.random.Generator) -> bytes:
    """`data` with one random bit flipped in `share` of its bytes (the first 100, the header, kept)."""
    damaged = bytearray(data)
    for i in rng.choice(np.arange(100, len(data)), int(share * len(data)), replace=False):
        damaged[i] ^= 1 << int(rng.integers(8))
    return bytes(damaged)


def loud_wav(path: Path, y: np.ndarray) -> None:
    sf.write(path, y, SR, subtype="FLOAT")  # float WAVs hold any value, as a decoder's output can


def make_corpus(folder: Path) -> dict[str, str | None]:
    """Write the damaged files into `folder`: {name: the reason it must be refused for, or None when either
    outcome is right (a prediction of what decodes, or a refusal)}; "intact.mp3" must be predicted."""
    rng = np.random.default_rng(43)
    clips = [path for path in sorted(DEMO_CLIPS.glob("*/*.mp3")) if path.stat().st_size > 10_000]
    sources = iter(clips[i].read_bytes() for i in rng.choice(len(clips), 30, replace=False))  # more than needed
    half = len(clips[0].read_bytes()) // 2
    damage = {
        "intact.mp3": lambda data: data,
        "truncated.mp3": lambda data: data[:half],
        "header-only.mp3": lambda data: data[:64],
        "zeros-in-the-middle.mp3": lambda data: data[: half // 2] + bytes(half) + data[half + half // 2 :],
        "random-bytes-appended.mp3": lambda data: data + rng.bytes(20_000),
        "halves-swapped.mp3": lambda data: data[half:] + data[:half],
        "two-clips-joined.mp3": lambda data: data + next(sources),
        "sparse-flips.mp3": lambda data: flipped(data, 0.001, rng),
        "mp3-named-wav.wav": lambda data: data,
        **{f"flipped-{k}.mp3": lambda data: flipped(data, 0.01, rng) for k in range(FLIPPED_COPIES)},
    }
    for name, damaged in damage.items():
        (folder / name).write_bytes(damaged(next(sources)))
    (folder / "random-bytes.mp3").write_bytes(rng.bytes(50_000))
    (folder / "text.mp3").write_text("not music\n" * 500)
    (folder / "id3-tag-only.mp3").write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00")
    (folder / "empty.mp3").write_bytes(b"")
    (folder / "x.mp3").mkdir()
    os.symlink(folder / "deleted.mp3", folder / "dangling-link.mp3")
    noise = rng.uniform(-1, 1, 2 * SR).astype(np.float32)
    loud_wav(folder / "beyond-full-scale.wav", 38 * noise)
    loud_wav(folder / "nan-samples.wav", np.where(np.arange(len(noise)) == SR, np.nan, noise))
    sf.write(folder / "truncated.wav", noise, SR)
    with open(folder / "truncated.wav", "r+b") as file:  # the header promises two seconds that never come
        file.truncate(2_000)
    refused = {
        "empty.mp3": "file is empty (0 bytes)",
        "x.mp3": "a folder, not an audio file",
        "dangling-link.mp3": "a link to a missing file",
        "beyond-full-scale.wav": "times full scale (corrupt frames",
        "nan-samples.wav": "decoded samples are NaN or infinite",
        "header-only.mp3": "cannot decode audio",
        "random-bytes.mp3": "cannot decode audio",
        "text.mp3": "cannot decode audio",
    }
    return {path.name: refused.get(path.name) for path in sorted(folder.iterdir()) if path.name != "intact.mp3"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    folder = tmp_path_factory.mktemp("damaged")
    return folder, make_corpus(folder)


@pytest.fixture(scope="module")
def decoded(corpus) -> dict[str, tuple[np.ndarray | None, str | None]]:
    """{name: outcome of load_audio on the whole file}, "intact.mp3" first."""
    folder, expected = corpus
    return {
        name: outcome(folder / name, lambda path: gu.load_audio(path, SR, None)) for name in ["intact.mp3", *expected]
    }


def outcome(path: Path, function) -> tuple[object, str | None]:
    """(function(path), None) or (None, the AudioError's reason), checking the error names the file in one line."""
    try:
        return function(path), None
    except gu.AudioError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        return None, message.removeprefix(f"{path}: ")


def test_each_damaged_file_decodes_to_bounded_finite_samples_or_is_refused_with_its_reason(corpus, decoded):
    expected = {**corpus[1], "intact.mp3": None}
    refused = {name: reason for name, (_, reason) in decoded.items()}
    for name, (y, reason) in decoded.items():
        if y is not None:
            assert y.dtype == np.float32 and y.size and np.max(np.abs(y)) <= gu.MAX_AMPLITUDE, name
        assert expected[name] is None or expected[name] in (reason or ""), (name, reason)
    assert refused["intact.mp3"] is None
    beyond = [name for name in refused if name.startswith("flipped") and "times full scale" in (refused[name] or "")]
    assert beyond, refused  # the corpus holds the corrupt frames the check is for


@pytest.fixture(scope="module")
def extracted(corpus, tmp_path_factory) -> tuple[gu.Features, list[str]]:
    """The features of every file of the corpus ("intact.mp3" first) as training clips, and the warnings."""
    folder, expected = corpus
    names = ["intact.mp3", *expected]
    tracks = pd.DataFrame(
        {
            "genre": [gu.GENRES[i % len(gu.GENRES)] for i in range(len(names))],
            "split": "training",
            "path": [str(folder / name) for name in names],
        },
        index=pd.Index(range(1, len(names) + 1), name="track_id"),
    )
    with pytest.warns(UserWarning, match=r"skipped \d+ of \d+ audio files"):
        features = gu.extract_features(tracks, CFG.replace(cache_dir=tmp_path_factory.mktemp("cache")), workers=1)
    return features, names


def test_extraction_keeps_finite_features_and_lists_every_refused_file_with_its_reason(corpus, extracted):
    features, names = extracted
    assert np.isfinite(features.mel).all() and np.isfinite(features.cqt).all()
    refused = {}
    for name in names:
        refused[name] = outcome(corpus[0] / name, lambda path: gu.load_audio(path, SR, CFG.clip_seconds))[1]
    skipped = dict(zip(features.skipped["path"], features.skipped["reason"]))
    assert skipped == {str(corpus[0] / name): reason for name, reason in refused.items() if reason is not None}
    assert len(features.mel) == len(names) - len(skipped) > 0


def test_predict_gives_distinct_finite_probabilities_or_refuses_the_file_as_loading_does(corpus, decoded, extracted):
    gu.import_keras().utils.set_random_seed(CFG.seed)
    model, answers = gu.build_model(CFG), {}
    gu.adapt_normalization(model, extracted[0], np.arange(len(extracted[0].mel)))  # as training does first
    for name, (_, refused) in decoded.items():
        windows, reason = outcome(corpus[0] / name, lambda path: gu.predict_file(path, model, CFG))
        assert reason == refused, name
        if windows is not None:
            proba = windows.to_numpy()
            assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1, atol=1e-5), name
            answers[tuple(proba.mean(axis=0))] = name
    assert len(answers) == sum(reason is None for _, reason in decoded.values())  # no two files, one answer


def test_musicnn_patches_are_finite_for_any_finite_audio():
    t = np.arange(4 * gu.MUSICNN_SAMPLE_RATE) / gu.MUSICNN_SAMPLE_RATE
    square = np.sign(np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    for amplitude in (0.5, 1.0, gu.MAX_AMPLITUDE, 226.0):  # 226: the peak of a corrupt MP3 as decoded
        assert np.isfinite(gu.musicnn_patches(amplitude * square)).all(), amplitude
