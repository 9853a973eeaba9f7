"""Training: the batch pipeline, one optimisation step, the run folder, resuming a killed run."""

import json
import shutil

import keras
import numpy as np
import pandas as pd
import pytest

import genre_utils as gu
from conftest import TINY


def fake_features(cfg=TINY, n_train=24, n_val=8, seed=0) -> gu.Features:
    """In-memory Features of random float16 spectrograms; every clip's level depends on its genre."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val
    labels = np.arange(n) % len(cfg.genres)
    index = pd.DataFrame(
        {
            "genre": [cfg.genres[i] for i in labels],
            "split": ["training"] * n_train + ["validation"] * n_val,
            "label": labels,
        },
        index=pd.Index(np.arange(100, 100 + n), name="track_id"),
    )
    level = labels[:, None, None] / 4.0
    mel = (rng.normal(size=(n, cfg.n_mels, cfg.n_frames)) + level).astype(np.float16)
    cqt = (rng.normal(size=(n, cfg.cqt_bins, cfg.n_frames)) * 3 - 40 - level).astype(np.float16)
    return gu.Features(index, mel, cqt)


@pytest.fixture(scope="module")
def data():
    return fake_features()


def test_batches_are_the_cached_float16_values_with_a_channel_axis(data):
    batches = gu.feature_batches(data, data.rows("training"), TINY)
    x, y = batches[0]
    assert x["mel"].shape == (8, TINY.n_mels, TINY.n_frames, 1) and x["mel"].dtype == np.float16
    assert x["cqt"].shape == (8, TINY.cqt_bins, TINY.n_frames, 1)
    np.testing.assert_array_equal(x["mel"][..., 0], data.mel[:8])
    np.testing.assert_array_equal(y, data.index["label"].to_numpy()[:8])


def test_the_model_normalises_each_band_with_the_training_statistics(data):
    model = gu.build_model(TINY)
    training = data.rows("training")
    gu.adapt_normalization(model, data, training)
    layer = model.get_layer("cqt_normalization")
    normalised = keras.ops.convert_to_numpy(layer(data.cqt[training][..., np.newaxis]))[..., 0]
    np.testing.assert_allclose(normalised.mean(axis=(0, 2)), 0, atol=1e-3)
    np.testing.assert_allclose(normalised.std(axis=(0, 2)), 1, atol=1e-3)
    everything = keras.ops.convert_to_numpy(layer(data.cqt[..., np.newaxis]))
    assert abs(everything.mean()) > 1e-3  # the validation clips did not contribute
    with pytest.raises(gu.DataError, match="no clips"):
        gu.adapt_normalization(model, data, [])


def test_shuffling_visits_every_training_clip_once_per_epoch_in_a_new_order(data):
    batches = gu.feature_batches(data, data.rows("training"), TINY, inputs=("cqt",), shuffle=True)
    assert len(batches) == 3

    def epoch_labels_and_firsts():
        parts = [batches[i] for i in range(len(batches))]
        return np.concatenate([y for _, y in parts]), np.concatenate([x["cqt"][:, 0, 0, 0] for x, _ in parts])

    labels1, firsts1 = epoch_labels_and_firsts()
    batches.on_epoch_end()
    labels2, firsts2 = epoch_labels_and_firsts()
    assert sorted(labels1) == sorted(labels2) == sorted(data.index["label"].to_numpy()[:24])
    assert sorted(firsts1) == sorted(firsts2) and not np.array_equal(firsts1, firsts2)


def test_excerpts_are_random_crops_of_the_requested_length(data):
    batches = gu.feature_batches(data, data.rows("training"), TINY, inputs=("mel",), shuffle=True, excerpt_frames=10)
    x, _ = batches[0]
    assert x["mel"].shape == (8, TINY.n_mels, 10, 1)
    clip = x["mel"][0, :, :, 0]
    matches = [
        (row, start)
        for row in range(24)
        for start in range(TINY.n_frames - 9)
        if np.array_equal(data.mel[row, :, start : start + 10], clip)
    ]
    assert len(matches) == 1
    with pytest.raises(gu.ConfigError, match="excerpt_frames"):
        gu.feature_batches(data, data.rows("training"), TINY, excerpt_frames=TINY.n_frames + 1)


def test_features_that_do_not_fit_the_config_raise_data_error(data):
    with pytest.raises(gu.DataError, match="mel array has shape"):
        gu.feature_batches(data, data.rows("training"), TINY.replace(n_mels=32))


def test_a_model_built_for_other_input_sizes_is_refused(tmp_path, data):
    model = gu.build_model(TINY.replace(n_mels=32))
    with pytest.raises(gu.ConfigError, match="'mel' is 32 bins high"):
        gu.train(model, data, TINY, tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()  # nothing written, no earlier result removed
    with pytest.raises(gu.ConfigError, match="'mel' is 32 bins high"):
        gu.predict_proba(model, data, data.rows("validation"), TINY)


def test_one_training_step_lowers_the_loss_on_a_fixed_batch(data):
    cfg = TINY.replace(dropout=0.0, branches=("mel_vertical", "cqt"))  # both inputs, fewer layers to compile
    keras.utils.set_random_seed(cfg.seed)
    model = gu.build_model(cfg)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="sparse_categorical_crossentropy")
    x, y = gu.feature_batches(data, data.rows("training"), cfg)[0]
    before = model.train_on_batch(x, y)  # loss of the forward pass before the update
    after = model.train_on_batch(x, y)
    assert after < before


def test_training_says_its_expected_duration_after_its_first_steps_then_the_time_left(
    tmp_path, data, capsys, monkeypatch
):
    monkeypatch.setattr(gu, "_TIME_LEFT_EVERY", 0.0)  # a line after every epoch, however short
    gu.train(gu.build_model(TINY), data, TINY, tmp_path / "eta", verbose=0)
    said = capsys.readouterr().out.splitlines()
    # 24 clips in batches of 8: 3 steps an epoch; the first traces the graph, so steps 2-3 are timed
    assert said[0].startswith("training eta: 2 epochs expected to take about ")
    assert "(steps 2-3 of 3 an epoch, validation not counted; done around " in said[0]
    assert said[1].startswith("training eta: epoch 1 of 2, about ") and said[1].endswith(" left")
    assert len(said) == 2


class KillAfterFirstEpoch(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.optimizer_built = self.model.optimizer.built

    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt("simulated kill")


class RecordEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, data):
    """The folder of a 2-epoch run killed after epoch 1 (tests resume copies of it)."""
    run_dir = tmp_path_factory.mktemp("runs") / "killed"
    kill = KillAfterFirstEpoch()
    with pytest.raises(KeyboardInterrupt):
        gu.train(gu.build_model(TINY), data, TINY, run_dir, callbacks=[kill], verbose=0)
    # the optimiser's variables exist before the first step, which TensorFlow then traces once, not twice
    assert kill.optimizer_built
    return run_dir


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, killed_run, data):
    """The killed run, trained again in (a copy of) its folder with a new model."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    shutil.copytree(killed_run, run_dir)
    after_kill = pd.read_csv(run_dir / "history.csv")
    assert (run_dir / "backup").is_dir() and not (run_dir / "last.keras").exists()
    recorder = RecordEpochs()
    model = gu.build_model(TINY)
    history = gu.train(model, data, TINY, run_dir, callbacks=[recorder], verbose=0)
    return run_dir, after_kill, recorder.epochs, model, history


