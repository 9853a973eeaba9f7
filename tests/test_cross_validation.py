"""Cross-validation: the folds, the method interface, the baselines, and the training recipe's pieces."""

import json
import threading
import time

import keras
import numpy as np
import pandas as pd
import pytest

import genre_utils as gu
from test_training import TINY, fake_features


def genre_labels(counts: dict[str, int], first_id: int = 10) -> pd.Series:
    """Genre per track_id, `counts[genre]` clips of each, genres interleaved along the ids."""
    genres = [g for g, n in counts.items() for _ in range(n)]
    order = np.random.default_rng(3).permutation(len(genres))
    return pd.Series(
        np.asarray(genres)[order],
        index=pd.Index(np.arange(first_id, first_id + len(genres)), name="track_id"),
        name="genre",
    )


LABELS = genre_labels({"rock": 20, "pop": 15, "jazz": 10})


@pytest.fixture(scope="module")
def folds():
    return gu.cross_validation_folds(LABELS, folds=5, seed=42)


def test_every_clip_is_tested_exactly_once_and_test_sets_are_disjoint(folds):
    assert list(folds.columns) == [0, 1, 2, 3, 4] and folds.index.equals(LABELS.index)
    assert ((folds == "test").sum(axis=1) == 1).all()
    assert set(np.unique(folds.to_numpy())) == {"training", "validation", "test"}


def test_folds_keep_the_class_balance(folds):
    for fold in folds.columns:
        test = LABELS[folds[fold] == "test"].value_counts()
        expected = LABELS.value_counts() / 5
        assert (abs(test - expected) <= 1).all(), (fold, test.to_dict())
        validation = LABELS[folds[fold] == "validation"].value_counts()
        assert set(validation.index) == set(LABELS), "every genre in every validation split"


def test_validation_is_carved_from_the_training_folds_and_never_overlaps_test(folds):
    n_validation = round(0.1 * len(LABELS))
    for fold in folds.columns:
        column = folds[fold]
        assert (column == "validation").sum() == n_validation
        assert (column == "training").sum() == len(LABELS) - n_validation - (column == "test").sum()
        training = set(column.index[column == "training"])
        assert training.isdisjoint(column.index[column == "test"])
        assert training.isdisjoint(column.index[column == "validation"])


def test_same_seed_same_folds_other_seed_other_folds(folds):
    pd.testing.assert_frame_equal(folds, gu.cross_validation_folds(LABELS, folds=5, seed=42))
    assert not folds.equals(gu.cross_validation_folds(LABELS, folds=5, seed=7))
    tracks = LABELS.to_frame()  # a tracks table works as well as a Series
    pd.testing.assert_frame_equal(folds, gu.cross_validation_folds(tracks, folds=5, seed=42))


def test_too_few_clips_of_a_genre_for_the_folds_raise():
    with pytest.raises(gu.GenreError, match="'jazz' has 3"):
        gu.cross_validation_folds(genre_labels({"rock": 10, "jazz": 3}), folds=5)
    with pytest.raises(gu.GenreError, match="folds=1"):
        gu.cross_validation_folds(LABELS, folds=1)


class Counting:
    """A fake method: predicts the genre of the training clips' majority ... except it cheats on
    `known` clips, whose true genre it returns; counts its calls."""

    def __init__(self, genres, known=()):
        self.genres, self.known, self.calls = list(genres), set(known), 0
        self.settings = {"fake": 1}

    def __call__(self, split, run_dir):
        self.calls += 1
        assert run_dir.is_dir()
        test = split.index[split == "test"]
        majority = LABELS[split[split == "training"].index].value_counts().idxmax()
        guesses = [LABELS[t] if t in self.known else majority for t in test]
        proba = pd.DataFrame(
            [[float(g == genre) for genre in self.genres] for g in guesses], index=test, columns=self.genres
        )
        return gu.MethodResult(proba, parameters=3, train_seconds=0.5)


