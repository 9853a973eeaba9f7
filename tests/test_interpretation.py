"""Interpretation: Grad-CAM, occlusion, the CNN's features, embedding maps and neighbour purity.

A hand-built network with `build_model`'s layer names, whose weights are known, hears its class in one
mel band, one CQT octave and one second of the clip only: every method must point there.
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import genre_utils as gu
from conftest import TINY

keras = gu.import_keras()

# Two genres; a 3 s clip (130 frames, seconds 0-1, 1-2, 2-3); 16 mel bins (8 bands of 2); CQT of 3 octaves
TOY = TINY.replace(genres=("Rock", "Pop"), cqt_bins=36, clip_seconds=3.0)
MEL_SIGNAL = (10, 12)  # mel bins of the band "Pop" clips are loud in (the 6th of MEL_BANDS)
CQT_SIGNAL = (24, 36)  # CQT bins of their loud octave (C3-B3)
SECOND = 1  # ... during this second only
FRAMES = (43, 86)  # that second's frames (occlusion_regions' "1-2 s")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def toy_features(n: int = 16, seed: int = 0) -> gu.Features:
    """-40 dB noise (1 dB); the "Pop" clips (odd rows) 8 dB louder in MEL_SIGNAL and CQT_SIGNAL bins during FRAMES."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    index = pd.DataFrame(
        {"genre": [TOY.genres[i] for i in labels], "split": "validation", "label": labels},
        index=pd.Index(np.arange(200, 200 + n), name="track_id"),
    )
    mel = rng.normal(-40, 1, (n, TOY.n_mels, TOY.n_frames))
    cqt = rng.normal(-40, 1, (n, TOY.cqt_bins, TOY.n_frames))
    mel[labels == 1, slice(*MEL_SIGNAL), slice(*FRAMES)] += 8
    cqt[labels == 1, slice(*CQT_SIGNAL), slice(*FRAMES)] += 8
    return gu.Features(index, mel.astype(np.float16), cqt.astype(np.float16))


def toy_model(data: gu.Features):
    """Branches mel_vertical and cqt of two blocks each (1x1 convolution, ReLU, batch norm, a 2x2 pool
    after the first), named as `build_model` names them, on inputs normalised to the -40 dB background.
    The first convolution passes only what stands 3 standard deviations above it; the Pop logit adds the
    two branches' mean activations, each scaled so that the Pop clips' weighs 1, the Rock logit is its
    opposite. So the network hears Pop in the loud band, octave and second, and needs both inputs."""
    layers = keras.layers
    inputs, pooled = {}, []
    for name, branch, height in (("mel", "mel_vertical", TOY.n_mels), ("cqt", "cqt", TOY.cqt_bins)):
        inputs[name] = keras.Input((height, None, 1), name=name, dtype="float16")
        x = layers.Normalization(axis=1, dtype="float32", name=f"{name}_normalization")(inputs[name])
        for b in (1, 2):
            x = layers.Conv2D(1, 1, name=f"{branch}_block{b}_conv")(x)
            x = layers.ReLU(name=f"{branch}_block{b}_relu")(x)
            x = layers.BatchNormalization(name=f"{branch}_block{b}_bn")(x)
            if b == 1:
                x = layers.MaxPooling2D(2, padding="same", name=f"{branch}_block{b}_pool")(x)
        pooled.append(layers.GlobalAveragePooling2D(name=f"{branch}_global_pool")(x))
    x = layers.Concatenate(name="concat")(pooled)
    outputs = layers.Dense(2, activation="softmax", name="genre")(x)
    model = keras.Model(inputs, outputs, name="toy")
    for name, height in (("mel", TOY.n_mels), ("cqt", TOY.cqt_bins)):
        layer = model.get_layer(f"{name}_normalization")
        layer.adapt_mean.assign(np.full(height, -40.0))
        layer.adapt_variance.assign(np.ones(height))
        layer.finalize_state()
    for branch in ("mel_vertical", "cqt"):
        for b, bias in ((1, -3.0), (2, 0.0)):
            model.get_layer(f"{branch}_block{b}_conv").set_weights([np.ones((1, 1, 1, 1)), np.array([bias])])
    pop = np.flatnonzero(data.index["label"].to_numpy() == 1)
    x = {name: getattr(data, name)[pop][..., None] for name in ("mel", "cqt")}
    evidence = keras.ops.convert_to_numpy(keras.Model(model.inputs, model.get_layer("concat").output)(x)).mean(axis=0)
    scale = 2.0 / evidence  # Pop logit 2 x (mel + cqt evidence, 1 each on Pop clips) - 2.9: p(Pop) 0.9, 0.14 with one
    model.get_layer("genre").set_weights([np.stack([-scale, scale], axis=1), np.array([2.9, -2.9])])
    return model


