"""The report's three-branch CNN: block counts and order, filter shapes, initialisers, output."""

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import genre_utils as gu
from conftest import TINY


@pytest.fixture(scope="module")
def model():
    return gu.build_model(TINY)


def _layers(model, branch, kind):
    return [layer for layer in model.layers if layer.name.startswith(branch + "_") and layer.name.endswith(kind)]


@pytest.mark.parametrize("branch, convs, pools", [("mel_vertical", 4, 3), ("mel_horizontal", 7, 6), ("cqt", 7, 6)])
def test_each_branch_has_the_reports_conv_and_pool_counts(model, branch, convs, pools):
    assert all(isinstance(layer, keras.layers.Conv2D) for layer in _layers(model, branch, "_conv"))
    assert len(_layers(model, branch, "_conv")) == convs
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in _layers(model, branch, "_pool")) == pools
    assert not any(layer.name == f"{branch}_block{convs}_pool" for layer in model.layers)  # last block unpooled


def test_every_block_is_conv_relu_batchnorm_pool_in_that_order(model):
    for conv in [layer for layer in model.layers if layer.name.endswith("_conv")]:
        prefix = conv.name.removesuffix("_conv")
        relu, bn = model.get_layer(f"{prefix}_relu"), model.get_layer(f"{prefix}_bn")
        assert isinstance(relu, keras.layers.ReLU) and isinstance(bn, keras.layers.BatchNormalization)
        assert conv.activation is keras.activations.linear
        assert relu.input is conv.output and bn.input is relu.output
        pools = [layer for layer in model.layers if layer.name == f"{prefix}_pool"]
        if pools:
            assert isinstance(pools[0], keras.layers.MaxPooling2D) and pools[0].input is bn.output


def test_filter_shapes_are_vertical_horizontal_and_square():
    model = gu.build_model(gu.get_config("seed"))
    vertical = [layer.kernel_size for layer in _layers(model, "mel_vertical", "_conv")]
    horizontal = [layer.kernel_size for layer in _layers(model, "mel_horizontal", "_conv")]
    assert all(h > w for h, w in vertical[:3]) and vertical[0][0] >= 0.3 * 128
    assert all(h == 1 and w >= 8 for h, w in horizontal)
    assert all(layer.kernel_size == (3, 3) for layer in _layers(model, "cqt", "_conv"))
    widths = [layer.filters for layer in _layers(model, "cqt", "_conv")]
    assert widths[0] == 32 and widths == sorted(widths) and max(widths) == 8 * 32


def test_kernel_shapes_default_to_the_reports_and_follow_the_config():
    cfg = gu.get_config("seed")
    assert (cfg.vertical_kernel_share, cfg.vertical_kernel_frames) == (0.4, 3)
    assert cfg.horizontal_kernel_frames == (32, 16, 8) and cfg.cqt_kernel == (3, 3)
    shapes = {b: [kernel for _, kernel, _ in gu.branch_blocks(b, 128, cfg)] for b in gu.BRANCHES}
    assert shapes["mel_vertical"][:2] == [(51, 3), (13, 3)]  # 40 % of 128 bands, then of 32 after the (4, 2) pool
    assert shapes["mel_horizontal"] == [(1, 32), (1, 16)] + [(1, 8)] * 5 and shapes["cqt"] == [(3, 3)] * 7
    ablation = TINY.replace(
        vertical_kernel_share=0.5, vertical_kernel_frames=5, horizontal_kernel_frames=(4,), cqt_kernel=(5, 1)
    )
    model = gu.build_model(ablation)
    assert model.get_layer("mel_vertical_block1_conv").kernel_size == (8, 5)  # half of TINY's 16 bands
    assert {layer.kernel_size for layer in _layers(model, "mel_horizontal", "_conv")} == {(1, 4)}
    assert {layer.kernel_size for layer in _layers(model, "cqt", "_conv")} == {(5, 1)}
    assert model.get_layer("cqt_block1_conv").filters == ablation.first_block_channels == 2


def test_hidden_layers_use_he_initialisation_and_the_configs_dropout(model):
    hidden = [layer for layer in model.layers if layer.name.endswith("_conv")] + [model.get_layer("dense")]
    assert all(isinstance(layer.kernel_initializer, keras.initializers.HeNormal) for layer in hidden)
    assert model.get_layer("dropout").rate == TINY.dropout == 0.5


@pytest.mark.parametrize("frames", [1, 37, TINY.n_frames, 130])
def test_output_is_a_distribution_over_the_genres_for_any_input_length(model, frames):
    rng = np.random.default_rng(0)
    x = {"mel": rng.normal(size=(3, TINY.n_mels, frames, 1)), "cqt": rng.normal(size=(3, TINY.cqt_bins, frames, 1))}
    probabilities = keras.ops.convert_to_numpy(model(x, training=False))
    assert probabilities.shape == (3, len(TINY.genres)) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (probabilities > 0).all()


@pytest.mark.parametrize(
    "branches, inputs",
    [
        (("mel_vertical",), ["mel"]),
        (("cqt",), ["cqt"]),
        (("mel_vertical", "mel_horizontal"), ["mel"]),
        (("mel_horizontal", "cqt"), ["cqt", "mel"]),
    ],
)
def test_branch_subsets_create_only_the_inputs_they_need(branches, inputs):
    model = gu.build_model(TINY, branches)
    assert sorted(t.name for t in model.inputs) == inputs
    assert {name.split("_block")[0] for name in (layer.name for layer in model.layers) if "_block" in name} == set(
        branches
    )
    per_branch = gu.branch_parameters(model).drop(["normalization", "head", "total"])
    assert per_branch.index.tolist() == [b for b in gu.BRANCHES if b in branches]


@pytest.mark.parametrize("branches", [(), ("mel",), ("cqt", "cqt")])
def test_bad_branch_lists_raise_config_error(branches):
    with pytest.raises(gu.ConfigError, match="branches"):
        gu.build_model(TINY, branches)


@pytest.mark.parametrize("profile", ["seed", "demo"])
def test_model_table_lists_every_block_and_pooling_fits_the_preset_input(profile):
    cfg = gu.get_config(profile)
    model = gu.build_model(cfg)
    table = gu.model_table(model, cfg.n_frames)
    assert table.groupby("branch", sort=False).size().to_dict() == {"mel_vertical": 4, "mel_horizontal": 7, "cqt": 7}
    assert all(min(shape) >= 1 for shape in table["output shape"])
    parameters = gu.branch_parameters(model)
    assert parameters["total"] == model.count_params() == parameters.drop("total").sum()
    assert table["parameters"].sum() + parameters["head"] + parameters["normalization"] == model.count_params()
    # each input's Normalization layer holds a mean and a variance per band, and a count
    assert parameters["normalization"] == 2 * (cfg.n_mels + cfg.cqt_bins) + 2


def test_importing_genre_utils_does_not_import_keras_or_matplotlib():
    code = "import sys, genre_utils; print([m for m in ('keras', 'tensorflow', 'matplotlib') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(gu.__file__).parent, capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