def test_cross_validate_scores_every_method_on_the_same_folds_and_resumes(tmp_path, capsys):
    cfg = TINY.replace(genres=("jazz", "pop", "rock"))
    oracle = Counting(cfg.genres, known=LABELS.index)
    majority = Counting(cfg.genres)
    result = gu.cross_validate(
        {"oracle": oracle, "majority": majority}, LABELS, cfg, folds=3, seed=1, out_dir=tmp_path, progress=False
    )
    said = capsys.readouterr().out  # each method's cost, measured on its first fold, before the others run
    for name in ("oracle", "majority"):
        assert said.count(f"cross-validation of {name}: 3 folds expected to take about ") == 1, said
    assert list(result.summary.columns) == list(gu.CV_COLUMNS)
    assert result.summary["method"].tolist() == ["oracle", "majority"]
    summary = result.summary.set_index("method")
    assert summary.at["oracle", "accuracy_mean"] == 1.0 and summary.at["oracle", "accuracy_se"] == 0.0
    assert summary.at["oracle", "macro_f1"] == 1.0
    per_fold = result.folds[result.folds["method"] == "majority"]
    assert per_fold["clips"].sum() == len(LABELS)
    expected_mean = per_fold["accuracy"].mean()
    assert summary.at["majority", "accuracy_mean"] == pytest.approx(expected_mean)
    assert summary.at["majority", "accuracy_se"] == pytest.approx(per_fold["accuracy"].std() / np.sqrt(3))
    assert summary.at["majority", "accuracy_mean"] < 0.6
    assert (summary["parameters"] == 3).all() and (summary["train_seconds"] == 0.5).all()
    assert result.proba["oracle"].index.equals(LABELS.index.sort_values())  # every clip once
    assert (tmp_path / "oracle" / "repeat-0" / "fold-2" / "proba.csv").is_file() and (tmp_path / "folds.csv").is_file()

    again = gu.cross_validate(
        {"oracle": oracle, "majority": majority}, LABELS, cfg, folds=3, seed=1, out_dir=tmp_path, progress=False
    )
    assert oracle.calls == majority.calls == 3, "finished folds are read back, not rerun"
    pd.testing.assert_frame_equal(again.summary, result.summary)
    majority.settings = {"fake": 2}  # other settings: its folds are rerun
    gu.cross_validate({"majority": majority}, LABELS, cfg, folds=3, seed=1, out_dir=tmp_path, progress=False)
    assert majority.calls == 6


def counted(method):
    """`method` with the same settings, counting its calls in `.calls`."""

    def wrapper(split, run_dir):
        wrapper.calls += 1
        return method(split, run_dir)

    wrapper.calls, wrapper.settings = 0, method.settings
    return wrapper


def separable_statistics(labels: pd.Series, seed: int = 0) -> pd.DataFrame:
    """Clip statistics in which each genre is a tight cluster of its own."""
    rng = np.random.default_rng(seed)
    centres = {"jazz": -2.0, "pop": 0.0, "rock": 2.0}
    return pd.DataFrame(
        rng.normal(size=(len(labels), 4)) * 0.3 + labels.map(centres).to_numpy()[:, None],
        index=labels.index,
        columns=[f"s{k}" for k in range(4)],
    )


def test_a_fold_is_read_back_only_when_its_data_labels_split_and_settings_are_the_same(tmp_path):
    cfg = TINY.replace(genres=("jazz", "pop", "rock"))
    statistics = separable_statistics(LABELS)

    def run(statistics, labels=LABELS, seed=42, **options):
        method = counted(gu.baseline_method(statistics, labels, "logistic", seed))
        result = gu.cross_validate(
            {"logistic": method}, labels, cfg, folds=3, out_dir=tmp_path, progress=False, **options
        )
        return method.calls, result

    calls, first = run(statistics)
    assert calls == 3
    calls, again = run(statistics.copy())
    assert calls == 0, "the same inputs are read back"
    pd.testing.assert_frame_equal(again.summary, first.summary)
    changed = statistics.copy()
    changed.iloc[0, 0] += 1e-9  # one number of one clip: other data
    assert run(changed)[0] == 3, "changing the data reruns"
    assert run(changed, seed=1)[0] == 3, "changing a setting reruns"
    relabelled = LABELS.copy()
    swap = relabelled[relabelled == "rock"].index[:1].append(relabelled[relabelled == "pop"].index[:1])
    relabelled[swap] = relabelled[swap[::-1]].to_numpy()  # one rock clip and one pop clip trade genres
    assert run(changed, relabelled, seed=1)[0] == 3, "changing the labels reruns"
    assert run(changed, relabelled, seed=1, validation=0.2)[0] == 3, "another split of the same folds reruns"


