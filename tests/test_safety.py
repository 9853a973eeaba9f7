"""Run folders hold data, never code: every loader refuses a file that is not what this code wrote."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import genre_utils as gu
from conftest import write_tone


class _Payload:
    """A pickle that creates a file when it is loaded: what a malicious run folder would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _embedding_run(run_dir: Path) -> Path:
    """A small embedding-classifier run (logistic regression on 400 made-up embedding values)."""
    rng = np.random.default_rng(0)
    columns = [c for c in gu._embedding_columns() if c.startswith("penultimate_")]
    embeddings = pd.DataFrame(rng.normal(size=(12, len(columns))), columns=columns, index=range(100, 112))
    labels = pd.Series(["Rock", "Folk"] * 6, index=embeddings.index)
    gu.train_embedding_classifier(embeddings, labels, gu.get_config("demo", clip_seconds=3.0), run_dir)
    return run_dir


def _cnn_run(run_dir: Path) -> Path:
    """A folder with every file of a CNN run; its models are a tiny valid Keras model."""
    keras = gu.import_keras()
    run_dir.mkdir(parents=True)
    gu._write_json(run_dir / "config.json", gu.get_config("demo").to_dict())
    gu._write_json(run_dir / "versions.json", {"run_format": gu.RUN_FORMAT})
    (run_dir / "history.csv").write_text("epoch,loss\n0,1.0\n")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    for name in ("best.keras", "last.keras"):
        model.save(run_dir / name)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    return _embedding_run(folder / "embedding"), _cnn_run(folder / "cnn")


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / run_dir.name
    target.mkdir()
    for file in run_dir.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def _load(run_dir: Path):
    """The loader `predict --run` picks for this folder."""
    return gu.load_embedding_run(run_dir) if (run_dir / "classifier.json").is_file() else gu.load_run(run_dir)


def test_the_saved_runs_load_and_an_embedding_run_holds_no_pickle(runs):
    embedding, cnn = runs
    classifier, cfg, info = gu.load_embedding_run(embedding)
    assert list(classifier.classes_) == ["Folk", "Rock"] and info["kind"] == "logistic"
    assert not (embedding / "classifier.joblib").exists()
    assert (embedding / "classifier.skops").read_bytes()[:4] == b"PK\x03\x04"  # a zip of JSON and arrays
    assert json.loads((embedding / "versions.json").read_text())["run_format"] == gu.RUN_FORMAT
    model, cfg, history = gu.load_run(cnn)
    assert model.output_shape == (None, 2) and len(history) == 1


@pytest.mark.parametrize(
    "kind, name",
    [
        ("embedding", "classifier.joblib"),  # an old run's pickle
        ("embedding", "classifier.skops"),
        ("embedding", "config.json"),
        ("embedding", "classifier.json"),
        ("cnn", "best.keras"),
        ("cnn", "versions.json"),
    ],
)
def test_a_pickle_in_a_run_folder_is_refused_and_never_executed(runs, tmp_path, kind, name):
    run_dir = _copy(runs[kind == "cnn"], tmp_path)
    marker = tmp_path / "PWNED"
    if name == "classifier.joblib":
        (run_dir / "classifier.skops").unlink()
    (run_dir / name).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(gu.DataError) as error:
        _load(run_dir)
    message = str(error.value)
    assert "\n" not in message and str(run_dir) in message, message
    assert not marker.exists()


def test_predict_refuses_a_pickled_run_in_one_line_without_running_it(runs, tmp_path):
    run_dir = _copy(runs[0], tmp_path)
    marker = tmp_path / "PWNED"
    (run_dir / "classifier.skops").unlink()
    (run_dir / "classifier.joblib").write_bytes(pickle.dumps(_Payload(marker)))
    song = write_tone(tmp_path / "song.wav", 3.0)
    command = [sys.executable, str(gu.ROOT / "genre_utils.py"), "predict", str(song), "--run", str(run_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and not marker.exists()
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "classifier.joblib: a pickle" in result.stderr and "convert-run" in result.stderr


def test_a_skops_file_holding_a_function_is_refused_before_it_is_built(runs, tmp_path):
    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    run_dir = _copy(runs[0], tmp_path)
    skops.io.dump(FunctionTransformer(os.system), run_dir / "classifier.skops")
    with pytest.raises(gu.DataError, match=r"classifier\.skops: holds types this code never writes \(.*system"):
        gu.load_embedding_run(run_dir)


@pytest.mark.parametrize("kind, name", [("embedding", "classifier.skops"), ("cnn", "best.keras")])
def test_a_truncated_model_file_gives_one_line_naming_it(runs, tmp_path, kind, name):
    run_dir = _copy(runs[kind == "cnn"], tmp_path)
    data = (run_dir / name).read_bytes()
    (run_dir / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(gu.DataError, match=rf"{name}: not a (classifier saved by this code|model this code can load)"):
        _load(run_dir)


@pytest.mark.parametrize("kind", ["embedding", "cnn"])
def test_a_run_from_a_newer_format_is_refused_with_what_to_do(runs, tmp_path, kind):
    run_dir = _copy(runs[kind == "cnn"], tmp_path)
    versions = json.loads((run_dir / "versions.json").read_text())
    gu._write_json(run_dir / "versions.json", {**versions, "run_format": gu.RUN_FORMAT + 1})
    with pytest.raises(gu.DataError, match=r"newer version of genre-cnn .*update genre-cnn"):
        _load(run_dir)


def test_keras_safe_mode_refuses_a_model_whose_lambda_layer_carries_code(tmp_path):
    keras = gu.import_keras()
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    model.save(tmp_path / "best.keras")
    with pytest.raises(gu.DataError, match=r"best\.keras: not a model this code can load .*(safe|unsafe)"):
        gu.load_model(tmp_path / "best.keras")


def test_convert_run_rewrites_your_own_pickled_run_only_when_asked(runs, tmp_path, capsys):
    import joblib

    run_dir = _copy(runs[0], tmp_path)
    classifier = gu.load_embedding_run(run_dir)[0]
    (run_dir / "classifier.skops").unlink()
    joblib.dump(classifier, run_dir / "classifier.joblib")
    with pytest.raises(SystemExit) as status:
        gu.main(["convert-run", str(run_dir)])
    assert status.value.code == 1 and "--trust-pickle" in capsys.readouterr().err
    assert gu.main(["convert-run", str(run_dir), "--trust-pickle"]) == 0
    assert "runs any code it holds" in capsys.readouterr().err
    assert not (run_dir / "classifier.joblib").exists()
    converted = gu.load_embedding_run(run_dir)[0]
    x = np.random.default_rng(1).normal(size=(3, converted.n_features_in_))
    np.testing.assert_array_equal(converted.predict_proba(x), classifier.predict_proba(x))
