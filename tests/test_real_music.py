"""benchmarks/real_music.py: each dataset gets its own numbers, whatever ran before in the same work folder."""

import importlib.util
import json
import sys

import pandas as pd
import pytest

import genre_utils as gu
from conftest import write_tone


@pytest.fixture(scope="module")
def real_music():
    spec = importlib.util.spec_from_file_location("real_music", gu.ROOT / "benchmarks" / "real_music.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_music"] = module  # as an import would: its dataclass resolves annotations there
    spec.loader.exec_module(module)
    return module


def folder_set(root, tones: dict[str, list[float]], seconds: float = 1.0):
    """A folder-per-genre set: `tones[genre]` lists the frequency of each of its clips (one WAV each)."""
    for genre, frequencies in tones.items():
        for k, freq in enumerate(frequencies):
            write_tone(root / genre / f"{k}.wav", seconds, freq)
    return root


def run(real_music, data, work, out, *extra):
    # one process decodes: each worker process would import librosa for a few clips (parallel extraction
    # is tested in test_features.py)
    argv = ["--data", str(data), "--methods", "svm,logistic", "--folds", "2", "--repeats", "1", "--workers", "1"]
    assert real_music.main([*argv, "--work", str(work), "--out", str(out), *extra]) == 0
    return pd.read_csv(out / "summary.csv"), json.loads((out / "run.json").read_text())


def test_two_datasets_in_one_work_folder_each_get_their_own_numbers(real_music, tmp_path):
    # set A: low tones vs high tones, perfectly separable; set B: both folders hold the same tones
    set_a = folder_set(tmp_path / "set_a", {"low": [110, 130, 150, 170], "high": [2000, 2400, 2800, 3200]})
    set_b = folder_set(tmp_path / "set_b", {"low": [110, 2000, 150, 2800], "high": [110, 2000, 150, 2800]})
    work = tmp_path / "work"
    a, run_a = run(real_music, set_a, work, tmp_path / "out_a")
    b, run_b = run(real_music, set_b, work, tmp_path / "out_b")  # the same --work
    fresh_b, _ = run(real_music, set_b, tmp_path / "fresh", tmp_path / "out_fresh")
    assert (a["accuracy_mean"] == 1.0).all() and (b["accuracy_mean"] < 1.0).all()
    pd.testing.assert_frame_equal(b.drop(columns="train_seconds"), fresh_b.drop(columns="train_seconds"))
    assert run_a["features_key"] != run_b["features_key"]
    assert len(list(work.iterdir())) == 2, "each dataset keeps its folds in a folder of its own"
    assert run_b["clip_seconds"] == run_b["recording_seconds"] == 1.0  # the recordings' whole length

    # the same inputs are read back: no fold of set A is computed again
    records = sorted(work.glob("set_a-*/*/repeat-0/fold-*/result.json"))
    before = [path.stat().st_mtime_ns for path in records]
    again, _ = run(real_music, set_a, work, tmp_path / "out_a")
    assert len(records) == 4 and [path.stat().st_mtime_ns for path in records] == before
    pd.testing.assert_frame_equal(again, a)

    # a clip of set A changes: its folder is new, and A's numbers are computed afresh from it
    write_tone(set_a / "high" / "0.wav", 1.0, 120)  # now a low tone among the high ones
    changed, run_changed = run(real_music, set_a, work, tmp_path / "out_changed")
    assert run_changed["features_key"] != run_a["features_key"]
    assert (changed["accuracy_mean"] < 1.0).any()


def test_seconds_cut_the_recordings_and_the_tables_say_so(real_music, tmp_path):
    data = folder_set(tmp_path / "set", {"low": [110, 130, 150, 170], "high": [2000, 2400, 2800, 3200]}, 1.5)
    summary, record = run(real_music, data, tmp_path / "work", tmp_path / "out", "--seconds", "0.5")
    assert record["clip_seconds"] == 0.5 and record["recording_seconds"] == 1.5
    assert "the first 0.5 s of each recording" in (tmp_path / "out" / "summary.md").read_text()
    assert {"accuracy_min", "accuracy_mean", "accuracy_se"} <= set(summary.columns)
    with pytest.raises(SystemExit):
        real_music.main(["--data", str(data), "--seconds", "0"])
    with pytest.raises(SystemExit):
        real_music.main(["--data", str(data), "--workers", "0"])


def test_add_puts_new_rows_into_the_saved_tables_of_the_same_folds_only(real_music, tmp_path, capsys):
    data = folder_set(tmp_path / "set", {"low": [110, 130, 150, 170], "high": [2000, 2400, 2800, 3200]})
    out, work = tmp_path / "out", tmp_path / "work"
    both, _ = run(real_music, data, work, out)
    measured = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps(measured | {"date": "2026-01-31"}))  # as if measured that day
    argv = ["--data", str(data), "--folds", "2", "--repeats", "1", "--workers", "1"]
    argv += ["--work", str(work), "--out", str(out)]
    assert real_music.main([*argv, "--methods", "logistic", "--add"]) == 0  # replaces its row, keeps the SVM's
    summary, record = pd.read_csv(out / "summary.csv"), json.loads((out / "run.json").read_text())
    pd.testing.assert_frame_equal(summary.drop(columns="train_seconds"), both.drop(columns="train_seconds"))
    assert list(record["methods"]) == ["svm", "logistic"]
    assert len(pd.read_csv(out / "per_fold.csv")) == 4
    assert record["kept"] == {"svm": "2026-01-31"} and "(svm from 2026-01-31)" in (out / "summary.md").read_text()
    before = (out / "summary.csv").read_text()
    with pytest.raises(SystemExit, match="1"):  # other folds: nothing is mixed
        real_music.main([*argv[:2], "--folds", "3", *argv[4:], "--methods", "logistic", "--add"])
    assert (out / "summary.csv").read_text() == before
    # other recordings under the same names (another size), the same folder, folds and settings: not mixed
    write_tone(data / "low" / "0.wav", 1.5, 110)
    assert real_music.recordings_fingerprint(gu.load_tracks(data, genres=["high", "low"])) != measured["recordings"]
    capsys.readouterr()
    with pytest.raises(SystemExit, match="1"):
        real_music.main([*argv, "--methods", "logistic", "--add"])
    assert f"recordings {measured['recordings']!r} there" in capsys.readouterr().err
    assert (out / "summary.csv").read_text() == before