def test_every_method_keys_its_folds_on_its_data():
    statistics = separable_statistics(LABELS)
    other = separable_statistics(LABELS, seed=1)
    cfg = TINY.replace(genres=("jazz", "pop", "rock"))
    pairs = [
        (gu.baseline_method(statistics, LABELS), gu.baseline_method(other, LABELS)),
        (gu.embedding_method(statistics, LABELS, cfg), gu.embedding_method(other, LABELS, cfg)),
        (gu.cnn_method(fake_features(), TINY), gu.cnn_method(fake_features(seed=1), TINY)),
    ]
    for method, on_other_data in pairs:
        assert method.settings["data"] != on_other_data.settings["data"], method.settings["method"]
        assert {**method.settings, "data": None} == {**on_other_data.settings, "data": None}
    assert gu.cnn_method(fake_features(), TINY).settings == pairs[2][0].settings  # same data, same key


def test_an_out_dir_holding_another_datasets_results_is_refused_naming_both(tmp_path):
    cfg = TINY.replace(genres=("jazz", "pop", "rock"), data_root=tmp_path / "set_a")
    method = gu.baseline_method(separable_statistics(LABELS), LABELS, "svm")
    gu.cross_validate({"svm": method}, LABELS, cfg, folds=3, out_dir=tmp_path / "work", progress=False)
    set_b = cfg.replace(data_root=tmp_path / "set_b")
    with pytest.raises(gu.GenreError, match=r"work: holds the cross-validation of another dataset \(.*set_a.*set_b"):
        gu.cross_validate({"svm": method}, LABELS, set_b, folds=3, out_dir=tmp_path / "work", progress=False)
    gu.cross_validate({"svm": method}, LABELS, set_b, folds=3, out_dir=tmp_path / "work-b", progress=False)


def test_repeated_cross_validation_draws_new_folds_and_reports_the_worst_fold(tmp_path):
    cfg = TINY.replace(genres=("jazz", "pop", "rock"))
    majority = Counting(cfg.genres)
    result = gu.cross_validate(
        {"majority": majority}, LABELS, cfg, folds=3, out_dir=tmp_path, progress=False, repeats=2
    )
    assert majority.calls == 6 and len(result.folds) == 6
    assert result.folds[["repeat", "fold"]].values.tolist() == [[r, k] for r in range(2) for k in range(3)]
    pd.testing.assert_frame_equal(result.assignment[0], gu.cross_validation_folds(LABELS, 3, 42), check_names=False)
    pd.testing.assert_frame_equal(result.assignment[1], gu.cross_validation_folds(LABELS, 3, 43), check_names=False)
    assert not result.assignment[0].equals(result.assignment[1])
    row = result.summary.iloc[0]
    assert row["accuracy_min"] == result.folds["accuracy"].min()
    assert row["accuracy_mean"] == pytest.approx(result.folds["accuracy"].mean())
    assert row["accuracy_se"] == pytest.approx(result.folds["accuracy"].std() / np.sqrt(6))
    assert result.proba["majority"].index.equals(LABELS.index.sort_values())  # the first repeat, each clip once
    with pytest.raises(gu.GenreError, match="repeats=0"):
        gu.cross_validate({"majority": majority}, LABELS, cfg, folds=3, out_dir=tmp_path, repeats=0)