@pytest.fixture(scope="module")
def toy():
    data = toy_features()
    return toy_model(data), data


@pytest.fixture(scope="module")
def pop_rows(toy):
    _, data = toy
    return np.flatnonzero(data.index["label"].to_numpy() == 1)


@pytest.fixture(scope="module")
def maps(toy, pop_rows):
    model, data = toy
    return gu.grad_cam(model, data, pop_rows, TOY)


def test_the_toy_network_hears_pop_in_its_loud_clips(toy):
    model, data = toy
    proba = gu.predict_proba(model, data, np.arange(len(data.index)), TOY)
    assert (proba.argmax(axis=1) == data.index["label"].to_numpy()).all()


def test_grad_cam_looks_at_the_relu_of_each_branchs_last_block(toy):
    model, _ = toy
    assert [gu.last_block(model, b) for b in ("mel_vertical", "cqt")] == ["mel_vertical_block2_relu", "cqt_block2_relu"]
    assert gu.last_block(gu.build_model(TINY), "mel_horizontal") == "mel_horizontal_block7_relu"


def test_saliency_maps_have_the_inputs_shape_and_are_finite_and_non_negative(toy, pop_rows, maps):
    assert sorted(maps) == ["cqt", "mel_vertical"]
    assert maps["mel_vertical"].shape == (len(pop_rows), TOY.n_mels, TOY.n_frames)
    assert maps["cqt"].shape == (len(pop_rows), TOY.cqt_bins, TOY.n_frames)
    for m in maps.values():
        assert m.dtype == np.float32 and np.isfinite(m).all() and (m >= 0).all() and m.max() > 0


def test_grad_cam_points_at_the_band_the_octave_and_the_second_that_carry_the_class(maps):
    mel = gu.region_saliency(maps, TOY, "mel")
    cqt = gu.region_saliency(maps, TOY, "cqt")
    time = gu.region_saliency(maps, TOY, "time")
    mel_regions = gu.occlusion_regions(TOY, "mel")
    assert (mel.idxmax(axis=1) == mel_regions.index[mel_regions["start"] == MEL_SIGNAL[0]][0]).all()
    assert (cqt.idxmax(axis=1) == "C3-B3").all()
    assert (time.idxmax(axis=1) == "1-2 s").all()


def test_a_map_points_where_the_signal_is_within_one_cell_of_the_last_block(maps):
    # the last block's cells are 2 x 2 (one pool): the map peaks within a cell of the loud bins and frames
    peak_bin, peak_frame = np.unravel_index(maps["cqt"].mean(axis=0).argmax(), maps["cqt"].shape[1:])
    assert CQT_SIGNAL[0] - 2 <= peak_bin < CQT_SIGNAL[1] + 2 and FRAMES[0] - 2 <= peak_frame < FRAMES[1] + 2


def test_the_map_of_the_other_class_is_empty_where_the_network_has_no_evidence_for_it(toy, pop_rows):
    model, data = toy
    rock = gu.grad_cam(model, data, pop_rows, TOY, classes=np.zeros(len(pop_rows), dtype=int))
    assert all(m.max() == 0 for m in rock.values())  # every activation argues against Rock: ReLU leaves 0


def test_occlusion_of_the_signal_region_lowers_the_true_class_most(toy, pop_rows):
    model, data = toy
    proba = gu.predict_proba(model, data, pop_rows, TOY)[:, 1]
    for kind, signal in (("mel", gu.occlusion_regions(TOY, "mel").index[5]), ("cqt", "C3-B3"), ("time", "1-2 s")):
        drops = gu.occlusion(model, data, pop_rows, TOY, kind)
        assert list(drops.index) == list(data.index.index[pop_rows])
        assert list(drops.columns) == list(gu.occlusion_regions(TOY, kind).index)
        assert (drops.idxmax(axis=1) == signal).all(), kind
        assert (drops[signal] > 0.05).all() and drops.abs().to_numpy().max() <= 1
        np.testing.assert_allclose(drops.attrs["probability"], proba, atol=1e-6)