def test_a_killed_run_continues_from_its_last_epoch(resumed_run):
    run_dir, after_kill, resumed_epochs, model, history = resumed_run
    assert after_kill["epoch"].tolist() == [0]
    assert resumed_epochs == [1]
    assert history["epoch"].tolist() == [0, 1]
    assert history.loc[0].equals(after_kill.loc[0])
    assert pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == [0, 1]
    assert int(model.optimizer.iterations) == 2 * 3  # Adam's step count (and learning-rate decay) continued
    assert not (run_dir / "backup").exists()


def test_the_run_folder_holds_config_versions_history_and_models(resumed_run):
    run_dir = resumed_run[0]
    assert all((run_dir / name).is_file() for name in gu.RUN_FILES)
    assert json.loads((run_dir / "config.json").read_text()) == json.loads(json.dumps(TINY.to_dict()))
    versions = json.loads((run_dir / "versions.json").read_text())
    assert {"python", "keras", "backend", "backend_version", "numpy", "librosa", "platform", "devices"} <= set(versions)
    assert versions["run_format"] == gu.RUN_FORMAT
    assert not list(run_dir.glob(".*.partial")) and not (run_dir / "stats.npz").exists()


def test_the_saved_model_carries_the_input_normalisation_of_the_training_split(resumed_run, data):
    run_dir = resumed_run[0]
    model, *_ = gu.load_run(run_dir)
    training = data.mel[data.rows("training")].astype(np.float64)
    layer = model.get_layer("mel_normalization")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.adapt_mean), training.mean(axis=(0, 2)), atol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.adapt_variance), training.var(axis=(0, 2)), rtol=1e-3)