def test_a_fold_another_process_is_running_is_left_to_it_then_read_back(tmp_path):
    cfg = TINY.replace(genres=("jazz", "pop", "rock"))
    majority = Counting(cfg.genres)
    ran = []

    def method(split, run_dir):
        ran.append(run_dir.name)
        return majority(split, run_dir)

    method.settings = majority.settings
    busy = tmp_path / "majority" / "repeat-0" / "fold-0.lock"
    busy.parent.mkdir(parents=True)
    finished = []
    with gu._exclusive(busy):  # another process is running fold 0
        worker = threading.Thread(
            target=lambda: finished.append(
                gu.cross_validate({"majority": method}, LABELS, cfg, folds=3, out_dir=tmp_path, progress=False)
            )
        )
        worker.start()
        deadline = time.monotonic() + 60
        while len(ran) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        worker.join(0.5)
        assert ran == ["fold-1", "fold-2"] and worker.is_alive(), "the other folds first, then it waits"
        split = gu.cross_validation_folds(LABELS, 3, 42)[0].rename("split")
        gu._fold_result("majority", majority, split, LABELS, busy.with_suffix(""), cfg)  # the other one finishes
    worker.join(60)
    assert ran == ["fold-1", "fold-2"] and majority.calls == 3, "fold 0 is read back, not run twice"
    assert finished[0].folds["fold"].tolist() == [0, 1, 2]


def test_a_method_that_misses_test_clips_or_genres_is_named(tmp_path):
    cfg = TINY.replace(genres=("jazz", "pop", "rock"))

    def lazy(split, run_dir):
        test = split.index[split == "test"][:-1]
        return gu.MethodResult(pd.DataFrame(1 / 3, index=test, columns=cfg.genres), 0, 0.0)

    with pytest.raises(gu.GenreError, match="method 'lazy': probabilities for"):
        gu.cross_validate({"lazy": lazy}, LABELS, cfg, folds=3, out_dir=tmp_path, progress=False)
    with pytest.raises(gu.GenreError, match=r"genre\(s\) \['jazz'\] not in cfg.genres"):
        gu.cross_validate({"lazy": lazy}, LABELS, TINY.replace(genres=("pop", "rock")), folds=3, out_dir=tmp_path)


def test_baseline_method_fits_the_non_test_clips_and_predicts_the_test_clips(tmp_path):
    rng = np.random.default_rng(0)
    centres = {"jazz": -2.0, "pop": 0.0, "rock": 2.0}
    statistics = pd.DataFrame(
        rng.normal(size=(len(LABELS), 4)) * 0.3 + LABELS.map(centres).to_numpy()[:, None],
        index=LABELS.index,
        columns=[f"s{k}" for k in range(4)],
    )
    cfg = TINY.replace(genres=("jazz", "pop", "rock"))
    methods = {kind: gu.baseline_method(statistics, LABELS, kind) for kind in gu.BASELINE_KINDS}
    result = gu.cross_validate(methods, LABELS, cfg, folds=3, out_dir=tmp_path, progress=False)
    summary = result.summary.set_index("method")
    assert (summary["accuracy_mean"] > 0.9).all()  # well separated clusters
    assert summary.at["logistic", "parameters"] == 3 * 4 + 3
    assert np.allclose(result.proba["logistic"].sum(axis=1), 1.0)
    assert set(np.unique(result.proba["svm"].to_numpy())) == {0.0, 1.0}
    with pytest.raises(gu.ConfigError, match="baseline kind 'tree'"):
        gu.baseline_method(statistics, LABELS, "tree")


def test_folder_genres_are_the_sub_folders_holding_audio(tmp_path):
    for name in ("Rock", "jazz", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "Rock" / "a.mp3").write_bytes(b"x")
    (tmp_path / "jazz" / "b.wav").write_bytes(b"x")
    (tmp_path / "notes" / "readme.txt").write_text("not audio")
    assert gu.folder_genres(tmp_path) == ("Rock", "jazz")
    with pytest.raises(gu.DataError, match="no sub-folder holds"):
        gu.folder_genres(tmp_path / "notes")


# ── The training recipe's pieces ──


