"""Scores, confusion matrices, per-clip predictions and the comparison with the report."""

import numpy as np
import pandas as pd
import pytest

import genre_utils as gu

GENRES = ("Rock", "Pop", "Folk")


def one_hot(predicted, n_classes=3, confidence=0.8):
    """Probabilities whose arg-max is `predicted`, with the given top probability."""
    proba = np.full((len(predicted), n_classes), (1 - confidence) / (n_classes - 1))
    proba[np.arange(len(predicted)), predicted] = confidence
    return proba


# true:      Rock Rock Rock Rock Pop Pop Folk Folk
# predicted: Rock Rock Rock Pop  Pop Folk Folk Folk
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 0, 0, 1, 1, 2, 2, 2])


def test_scores_match_hand_checked_predictions():
    scores = gu.classification_scores(Y_TRUE, one_hot(Y_PRED), GENRES)

    assert scores.accuracy == pytest.approx(6 / 8)
    assert scores.n_clips == 8
    expected_counts = [[3, 1, 0], [0, 1, 1], [0, 0, 2]]
    np.testing.assert_array_equal(scores.confusion.to_numpy(), expected_counts)
    assert list(scores.confusion.index) == list(GENRES) and list(scores.confusion.columns) == list(GENRES)
    np.testing.assert_allclose(scores.confusion_normalized.to_numpy(), [[0.75, 0.25, 0], [0, 0.5, 0.5], [0, 0, 1]])

    per_genre = scores.per_genre
    np.testing.assert_allclose(per_genre["recall"], [3 / 4, 1 / 2, 2 / 2])
    np.testing.assert_allclose(per_genre["precision"], [3 / 3, 1 / 2, 2 / 3])
    np.testing.assert_allclose(per_genre.loc["Folk", "f1"], 2 * (2 / 3 * 1) / (2 / 3 + 1))
    np.testing.assert_array_equal(per_genre["support"], [4, 2, 2])
    assert scores.macro_f1 == pytest.approx(per_genre["f1"].mean())


def test_genre_without_clips_gets_zero_scores_not_nan():
    scores = gu.classification_scores(np.array([0, 0, 1]), one_hot(np.array([0, 1, 1])), GENRES)
    assert scores.per_genre.loc["Folk"].tolist() == [0, 0, 0, 0]
    assert scores.confusion_normalized.loc["Folk"].tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("y_true", "proba", "message"),
    [
        (np.array([0, 1]), np.ones((2, 4)) / 4, "expected \\(n_clips, 3\\)"),
        (np.array([0, 1, 2]), np.ones((2, 3)) / 3, "one label per row"),
        (np.array([0, 3]), np.ones((2, 3)) / 3, "labels must be integers in 0..2"),
        (np.array([0.0, 1.0]), np.ones((2, 3)) / 3, "labels must be integers"),
        (np.array([0, 1]), np.array([[np.nan, 0, 1], [0, 1, 0]]), "NaN"),
        (np.array([], dtype=int), np.ones((0, 3)), "no clips"),
    ],
)
def test_bad_inputs_raise_genre_error(y_true, proba, message):
    with pytest.raises(gu.GenreError, match=message):
        gu.classification_scores(y_true, proba, GENRES)


def test_most_confused_pairs_ranks_directed_mistakes():
    confusion = pd.DataFrame([[5, 3, 1], [0, 4, 2], [2, 0, 6]], index=list(GENRES), columns=list(GENRES))
    pairs = gu.most_confused_pairs(confusion, k=3)

    assert list(pairs.columns) == ["true", "predicted", "clips", "share"]
    assert list(zip(pairs["true"], pairs["predicted"])) == [("Rock", "Pop"), ("Pop", "Folk"), ("Folk", "Rock")]
    assert pairs["clips"].tolist() == [3, 2, 2]
    np.testing.assert_allclose(pairs["share"], [3 / 9, 2 / 6, 2 / 8])
    assert len(gu.most_confused_pairs(confusion, k=10)) == 4  # zero cells and the diagonal are not mistakes