def test_a_run_from_before_the_model_normalised_its_inputs_is_refused(resumed_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(resumed_run[0], old)
    versions = json.loads((old / "versions.json").read_text())
    del versions["run_format"]
    (old / "versions.json").write_text(json.dumps(versions))
    with pytest.raises(gu.DataError, match="older version.*train into"):
        gu.load_run(old)


def test_load_run_returns_the_best_model_config_and_history(resumed_run, data):
    run_dir, *_, history = resumed_run
    model, cfg, loaded = gu.load_run(run_dir)
    assert cfg == TINY
    pd.testing.assert_frame_equal(loaded, history)
    rows = data.rows("validation")
    probabilities = gu.predict_proba(model, data, rows, cfg)
    assert probabilities.shape == (len(rows), len(cfg.genres)) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = (probabilities.argmax(axis=1) == data.index["label"].to_numpy()[rows]).mean()
    assert accuracy == pytest.approx(history["val_accuracy"].max(), abs=1e-6)  # best.keras is the best epoch
    reversed_order = gu.predict_proba(model, data, rows[::-1], cfg)
    # the same float32 network on the same clips, batched otherwise: a CPU's kernels may then sum in another
    # order. Its N = 1,253 accumulated terms give a logit error of at most 2 N u = 1.5e-4 of the logits'
    # scale (u = 2^-24, see test_pretrained._port_errors), a softmax probability twice that, relative: 1e-3
    # covers logits up to ~3 (measured: 4e-7); rows in the wrong order differ by far more
    np.testing.assert_allclose(reversed_order, probabilities[::-1], rtol=1e-3)


def test_resuming_with_other_settings_is_refused(tmp_path, killed_run, data):
    shutil.copytree(killed_run, tmp_path / "run")
    other = TINY.replace(learning_rate=0.01)
    with pytest.raises(gu.ConfigError, match="config.json: the interrupted run"):
        gu.train(gu.build_model(other), data, other, tmp_path / "run", verbose=0)


def test_resuming_on_other_data_is_refused(tmp_path, killed_run, data):
    shutil.copytree(killed_run, tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "data.json").read_text())
    assert recorded == {
        "features": "in memory",
        "source": "synthetic",  # TINY's data root is the demo set
        "clips": {"training": 24, "validation": 8, "test": 0},
        "fingerprint": data.fingerprint(),
    }
    other = fake_features(seed=1)  # the same clips, ids and splits; other values
    with pytest.raises(gu.ConfigError, match="data.json: the interrupted run .* was trained on other data"):
        gu.train(gu.build_model(TINY), other, TINY, tmp_path / "run", verbose=0)
    moved = fake_features()
    moved.index.loc[moved.index.index[0], "split"] = "validation"  # the same values, another split
    assert moved.fingerprint() != data.fingerprint() and fake_features().fingerprint() == data.fingerprint()


def test_load_run_of_an_empty_folder_names_the_missing_file(tmp_path):
    with pytest.raises(gu.DataError, match="config.json: not found"):
        gu.load_run(tmp_path)


def test_training_cost_reads_the_epoch_times_of_the_presets_run(tmp_path):
    cfg = TINY.replace(runs_dir=tmp_path, epochs=46)
    assert gu.training_cost(cfg).startswith(f"not measured yet (no {tmp_path / 'demo-full' / 'history.csv'}")
    (tmp_path / "demo-full").mkdir()
    (tmp_path / "demo-full" / "history.csv").write_text("epoch,epoch_seconds\n0,30\n1,20\n2,19\n")
    assert gu.training_cost(cfg).startswith("about 15 min a training of 46 epochs (20 s an epoch on average, 19-30 s,")