def test_spec_augment_masks_stripes_while_training_only():
    layer = gu._spec_augment_class()(time_masks=2, time_mask_frames=5, freq_masks=1, freq_mask_bins=3, seed=1)
    x = np.ones((16, 12, 40, 1), np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    masked = keras.ops.convert_to_numpy(layer(x, training=True))[..., 0] == 0
    assert masked.any() and not masked.all()
    for example in masked:
        frames_masked = example.all(axis=0).sum()  # whole columns (time stripes)
        rows_masked = example.all(axis=1).sum()  # whole rows (frequency stripes)
        assert frames_masked <= 2 * 5 and rows_masked <= 3
        stray = example & ~example.all(axis=0)[None, :] & ~example.all(axis=1)[:, None]
        assert not stray.any(), "masks are whole stripes"


def test_mixup_blends_inputs_and_one_hot_labels_of_a_batch():
    data = fake_features()
    cfg = TINY.replace(mixup_alpha=0.4)
    inner = gu.feature_batches(data, data.rows("training"), cfg)
    batches, _, loss = gu._recipe_batches(inner, None, cfg)
    x, y = batches[0]
    assert y.shape == (8, len(cfg.genres)) and np.allclose(y.sum(axis=1), 1.0)
    assert ((y > 0).sum(axis=1) <= 2).all() and ((y > 0) & (y < 1)).any()
    assert x["mel"].shape == inner[0][0]["mel"].shape
    assert isinstance(loss, keras.losses.CategoricalCrossentropy)
    plain, _, plain_loss = gu._recipe_batches(inner, None, TINY)
    assert plain is inner and plain_loss == "sparse_categorical_crossentropy"


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(lr_schedule="linear"), "lr_schedule 'linear'"),
        (dict(monitor="loss"), "monitor 'loss'"),
        (dict(warmup_epochs=2.0), "warmup_epochs needs"),
    ],
)
def test_bad_recipe_settings_raise_config_error(changes, message):
    with pytest.raises(gu.ConfigError, match=message):
        gu._optimizer(TINY.replace(**changes), 10)


def test_cosine_schedule_warms_up_then_decays_and_weight_decay_uses_adamw():
    cfg = TINY.replace(lr_schedule="cosine", warmup_epochs=2.0, epochs=10, weight_decay=0.01)
    optimizer = gu._optimizer(cfg, steps_per_epoch=5)
    assert isinstance(optimizer, keras.optimizers.AdamW)
    rate = [
        float(optimizer.learning_rate if not callable(optimizer._learning_rate) else optimizer._learning_rate(step))
        for step in (0, 5, 10, 30, 50)
    ]
    assert rate[0] < rate[1] < rate[2] == pytest.approx(cfg.learning_rate)
    assert rate[2] > rate[3] > rate[4] >= 0


def test_the_seed_preset_stays_the_reports_recipe():
    seed = gu.get_config("seed")
    assert (
        seed.mixup_alpha,
        seed.time_masks,
        seed.freq_masks,
        seed.gain_db,
        seed.label_smoothing,
        seed.weight_decay,
        seed.warmup_epochs,
        seed.early_stopping,
    ) == (0, 0, 0, 0, 0, 0, 0, 0)
    assert (seed.lr_schedule, seed.monitor, seed.train_mode) == ("step", "val_accuracy", "full")
    recipe = gu.get_config("recipe")
    features = {name: getattr(recipe, name) for name in gu.FEATURE_SETTINGS}
    assert features == {name: getattr(gu.get_config("demo"), name) for name in gu.FEATURE_SETTINGS}
    assert all(getattr(recipe, name) == value for name, value in gu.RECIPE_SETTINGS.items())


