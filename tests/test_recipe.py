"""The recipe's choice of the predicting model: the checkpoint (best or last) and weight averaging (EMA)."""

import dataclasses

import keras
import numpy as np
import pytest

import genre_utils as gu
from conftest import TINY
from test_training import fake_features

NEW_FIELDS = {"checkpoint": "best", "use_ema": False, "ema_momentum": 0.99}  # the fields and their defaults


def test_new_fields_default_off_so_the_seed_and_demo_presets_keep_their_recipes():
    defaults = {field.name: field.default for field in dataclasses.fields(gu.Config)}
    assert {name: defaults[name] for name in NEW_FIELDS} == NEW_FIELDS
    for profile in ("seed", "demo"):
        cfg = gu.get_config(profile)
        assert {name: getattr(cfg, name) for name in NEW_FIELDS} == NEW_FIELDS, profile
    recipe = gu.get_config("recipe")
    assert all(getattr(recipe, name) == value for name, value in gu.RECIPE_SETTINGS.items())


def test_the_recipe_trains_a_fixed_budget_and_predicts_with_the_averaged_final_weights():
    recipe = gu.get_config("recipe")
    assert recipe.early_stopping == 0 and recipe.checkpoint == "last" and recipe.use_ema
    assert recipe.lr_schedule == "cosine"  # the learning rate decays to 0 at the last epoch


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(checkpoint="final"), "checkpoint 'final'"),
        (dict(use_ema=True, ema_momentum=1.0), "ema_momentum 1.0"),
        (dict(use_ema=True, ema_momentum=-0.1), "ema_momentum -0.1"),
    ],
)
def test_bad_checkpoint_or_ema_settings_raise_config_error(changes, message):
    with pytest.raises(gu.ConfigError, match=message):
        gu._optimizer(TINY.replace(**changes), 10)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_use_ema_makes_the_optimizer_average_and_fit_ends_on_the_average(weight_decay):
    cfg = TINY.replace(use_ema=True, ema_momentum=0.9, weight_decay=weight_decay, learning_rate=0.05, epochs=4)
    optimizer = gu._optimizer(cfg, steps_per_epoch=5)
    assert optimizer.use_ema and optimizer.ema_momentum == 0.9
    assert not gu._optimizer(TINY, steps_per_epoch=5).use_ema

    # one weight pulled steadily from 0 towards 10: its moving average lags behind the weight itself
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    model.compile(optimizer=optimizer, loss="mse")
    raw = {}

    class LastRawWeight(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raw["weight"] = float(self.model.get_weights()[0][0, 0])

    x, y = np.ones((40, 1), np.float32), np.full((40, 1), 10.0, np.float32)
    model.fit(x, y, batch_size=8, epochs=cfg.epochs, verbose=0, shuffle=False, callbacks=[LastRawWeight()])
    averaged = float(model.get_weights()[0][0, 0])
    assert 0.0 < averaged < raw["weight"]


def _loaded_paths(monkeypatch) -> list:
    """Record the files gu.load_model loads (the models still load)."""
    loaded, original = [], gu.load_model

    def recording(path):
        loaded.append(path.name)
        return original(path)

    monkeypatch.setattr(gu, "load_model", recording)
    return loaded


FAST = TINY.replace(branches=("mel_vertical",), monitor="val_loss")  # one branch: seconds to compile and train


def test_with_checkpoint_last_the_cnn_method_predicts_with_last_keras(tmp_path, monkeypatch):
    checkpoint = "last"  # "best", the default, is what test_cross_validation's recipe fold predicts with
    data = fake_features(n_train=24, n_val=8)
    cfg = FAST.replace(checkpoint=checkpoint, use_ema=True, ema_momentum=0.5)
    split = gu.cross_validation_folds(data.index["genre"], folds=4, seed=0)[0]
    loaded = _loaded_paths(monkeypatch)
    result = gu.cnn_method(data, cfg)(split, tmp_path)
    assert loaded == [f"{checkpoint}.keras"]
    view = gu._fold_features(data, split.rename("split"))
    expected = gu.predict_proba(gu.load_model(tmp_path / f"{checkpoint}.keras"), view, view.rows("test"), cfg)
    np.testing.assert_allclose(result.proba.to_numpy(), expected, atol=1e-6)
    # best.keras holds the raw weights of an epoch, last.keras their moving average: they differ
    best, last = (gu.load_model(tmp_path / name).get_weights() for name in ("best.keras", "last.keras"))
    assert any(not np.array_equal(b, a) for b, a in zip(best, last))


def test_a_cnn_experiment_with_checkpoint_last_scores_last_keras(tmp_path, monkeypatch):
    data = fake_features(n_train=24, n_val=12)
    data.index["split"] = ["training"] * 24 + ["validation", "test"] * 6
    cfg = FAST.replace(checkpoint="last")
    loaded = _loaded_paths(monkeypatch)
    row = gu.cnn_experiment("last", cfg, data, tmp_path)
    assert loaded[-1] == "last.keras"
    last = gu.load_model(tmp_path / "last.keras")
    assert row["test_accuracy"] == gu.evaluate(last, data, cfg, "test").accuracy