def test_masking_the_most_salient_band_lowers_the_probability_more_than_the_least_salient(toy, pop_rows, maps):
    model, data = toy
    for kind in gu.OCCLUSION_KINDS:
        drops = gu.occlusion(model, data, pop_rows, TOY, kind).to_numpy()
        saliency = gu.region_saliency(maps, TOY, kind).to_numpy()
        clips = np.arange(len(drops))
        most, least = drops[clips, saliency.argmax(axis=1)], drops[clips, saliency.argmin(axis=1)]
        assert most.mean() > least.mean() + 0.05, kind


def test_occlusion_masks_with_the_training_mean_so_a_clip_of_means_is_unchanged(toy):
    model, data = toy
    mean_clip = gu.Features(
        data.index.iloc[:1], np.full((1, 16, 130), -40.0, np.float16), np.full((1, 36, 130), -40.0, np.float16)
    )
    for kind in gu.OCCLUSION_KINDS:
        np.testing.assert_allclose(gu.occlusion(model, mean_clip, [0], TOY, kind).to_numpy(), 0, atol=1e-6)


def test_saliency_profile_says_where_each_branch_listens(maps):
    profile = gu.saliency_profile(maps, TOY)
    assert list(profile.index) == ["mel_vertical", "cqt"] and list(profile["input"]) == ["mel", "cqt"]
    assert np.isclose(profile["share"].sum(), 1) and profile["share"].between(0, 1).all()
    assert profile.at["cqt", "top band"] == "C3-B3"
    assert (profile["top band share"] > 1 / 3).all() and (profile["top second share"] > 1 / 3).all()
    flat = gu.saliency_profile({"mel_horizontal": np.broadcast_to(maps["mel_vertical"][:, :1], (8, 16, 130))}, TOY)
    assert flat.at["mel_horizontal", "top band"] == "none (flat)" and np.isclose(flat["top band share"].iloc[0], 1 / 8)


def test_occlusion_regions_tile_each_axis_in_order():
    for cfg in (TOY, gu.get_config("demo"), gu.get_config("seed")):
        sizes = {"mel": cfg.n_mels, "cqt": cfg.cqt_bins, "time": cfg.n_frames}
        for kind, size in sizes.items():
            regions = gu.occlusion_regions(cfg, kind)
            assert regions["start"].iloc[0] == 0 and regions["stop"].iloc[-1] == size
            assert (regions["start"].iloc[1:].to_numpy() == regions["stop"].iloc[:-1].to_numpy()).all()
            assert (regions["stop"] > regions["start"]).all() and (regions["high"] > regions["low"]).all()
            assert regions.index.is_unique
    assert len(gu.occlusion_regions(gu.get_config("demo"), "mel")) == gu.MEL_BANDS
    assert gu.occlusion_regions(gu.get_config("demo"), "time").index[-1] == "9-10 s"
    assert gu.occlusion_regions(TINY, "time").index.tolist() == ["0-1 s", "1-1.5 s"]


def test_grad_cam_and_features_of_the_three_branch_network_have_the_right_shapes():
    from test_training import fake_features

    model, data = gu.build_model(TINY), fake_features()
    rows = data.rows("validation")
    maps = gu.grad_cam(model, data, rows, TINY)
    assert list(maps) == list(gu.BRANCHES)
    for branch, m in maps.items():
        height = TINY.n_mels if gu.BRANCH_INPUTS[branch] == "mel" else TINY.cqt_bins
        assert m.shape == (len(rows), height, TINY.n_frames) and np.isfinite(m).all() and (m >= 0).all()
    features = gu.cnn_features(model, data, rows, TINY)
    channels = [model.get_layer(f"{b}_global_pool").output.shape[-1] for b in gu.BRANCHES]
    assert features.shape == (len(rows), sum(channels)) and np.isfinite(features.to_numpy()).all()
    assert list(features.index) == list(data.index.index[rows]) and features.columns[0] == "mel_vertical_000"
    concat = keras.Model(model.inputs, model.get_layer("concat").output)
    x = {name: getattr(data, name)[rows][..., None] for name in ("mel", "cqt")}
    np.testing.assert_allclose(features.to_numpy(), keras.ops.convert_to_numpy(concat(x)), rtol=1e-5, atol=1e-6)