def test_a_cnn_method_trains_one_fold_with_the_recipe_and_its_model_reloads(tmp_path):
    data = fake_features(n_train=24, n_val=8)
    labels = data.index["genre"]
    cfg = TINY.replace(
        **{
            **gu.RECIPE_SETTINGS,
            "epochs": 1,
            "chunk_seconds": 0.5,
            "time_mask_frames": 4,
            "freq_mask_bins": 2,
            "gain_db": 3.0,
            "warmup_epochs": 0.5,
            "branches": ("mel_vertical", "cqt"),  # both inputs, fewer layers to compile
        }
    )
    method = gu.cnn_method(data, cfg)
    assignment = gu.cross_validation_folds(labels, folds=4, seed=0)
    split = assignment[0]
    result = method(split, tmp_path)
    test_ids = split.index[split == "test"]
    assert sorted(result.proba.index) == sorted(test_ids) and list(result.proba.columns) == list(cfg.genres)
    assert np.allclose(result.proba.sum(axis=1), 1.0, atol=1e-5)
    model = gu.load_model(tmp_path / "best.keras")
    assert model.count_params() == result.parameters
    assert {"mel_spec_augment", "cqt_spec_augment"} <= {layer.name for layer in model.layers}
    history = pd.read_csv(tmp_path / "history.csv")
    assert len(history) == 1 and np.isfinite(history["val_loss"]).all()
    training = data.mel[np.flatnonzero(split.reindex(data.index.index).to_numpy() == "training")]
    mean = keras.ops.convert_to_numpy(model.get_layer("mel_normalization").mean).reshape(-1)
    np.testing.assert_allclose(mean, training.astype(np.float64).mean(axis=(0, 2)), rtol=1e-3, atol=1e-3)
    assert json.loads((tmp_path / "config.json").read_text())["mixup_alpha"] == cfg.mixup_alpha


def test_cross_validation_plot_has_a_bar_per_method_best_on_top_a_dot_per_fold_and_the_baseline_line():
    import matplotlib.pyplot as plt

    summary = pd.DataFrame({"method": ["svm", "cnn"], "accuracy_mean": [0.6, 0.7], "accuracy_se": [0.02, 0.03]})
    per_fold = pd.DataFrame({"method": ["svm"] * 3 + ["cnn"] * 3, "accuracy": [0.58, 0.6, 0.62, 0.65, 0.7, 0.75]})
    fig = gu.plot_cross_validation(summary, per_fold, baseline="svm", labels={"cnn": "the CNN"}, chance=0.25)
    ax = fig.axes[0]
    assert [label.get_text() for label in ax.get_yticklabels()] == ["the CNN", "svm"]  # best first ...
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # ... on top
    # the axis spans chance and the folds with at least 0.05 to spare, on tenths, and says where it starts
    assert ax.get_xlim() == pytest.approx((0.2, 0.8)) and "starts at 0.2" in ax.get_xlabel()
    assert [patch.get_x() for patch in ax.patches] == pytest.approx([0.2, 0.2])  # bars start with the axis
    assert [patch.get_width() for patch in ax.patches] == pytest.approx([0.5, 0.4])
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    assert sorted(x for line in dots for x in line.get_xdata()) == pytest.approx(sorted(per_fold["accuracy"]))
    lines = {line.get_label(): (line.get_linestyle(), line.get_xdata()[0]) for line in ax.lines}
    assert lines["svm: 0.600"] == (":", pytest.approx(0.6)) and lines["chance: 0.250"] == ("--", pytest.approx(0.25))
    error_bars = ax.containers[-1]  # errorbar: whiskers of ± one standard error around each mean
    np.testing.assert_allclose(error_bars.lines[2][0].get_segments(), [[[0.67, 0], [0.73, 0]], [[0.58, 1], [0.62, 1]]])
    assert [text.get_text() for text in ax.texts] == ["0.700 ± 0.030", "0.600 ± 0.020"]
    plt.close(fig)
    fig = gu.plot_cross_validation(summary.assign(accuracy_min=[0.58, 0.65]), per_fold)
    assert [text.get_text() for text in fig.axes[0].texts] == [
        "0.700 ± 0.030\nworst fold 0.650",
        "0.600 ± 0.020\nworst fold 0.580",
    ]
    plt.close(fig)
    with pytest.raises(gu.GenreError, match="accuracy_se"):
        gu.plot_cross_validation(summary.drop(columns="accuracy_se"))