def test_most_confused_pairs_accepts_arrays_and_checks_shape():
    perfect = gu.most_confused_pairs(np.eye(3, dtype=int) * 4, GENRES)
    assert perfect.empty
    with pytest.raises(gu.GenreError, match="needs `genres`"):
        gu.most_confused_pairs(np.eye(3))
    with pytest.raises(gu.GenreError, match="expected \\(3, 3\\)"):
        gu.most_confused_pairs(np.eye(4), GENRES)


def make_features(splits):
    """A Features container with one clip per entry of `splits`, labels cycling through GENRES."""
    n = len(splits)
    labels = np.arange(n) % len(GENRES)
    index = pd.DataFrame(
        {"genre": np.asarray(GENRES)[labels], "split": splits, "label": labels},
        index=pd.Index(100 + np.arange(n), name="track_id"),
    )
    return gu.Features(index=index, mel=np.zeros((n, 4, 5), np.float16), cqt=np.zeros((n, 3, 5), np.float16), stats={})


def test_evaluate_scores_one_split_and_lists_each_clip(monkeypatch):
    features = make_features(["training"] * 3 + ["validation"] * 6 + ["test"] * 3)
    cfg = gu.get_config("demo", genres=GENRES)
    calls = []

    def fake_predict_proba(model, data, rows, cfg):
        calls.append(rows.copy())
        labels = data.index["label"].to_numpy()[rows]
        predicted = np.where(np.arange(len(rows)) == 0, (labels + 1) % 3, labels)  # first clip wrong
        return one_hot(predicted, confidence=0.9)

    monkeypatch.setattr(gu, "predict_proba", fake_predict_proba, raising=False)
    scores = gu.evaluate(model=None, features=features, cfg=cfg, split="validation")

    np.testing.assert_array_equal(calls[0], np.arange(3, 9))
    assert scores.accuracy == pytest.approx(5 / 6)
    predictions = scores.predictions
    assert list(predictions.columns) == ["track_id", "genre", "predicted", "confidence", "correct"]
    assert predictions["track_id"].tolist() == list(range(103, 109))
    assert predictions.loc[0, ["genre", "predicted"]].tolist() == ["Rock", "Pop"]
    assert predictions["correct"].tolist() == [False] + [True] * 5
    np.testing.assert_allclose(predictions["confidence"], 0.9)
    assert scores.accuracy == pytest.approx(predictions["correct"].mean())


def test_evaluate_rejects_unknown_and_empty_splits(monkeypatch):
    features = make_features(["training", "validation"])
    cfg = gu.get_config("demo", genres=GENRES)
    monkeypatch.setattr(gu, "predict_proba", lambda *args: pytest.fail("must not predict"), raising=False)
    with pytest.raises(gu.GenreError, match="unknown split 'valid'"):
        gu.evaluate(None, features, cfg, split="valid")
    with pytest.raises(gu.DataError, match="no clips in the 'test' split"):
        gu.evaluate(None, features, cfg, split="test")


def test_comparison_table_says_which_data_was_used(tmp_path):
    scores = gu.classification_scores(Y_TRUE, one_hot(Y_PRED), GENRES)
    demo = gu.get_config("demo")
    table = gu.compare_with_report({"validation": scores, "test": scores}, demo, "demo-full")

    assert table.loc["report (validation)", "accuracy"] == gu.REPORT_VAL_ACCURACY == 0.555
    assert table.loc["demo-full (test)", ["split", "clips", "accuracy"]].tolist() == ["test", 8, 0.75]
    assert "not FMA" in table.loc["demo-full (validation)", "dataset"]

    (tmp_path / "fma_metadata").mkdir()
    assert gu.describe_dataset(gu.get_config("seed", data_root=tmp_path)).startswith("FMA-small")
    assert "folder-per-genre" in gu.describe_dataset(gu.get_config("seed", data_root=tmp_path / "fma_metadata"))