def test_bad_requests_name_the_problem(toy, pop_rows):
    model, data = toy
    with pytest.raises(gu.ConfigError, match="no branch 'mel_horizontal'; it has mel_vertical, cqt"):
        gu.grad_cam(model, data, pop_rows, TOY, branches=["mel_horizontal"])
    with pytest.raises(gu.GenreError, match=r"classes must lie in 0\.\.1"):
        gu.grad_cam(model, data, pop_rows, TOY, classes=np.full(len(pop_rows), 2))
    with pytest.raises(gu.GenreError, match="one integer per row"):
        gu.grad_cam(model, data, pop_rows, TOY, classes=[0])
    with pytest.raises(gu.ConfigError, match="occlusion kind 'octave': choose one of mel, cqt, time"):
        gu.occlusion(model, data, pop_rows, TOY, "octave")
    cqt_only = keras.Model(model.get_layer("cqt").output, model.get_layer("cqt_global_pool").output)
    with pytest.raises(gu.ConfigError, match="no 'mel' input to occlude"):
        gu.occlusion(cqt_only, data, pop_rows, TOY, "mel")
    with pytest.raises(gu.ConfigError, match="no map of a branch reading the 'mel' input"):
        gu.region_saliency({"cqt": np.zeros((1, 36, 130))}, TOY, "mel")


def test_neighbour_purity_is_one_for_separate_clusters_and_near_chance_for_random_genres():
    rng = np.random.default_rng(0)
    genres = pd.Series(np.repeat(["Rock", "Pop", "Folk"], 20), index=np.arange(60))
    centres = {"Rock": 0.0, "Pop": 10.0, "Folk": 20.0}
    clustered = pd.DataFrame(rng.normal(size=(60, 5)) + genres.map(centres).to_numpy()[:, None])
    purity = gu.neighbour_purity(clustered, genres, k=10)
    assert (purity["purity"] == 1).all() and np.allclose(purity["chance"], 19 / 59)
    assert list(purity["genre"]) == list(genres) and purity.attrs["k"] == 10
    noise = gu.neighbour_purity(pd.DataFrame(rng.normal(size=(60, 5))), genres, k=10)
    assert noise["purity"].between(0, 1).all() and abs(noise["purity"].mean() - 19 / 59) < 0.15
    with pytest.raises(gu.GenreError, match="k=60 neighbours; need 1 <= k < the 60 clips"):
        gu.neighbour_purity(clustered, genres, k=60)
    with pytest.raises(gu.GenreError, match="one genre per clip"):
        gu.neighbour_purity(clustered, genres.iloc[:10].to_list(), k=5)


def test_an_embedding_map_is_two_dimensional_reproducible_and_keeps_clusters_apart():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 15)
    table = pd.DataFrame(rng.normal(size=(30, 8)) + 8 * labels[:, None], index=np.arange(300, 330))
    first, second = gu.embedding_map(table, seed=3), gu.embedding_map(table, seed=3)
    assert list(first.columns) == ["x", "y"] and list(first.index) == list(table.index)
    pd.testing.assert_frame_equal(first, second)
    assert (gu.neighbour_purity(first, labels, k=5)["purity"] == 1).all()
    with pytest.raises(gu.GenreError, match="at least 2 clips"):
        gu.embedding_map(table.iloc[:1])


def test_the_figures_have_a_panel_per_branch_region_kind_and_map(toy, pop_rows, maps):
    model, data = toy
    fig = gu.plot_saliency(data, pop_rows[:2], {b: m[:2] for b, m in maps.items()}, TOY)
    assert [ax.get_title() for ax in fig.axes] == ["mel_vertical", "cqt", "", ""]  # a branch a column
    assert [row._suptitle.get_text() for row in fig.subfigs] == ["Pop", "Pop"]  # a clip a row
    drops = gu.occlusion(model, data, pop_rows, TOY, "cqt").groupby(data.index["genre"].iloc[pop_rows]).mean()
    fig = gu.plot_occlusion({"CQT octaves": drops, "again": drops})
    assert [ax.get_title() for ax in fig.axes[:2]] == ["CQT octaves", "again"]
    rng = np.random.default_rng(0)
    points = pd.DataFrame(rng.normal(size=(16, 2)), index=data.index.index, columns=["x", "y"])
    wrong = pd.Series(np.arange(16) < 3, index=data.index.index)
    fig = gu.plot_embedding_maps({"a": points, "b": points}, data.index["genre"], wrong, notes={"a": "purity 0.5"})
    assert [ax.get_title() for ax in fig.axes] == ["a: purity 0.5", "b"]
    purity = gu.neighbour_purity(points, data.index["genre"], k=3)
    fig = gu.plot_neighbour_purity({"a": purity, "b": purity})
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["Pop", "Rock", "all clips"]  # in GENRES order
    with pytest.raises(gu.GenreError, match="at least one table"):
        gu.plot_occlusion({})
