"""Bad input and faults: every broken file, table, cache or folder gives a message naming it and the
reason (never a library traceback, never silently wrong output), and interrupted work resumes."""

import errno
import hashlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
import genre_utils as gu  # noqa: E402
from conftest import SR, TINY, tone, write_tone  # noqa: E402

# the fixtures' clips are shorter than the CQT's lowest octave needs; librosa says so, rightly
pytestmark = pytest.mark.filterwarnings("ignore:n_fft=.* is too large:UserWarning")

CFG = TINY.replace(clip_seconds=0.5, cqt_bins=24, batch_size=4, seed=3)


def peak_frequency(y: np.ndarray, sr: int = SR) -> float:
    return float(np.fft.rfftfreq(len(y), 1 / sr)[np.abs(np.fft.rfft(y)).argmax()])


def track_table(paths, splits=None) -> pd.DataFrame:
    """A load_tracks-style table: genres cycle through the eight, track ids 1, 2, ..."""
    splits = splits or ["training"] * len(paths)
    return pd.DataFrame(
        {
            "genre": [gu.GENRES[i % len(gu.GENRES)] for i in range(len(paths))],
            "split": splits,
            "path": [str(p) for p in paths],
        },
        index=pd.Index(range(1, len(paths) + 1), name="track_id"),
    )


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    """Eight 0.5 s WAV clips of different pitches; the first two are validation and test."""
    folder = tmp_path_factory.mktemp("clips")
    paths = []
    for number in range(8):
        path = folder / f"{number:06d}.wav"
        sf.write(
            path,
            tone(0.5, freq=220 * 2 ** (number / 5)) + 0.01 * np.random.default_rng(number).standard_normal(SR // 2),
            SR,
        )
        paths.append(path)
    return paths


@pytest.fixture
def tracks(clips) -> pd.DataFrame:
    return track_table(clips, ["validation", "test"] + ["training"] * 6)


@pytest.fixture
def cfg(tmp_path) -> gu.Config:
    return CFG.replace(cache_dir=tmp_path / "cache")


def count_decodes(monkeypatch) -> list[str]:
    """Replace gu.load_audio by a wrapper that records each decoded path."""
    decoded, real_load_audio = [], gu.load_audio
    monkeypatch.setattr(gu, "load_audio", lambda path, *args: decoded.append(str(path)) or real_load_audio(path, *args))
    return decoded


# ── audio: each file loads correctly or is refused with its name and the reason ──


@pytest.mark.parametrize("sr", [8000, 16_000, 44_100, 48_000])
@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "FLOAT"])
def test_wav_of_any_rate_and_sample_format_loads_resampled(tmp_path, sr, subtype):
    path = tmp_path / f"clip_{sr}_{subtype}.wav"
    write_tone(path, 0.6, sr=sr, subtype=subtype)
    y = gu.load_audio(path, SR, 0.5)
    assert y.dtype == np.float32 and y.shape == (SR // 2,) and np.all(np.isfinite(y))
    assert np.abs(y).max() == pytest.approx(0.5, abs=0.03)  # 8-bit is the coarsest
    assert peak_frequency(y) == pytest.approx(440, abs=3)


@pytest.mark.parametrize(
    ("name", "write", "seconds_of_sound", "peak"),
    [
        ("mono.au", lambda p: write_tone(p, 1.0, sr=44_100, format="AU", subtype="PCM_16"), 1.0, 0.5),
        ("stereo.wav", lambda p: write_tone(p, 1.0, channels=2), 1.0, 0.375),
        ("short.wav", lambda p: write_tone(p, 0.25), 0.25, 0.5),  # zero-padded
        ("long.mp3", lambda p: write_tone(p, 6.0, sr=44_100), 1.0, 0.5),  # cropped
    ],
)
def test_channels_containers_and_lengths_give_one_second_of_mono(tmp_path, name, write, seconds_of_sound, peak):
    path = tmp_path / name
    write(path)
    y = gu.load_audio(path, SR, 1.0)
    assert y.dtype == np.float32 and y.shape == (SR,) and np.all(np.isfinite(y))
    sounding = int(seconds_of_sound * SR)
    assert np.abs(y[: sounding - 2000]).max() == pytest.approx(peak, abs=0.03)
    assert peak_frequency(y[: sounding - 2000]) == pytest.approx(440, abs=5)
    assert not y[sounding + 10 :].any()  # the padding is silence


def test_silence_loads_as_zeros_and_gives_finite_features(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(SR), SR)
    y = gu.load_audio(path, SR, 1.0)
    assert y.shape == (SR,) and not y.any()
    for features in (gu.mel_spectrogram(y, CFG), gu.cqt(y, CFG)):
        assert np.all(np.isfinite(features))


def test_mp3_cut_mid_stream_keeps_what_was_decoded(tmp_path):
    path = tmp_path / "cut.mp3"
    write_tone(path, 2.0)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 4])  # about 0.5 s left
    y = gu.load_audio(path, SR, 1.0)
    assert y.shape == (SR,) and np.all(np.isfinite(y))
    assert np.abs(y[: SR // 4]).max() == pytest.approx(0.5, abs=0.05)
    assert not y[int(0.75 * SR) :].any()


def _mp3_header_only(path):
    write_tone(path, 1.0)
    path.write_bytes(path.read_bytes()[:64])


@pytest.mark.parametrize(
    ("name", "write", "reason"),
    [
        ("empty.mp3", lambda p: p.write_bytes(b""), "file is empty (0 bytes)"),
        ("truncated.mp3", _mp3_header_only, "cannot decode audio"),
        ("text.mp3", lambda p: p.write_text("not music\n" * 200), "cannot decode audio"),
        ("random.wav", lambda p: p.write_bytes(np.random.default_rng(0).bytes(20_000)), "cannot decode audio"),
        # libsndfile reads a header-less .au as raw u-law samples: noise, unless refused
        ("text.au", lambda p: p.write_text("not music\n" * 200), "no audio header"),
        ("missing.wav", lambda p: None, "file not found"),
    ],
)
def test_unreadable_files_raise_audio_error_naming_file_and_reason(tmp_path, name, write, reason):
    path = tmp_path / name
    write(path)
    with pytest.raises(gu.AudioError) as error:
        gu.load_audio(path, SR, 1.0)
    assert str(error.value).startswith(f"{path}: ") and reason in str(error.value)


def test_extraction_skips_bad_files_lists_them_and_warns(tmp_path, clips, cfg):
    empty, text = tmp_path / "000100.mp3", tmp_path / "000101.au"
    empty.write_bytes(b"")
    text.write_text("not music\n" * 200)
    tracks = track_table([*clips, empty, text], ["validation", "test"] + ["training"] * 8)
    with pytest.warns(UserWarning, match=r"skipped 2 of 10 audio files") as warned:
        features = gu.extract_features(tracks, cfg, workers=1)
    [message] = [str(w.message) for w in warned if "skipped" in str(w.message)]
    assert str(empty) in message and str(text) in message and "Features.skipped" in message
    assert features.skipped["path"].tolist() == [str(empty), str(text)]
    assert features.skipped["reason"].tolist()[0] == "file is empty (0 bytes)"
    assert "no audio header" in features.skipped["reason"].tolist()[1]
    assert features.index.index.tolist() == list(range(1, 9)) and len(features.mel) == 8  # nothing else lost
    assert pd.read_csv(features.path / "skipped.csv")["path"].tolist() == [str(empty), str(text)]


def test_non_finite_features_are_skipped_with_the_file_named(tracks, cfg, monkeypatch):
    real_cqt, calls = gu.cqt, []

    def infinite_for_the_fourth_clip(y, c):  # clips are extracted in track-id order
        calls.append(1)
        return real_cqt(y, c) + (np.inf if len(calls) == 4 else 0)

    monkeypatch.setattr(gu, "cqt", infinite_for_the_fourth_clip)
    fourth = tracks.loc[4, "path"]
    with pytest.warns(UserWarning, match=f"skipped 1 of 8 audio files \\({fourth}: CQT contains NaN or infinite"):
        features = gu.extract_features(tracks, cfg, workers=1)
    assert features.skipped.to_dict("records") == [{"path": fourth, "reason": "CQT contains NaN or infinite values"}]
    assert features.index.index.tolist() == [1, 2, 3, 5, 6, 7, 8] and np.all(np.isfinite(features.cqt))


# ── metadata and folder layouts ──


def write_fma(root: Path, genres: dict[int, str], columns=None) -> Path:
    """An FMA layout: tracks.csv with the two-level header and a small WAV-in-MP3-name per track."""
    rows = {
        tid: {
            ("set", "split"): "training",
            ("set", "subset"): "small",
            ("track", "genre_top"): genre,
            ("track", "title"): f"track {tid}",
        }
        for tid, genre in genres.items()
    }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    if columns is not None:
        table = table[columns]
    table.index.name = "track_id"
    (root / "fma_metadata").mkdir(parents=True)
    table.to_csv(root / "fma_metadata" / "tracks.csv")
    for tid in genres:
        path = gu.audio_path(root, tid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff\xfb" + bytes(200))
    return root / "fma_metadata" / "tracks.csv"


def test_fma_audio_without_tracks_csv_says_where_the_metadata_belongs(tmp_path):
    csv = write_fma(tmp_path, {2: "Rock"})
    csv.unlink()
    with pytest.raises(gu.DataError, match="fma_metadata.zip") as error:
        gu.load_tracks(tmp_path)
    assert str(error.value).startswith(f"{csv}: not found")


def test_tracks_csv_without_needed_columns_names_file_and_columns(tmp_path):
    csv = write_fma(tmp_path, {2: "Rock"}, columns=[("set", "subset"), ("track", "title")])
    with pytest.raises(gu.DataError) as error:
        gu.load_tracks(tmp_path)
    assert str(error.value).startswith(f"{csv}: missing column(s) set/split, track/genre_top")


def test_unknown_genres_and_missing_audio_are_dropped_with_a_summary(tmp_path):
    write_fma(tmp_path, {2: "Rock", 3: "Polka", 5: "Pop", 7: "Folk"})
    gu.audio_path(tmp_path, 5).unlink()
    with pytest.warns(UserWarning, match=r"skipped 2 of 4 tracks .*skipped_tracks"):
        tracks = gu.load_tracks(tmp_path)
    assert tracks.index.tolist() == [2, 7]
    skipped = gu.skipped_tracks(tracks)
    assert skipped.loc[3, "reason"] == "genre 'Polka' not in the genres used"
    assert skipped.loc[5, "reason"] == "audio file not found" and skipped.loc[5, "path"] == str(
        gu.audio_path(tmp_path, 5)
    )


def test_nothing_usable_is_an_error_not_an_empty_table(tmp_path):
    write_fma(tmp_path, {2: "Polka", 3: "Polka"})
    with pytest.raises(gu.DataError, match=r"no usable track in 2 \(2 genre 'Polka' not in the genres used\)"):
        gu.load_tracks(tmp_path)


def test_genre_folders_warn_about_empty_folders_stray_files_and_nested_folders(tmp_path):
    for genre in ("rock", "pop"):
        (tmp_path / genre).mkdir()
        write_tone(tmp_path / genre / "a.wav", 0.1)
    (tmp_path / "folk").mkdir()  # empty genre folder
    (tmp_path / "rock" / "cover.jpg").write_bytes(b"\xff\xd8")
    (tmp_path / "rock" / ".DS_Store").write_bytes(b"")  # hidden: ignored silently
    (tmp_path / "pop" / "live").mkdir()
    write_tone(tmp_path / "pop" / "live" / "b.wav", 0.1)
    with pytest.warns(UserWarning) as warned:
        tracks = gu.load_tracks(tmp_path)
    message = " ".join(str(w.message) for w in warned)
    assert "folk/" in message and "rock/cover.jpg" in message and "pop/live/" in message
    assert ".DS_Store" not in message
    assert sorted(tracks["genre"]) == ["Pop", "Rock"] and len(tracks) == 2


def test_a_folder_of_stray_files_only_is_no_dataset(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "rock").mkdir()
    (tmp_path / "rock" / "cover.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(gu.DataError, match=r"no dataset layout recognised.*Found: notes.txt, rock/"):
        gu.load_tracks(tmp_path)


# ── configuration ──


def test_unknown_preset_names_the_choices_and_the_variable(monkeypatch):
    monkeypatch.setenv("GENRE_PROFILE", "huge")
    with pytest.raises(
        gu.ConfigError, match=r"unknown preset 'huge'; choose one of seed, demo, recipe \(GENRE_PROFILE\)"
    ):
        gu.get_config()


def test_genre_settings_change_any_field_typed_and_explicit_changes_win(monkeypatch):
    monkeypatch.setenv("GENRE_SETTINGS", "n_mels=128 epochs=10  dropout=0.3 use_ema=yes horizontal_kernel_frames=16,8")
    cfg = gu.get_config("demo")
    assert (cfg.n_mels, cfg.epochs, cfg.dropout, cfg.use_ema) == (128, 10, 0.3, True)
    assert cfg.horizontal_kernel_frames == (16, 8) and cfg.clip_seconds == gu.PRESETS["demo"].clip_seconds
    assert cfg.changed_settings() == "n_mels=128 horizontal_kernel_frames=16,8 dropout=0.3 epochs=10 use_ema=True"
    assert gu.get_config("demo", epochs=3).epochs == 3
    monkeypatch.setenv("GENRE_SETTINGS", "figures_dir=runs/x")
    assert gu.get_config("demo").figures_dir == gu.ROOT / "runs" / "x"  # relative to the project folder
    monkeypatch.delenv("GENRE_SETTINGS")
    assert gu.get_config("demo").changed_settings() == "none"


@pytest.mark.parametrize(
    "settings, message",
    [
        ("n_mels=12.5", r"n_mels='12.5' is not a valid int \(default 128\)"),
        ("use_ema=maybe", r"use_ema='maybe' is not a valid bool"),
        ("cqt_kernel=3,x", r"cqt_kernel='3,x' is not a valid tuple"),
        ("n_melz=64", r"unknown setting 'n_melz'"),
        ("filters=16", r"unknown setting 'filters' \(filters is now first_block_channels\)"),
        ("epochs", r"'epochs' is not field=value"),
        ("profile=seed", r"choose the preset with GENRE_PROFILE"),
    ],
)
def test_bad_genre_settings_name_the_key_and_value(monkeypatch, settings, message):
    monkeypatch.setenv("GENRE_SETTINGS", settings)
    with pytest.raises(gu.ConfigError, match=r"GENRE_SETTINGS: " + message):
        gu.get_config("demo")


def test_genre_settings_reach_every_process_of_a_run_and_make_course_runs_the_experiments_lessons():
    env = {k: v for k, v in os.environ.items() if k not in ("GENRE_PROFILE", "GENRE_DATA", "GENRE_QUICK")}
    env["GENRE_SETTINGS"] = "n_mels=96 cqt_kernel=5,5"
    code = "import genre_utils as gu; cfg = gu.get_config(); print(cfg.n_mels, cfg.cqt_kernel, cfg.changed_settings())"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.stdout.split("\n")[0] == "96 (5, 5) n_mels=96 cqt_kernel=5,5", result.stderr  # as a notebook's kernel
    prerequisites = [
        "-o",
        ".venv/.installed",
        "-o",
        "cache/musicnn/msd_musicnn.npz",
        "-o",
        "cache/musicnn/mtt_musicnn.npz",
    ]
    dry = subprocess.run(["make", "-n", *prerequisites, "course"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert f"GENRE_PROFILE=seed GENRE_DATA={ROOT / 'data' / 'fma'} " in dry.stdout, dry.stdout + dry.stderr
    notebooks = re.findall(r"notebooks/(\d\d)_\w+\.ipynb", dry.stdout.split(";")[0])
    assert notebooks == ["01", "02", "03", "04", "05", "10"]


def test_quick_mode_is_no_changed_setting(monkeypatch):
    monkeypatch.setenv("GENRE_QUICK", "1")
    monkeypatch.setenv("GENRE_SETTINGS", "n_mels=32")
    assert gu.get_config("seed", data_root="/elsewhere").changed_settings() == "n_mels=32"


def test_old_saved_configs_with_filters_and_without_kernel_shapes_still_read(tmp_path):
    saved = json.loads(json.dumps(TINY.to_dict()))
    saved["filters"] = saved.pop("first_block_channels")
    for name in ("vertical_kernel_share", "vertical_kernel_frames", "horizontal_kernel_frames", "cqt_kernel"):
        del saved[name]
    cfg = gu._config_from_dict(saved, tmp_path / "config.json")
    assert cfg == TINY and cfg.first_block_channels == 2 and cfg.horizontal_kernel_frames == (32, 16, 8)


def test_genre_quick_trains_fewer_epochs_into_its_own_folders(monkeypatch):
    monkeypatch.setenv("GENRE_QUICK", "1")
    assert gu.quick_mode()
    quick = gu.get_config("demo")
    assert quick.epochs == gu.QUICK_SETTINGS["epochs"] < gu.PRESETS["demo"].epochs
    assert quick.studied_per_genre == 1 and quick.ablation_branches == () and quick.chance_margin_sds < 0
    assert json.loads(json.dumps(quick.to_dict()))["chance_margin_sds"] == float("-inf")  # as config.json keeps it
    assert quick.runs_dir == gu.QUICK_DIR and quick.figures_dir == gu.QUICK_DIR / "figures"
    assert quick.figures_dir != gu.PRESETS["demo"].figures_dir  # make test never rewrites figures/
    assert gu.get_config("seed", epochs=5).epochs == 5  # an explicit setting wins
    for off in ("0", ""):
        monkeypatch.setenv("GENRE_QUICK", off)
        assert not gu.quick_mode() and gu.get_config("demo") == gu.PRESETS["demo"]


def test_missing_data_root_says_to_set_genre_data_or_make_data(tmp_path, monkeypatch):
    monkeypatch.setenv("GENRE_DATA", str(tmp_path / "nowhere"))
    cfg = gu.get_config("demo")
    with pytest.raises(gu.DataError) as error:
        gu.load_tracks(cfg.data_root)
    assert str(error.value).startswith(f"{tmp_path / 'nowhere'}: data folder not found")
    assert "GENRE_DATA" in str(error.value) and "make data" in str(error.value)


def test_a_cache_of_other_settings_is_refused_not_used(tracks, cfg):
    features = gu.extract_features(tracks, cfg, workers=1)
    other = cfg.replace(cqt_fmin=65.41)  # same array shapes, different features
    with pytest.raises(gu.CacheError, match=r"other settings: cqt_fmin 32.7 \(config: 65.41\)"):
        gu.open_features(features.path, other)
    # a cache whose config.json was edited to other settings is not silently reused either
    info = (features.path / "config.json").read_text().replace('"n_mels": 16', '"n_mels": 17')
    (features.path / "config.json").write_text(info)
    with pytest.raises(gu.CacheError, match=f"{features.path}: features extracted with other settings: n_mels 17"):
        gu.extract_features(tracks, cfg, workers=1)


# ── features that are not finite never reach the model ──


@pytest.fixture
def corrupt_cache(tracks, cfg, tmp_path):
    """A finished cache copied aside, for tests to damage."""
    import shutil

    features = gu.extract_features(tracks, cfg, workers=1)
    copy = tmp_path / features.path.name
    shutil.copytree(features.path, copy)
    return copy


@pytest.mark.parametrize(("name", "value"), [("mel", np.nan), ("cqt", np.inf)])
def test_a_corrupt_cache_row_stops_training_and_prediction_naming_file_and_track(corrupt_cache, cfg, name, value):
    array = np.load(corrupt_cache / f"{name}.npy", mmap_mode="r+")
    array[5, 3, 7] = value  # row 5 is track 6 (a training clip)
    array.flush()
    del array
    features = gu.open_features(corrupt_cache, cfg)
    batches = gu.feature_batches(features, features.rows("training"), cfg)
    with pytest.raises(gu.DataError, match=rf"{corrupt_cache / f'{name}.npy'}: track 6 holds NaN or infinite"):
        [batches[i] for i in range(len(batches))]
    model = gu.build_model(cfg)
    with pytest.raises(gu.DataError, match="track 6 holds NaN or infinite"):
        gu.predict_proba(model, features, features.rows("training"), cfg)


def test_non_finite_training_features_are_refused_by_the_input_normalisation(corrupt_cache, cfg):
    array = np.load(corrupt_cache / "mel.npy", mmap_mode="r+")
    array[5, 2, 0] = np.nan  # row 5 is a training clip
    array.flush()
    del array
    features = gu.open_features(corrupt_cache, cfg)
    with pytest.raises(gu.DataError, match=f"{corrupt_cache}: the mel features of the training clips hold NaN"):
        gu.adapt_normalization(gu.build_model(cfg), features, features.rows("training"))


# ── faults: kills, read-only folders, full disks ──


def run_until(script: str, args, ready, timeout: float = 90.0) -> int:
    """Start `script` in a new process group, SIGKILL it as soon as `ready()` is true; returns its exit code."""
    process = subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                raise AssertionError(f"finished before the kill: {process.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for the moment to kill")
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stderr.close()


EXTRACT_SCRIPT = """
import pickle, sys, time
sys.path.insert(0, ".")
import genre_utils as gu
gu._FLUSH_ROWS = 1  # flush every row, so the kill finds rows on disk (real runs flush every 64)
real_load_audio = gu.load_audio
def slow_load_audio(path, *args):  # slow enough for the test to kill it mid-way
    time.sleep(0.15)
    return real_load_audio(path, *args)
gu.load_audio = slow_load_audio
with open(sys.argv[1], "rb") as file:
    tracks, cfg = pickle.load(file)
gu.extract_features(tracks, cfg, workers=1)
"""


def test_extraction_killed_mid_way_resumes_without_redoing_work(tmp_path, clips, monkeypatch):
    folder = tmp_path / "audio"
    folder.mkdir()
    paths = []
    for number in range(20):  # 20 short clips, one of them not audio
        paths.append(folder / f"{number:06d}.wav")
        write_tone(paths[-1], 0.3, 200 + 37 * number)
    paths[11].write_text("not audio")
    tracks = track_table(paths, ["validation", "test"] + ["training"] * 18)
    cfg = CFG.replace(clip_seconds=0.3, cache_dir=tmp_path / "cache")
    (tmp_path / "job.pkl").write_bytes(pickle.dumps((tracks, cfg)))
    partial = cfg.cache_dir / f"features-{gu.features_key(tracks, cfg)}.partial"

    def some_rows_done():
        try:
            return np.load(partial / "done.npy").sum() >= 5
        except (OSError, ValueError):  # not created yet
            return False

    assert run_until(EXTRACT_SCRIPT, [tmp_path / "job.pkl"], some_rows_done) == -signal.SIGKILL
    done = np.load(partial / "done.npy")
    assert 5 <= done.sum() < 19
    with pytest.raises(gu.CacheError, match="unfinished"):
        gu.open_features(partial)

    decoded = count_decodes(monkeypatch)
    with pytest.warns(UserWarning, match="skipped 1 of 20"):
        resumed = gu.extract_features(tracks, cfg, workers=1)
    assert decoded == [str(paths[row]) for row in np.flatnonzero(done == 0)]  # each undone row once, no other
    with pytest.warns(UserWarning, match="skipped 1 of 20"):
        clean = gu.extract_features(tracks, cfg.replace(cache_dir=tmp_path / "clean"), workers=1)
    assert resumed.path.name == clean.path.name and not partial.exists()
    pd.testing.assert_frame_equal(resumed.index, clean.index)
    pd.testing.assert_frame_equal(resumed.skipped, clean.skipped)
    assert folder_digest(resumed.path) == folder_digest(clean.path)  # the same bytes, file by file


TRAIN_SCRIPT = """
import os, pickle, signal, sys
sys.path.insert(0, ".")
import genre_utils as gu, keras
with open(sys.argv[1], "rb") as file:
    data, cfg, moment, at_epoch = pickle.load(file)
def kill():  # for real: no exception handler, no cleanup
    os.kill(os.getpid(), signal.SIGKILL)
class Kill(keras.callbacks.Callback):  # called after train's own callbacks
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if moment == "mid-epoch" and self.epoch == at_epoch and batch == 1:
            kill()
    def on_epoch_end(self, epoch, logs=None):  # the epoch's row is in history.csv
        if moment == "after its row" and epoch == at_epoch:
            kill()
callback = Kill()
save_weights = keras.Model.save_weights
def save_weights_then_kill(model, *args, **kwargs):  # the epoch's checkpoint has its weights, not the rest
    save_weights(model, *args, **kwargs)
    if moment == "while checkpointing" and callback.epoch == at_epoch:
        kill()
keras.Model.save_weights = save_weights_then_kill
keras.utils.set_random_seed(cfg.seed)
gu.train(gu.build_model(cfg), data, cfg, sys.argv[2], callbacks=[callback], verbose=0)
"""


def fake_features(cfg: gu.Config, n_train: int = 16, n_val: int = 4) -> gu.Features:
    """In-memory features whose level depends on the genre."""
    rng = np.random.default_rng(0)
    labels = np.arange(n_train + n_val) % len(cfg.genres)
    index = pd.DataFrame(
        {
            "genre": [cfg.genres[i] for i in labels],
            "label": labels,
            "split": ["training"] * n_train + ["validation"] * n_val,
        },
        index=pd.Index(np.arange(len(labels)) + 1, name="track_id"),
    )
    mel = (rng.normal(size=(len(labels), cfg.n_mels, cfg.n_frames)) + labels[:, None, None] / 4).astype(np.float16)
    cqt = rng.normal(size=(len(labels), cfg.cqt_bins, cfg.n_frames)).astype(np.float16)
    return gu.Features(index, mel, cqt)


RESUMED = CFG.replace(branches=("mel_vertical",), epochs=4)  # the smallest branch: quick to compile
RESUMED_MODES = {
    "whole clips": RESUMED,
    # the recipe: chunked (random excerpts), mixup, SpecAugment masks, the weights' moving average; a gain too
    "recipe": RESUMED.replace(
        **{**gu.RECIPE_SETTINGS, "epochs": 4, "warmup_epochs": 1.0, "chunk_seconds": 0.25}, gain_db=6.0
    ),
}


@pytest.mark.parametrize(
    "mode, kills",  # each kill: (moment, epoch); a second kill hits the resumed run
    [("whole clips", [("while checkpointing", 1), ("after its row", 2)]), ("recipe", [("mid-epoch", 2)])],
)
def test_a_killed_run_resumes_to_the_weights_and_history_of_a_run_never_killed(tmp_path, mode, kills):
    import keras

    cfg = RESUMED_MODES[mode]
    data, run_dir = fake_features(cfg), tmp_path / "killed"

    def start(moment, at_epoch):  # the child kills itself at the moment, with SIGKILL: no handler runs
        (tmp_path / "job.pkl").write_bytes(pickle.dumps((data, cfg, moment, at_epoch)))
        command = [sys.executable, "-c", TRAIN_SCRIPT, tmp_path / "job.pkl", run_dir]
        return subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE)

    child = start(*kills[0])
    try:
        keras.utils.set_random_seed(cfg.seed)  # meanwhile, the same call never killed
        uninterrupted = gu.build_model(cfg)
        expected = gu.train(uninterrupted, data, cfg, tmp_path / "uninterrupted", verbose=0)
        for number, (moment, at_epoch) in enumerate(kills):
            child = start(moment, at_epoch) if number else child
            _, stderr = child.communicate(timeout=120)
            assert child.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
            committed = at_epoch + (moment == "after its row")  # epochs whose checkpoint was complete
            assert pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == list(range(committed)), moment
            assert not (run_dir / "last.keras").exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()

    resumed = gu.build_model(cfg)  # not seeded: its dropout's seed comes from the checkpoint
    history = gu.train(resumed, data, cfg, run_dir, verbose=0)
    times = ["epoch_seconds"]  # wall time: the only column that may differ
    pd.testing.assert_frame_equal(history.drop(columns=times), expected.drop(columns=times))
    on_disk = pd.read_csv(run_dir / "history.csv").drop(columns=times)
    pd.testing.assert_frame_equal(on_disk, pd.read_csv(tmp_path / "uninterrupted" / "history.csv").drop(columns=times))
    # The same code on the same machine, the same inputs and deterministic CPU kernels: the weights are
    # expected bitwise equal (measured: 0). 1e-6 is 2 float32 ulps at the largest weights (~4, batch
    # norm's moving variances) and 8 at 1: room only for a rounding that a re-traced graph might order
    # otherwise. A resume that draws other batches, excerpts, masks or dropout ends 0.3 to 0.5 away
    difference = max(np.abs(a - b).max() for a, b in zip(resumed.get_weights(), uninterrupted.get_weights()))
    assert difference <= 1e-6, f"final weights differ by up to {difference:.3g}"
    assert (run_dir / "last.keras").is_file() and not (run_dir / "backup").exists()


def test_a_half_written_checkpoint_or_an_older_versions_backup_is_not_resumed(tmp_path):
    (tmp_path / "backup" / ".epoch-0001.partial").mkdir(parents=True)  # killed while writing the first checkpoint
    (tmp_path / "backup" / ".epoch-0001.partial" / "state.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    (tmp_path / "backup" / "training_metadata.json").write_text('{"epoch": 1}')  # Keras' BackupAndRestore's
    (tmp_path / "history.csv").write_text("epoch,loss\n0,1.0\n")
    cfg = RESUMED.replace(epochs=1)
    history = gu.train(gu.build_model(cfg), fake_features(cfg), cfg, tmp_path, verbose=0)
    assert history["epoch"].tolist() == [0] and history["loss"].iloc[0] != 1.0  # trained afresh
    assert not (tmp_path / "backup").exists()


def test_an_output_path_under_a_file_names_the_folder_and_the_problem(tmp_path, tracks, cfg):
    blocker = tmp_path / "results.txt"  # works as root too, unlike chmod
    blocker.write_text("a file where a folder should be")
    with pytest.raises(gu.CacheError) as error:
        gu.extract_features(tracks, cfg.replace(cache_dir=blocker / "cache"), workers=1)
    assert str(error.value).startswith(f"{blocker / 'cache'}: cannot write there: a file is in the way")
    assert "cfg.cache_dir" in str(error.value)
    data = fake_features(CFG)
    with pytest.raises(gu.ConfigError, match=f"{blocker / 'run'}: cannot write there: a file is in the way"):
        gu.train(gu.build_model(CFG), data, CFG, blocker / "run", verbose=0)
    assert blocker.read_text() == "a file where a folder should be"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_folder_names_the_folder(tmp_path, tracks, cfg):
    cfg.cache_dir.mkdir()
    cfg.cache_dir.chmod(0o555)
    try:
        with pytest.raises(gu.CacheError, match=f"{cfg.cache_dir}: cannot write there: permission denied"):
            gu.extract_features(tracks, cfg, workers=1)
    finally:
        cfg.cache_dir.chmod(0o755)


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_when_reserving_space_fails_before_any_decoding(tmp_path, tracks, cfg, monkeypatch):
    monkeypatch.setattr(os, "posix_fallocate", disk_full, raising=False)
    decoded = count_decodes(monkeypatch)
    with pytest.raises(gu.CacheError, match=f"{cfg.cache_dir}: cannot write there: disk full"):
        gu.extract_features(tracks, cfg, workers=1)
    assert decoded == []


def test_disk_full_while_finishing_keeps_the_old_cache_and_the_work_done(tracks, cfg, monkeypatch):
    old = gu.extract_features(tracks, cfg, workers=1)
    before = folder_digest(old.path)
    new_cfg = cfg.replace(n_mels=8)
    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(gu.CacheError, match=f"{cfg.cache_dir}: cannot write there: disk full") as error:
        gu.extract_features(tracks, new_cfg, workers=1)
    assert "finished results are untouched" in str(error.value)
    monkeypatch.undo()
    assert folder_digest(old.path) == before and gu.open_features(old.path, cfg).mel.shape[1] == 16
    assert not (cfg.cache_dir / f"features-{gu.features_key(tracks, new_cfg)}").exists()

    decoded = count_decodes(monkeypatch)  # space freed: the run finishes without decoding again
    new = gu.extract_features(tracks, new_cfg, workers=1)
    assert decoded == [] and new.mel.shape == (8, 8, new_cfg.n_frames)
    left = sorted(p.name for p in cfg.cache_dir.iterdir() if p.suffix != ".lock")  # locks stay, empty
    assert left == sorted([old.path.name, new.path.name])
