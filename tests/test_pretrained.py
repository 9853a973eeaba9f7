"""The pretrained musicnn networks: the Keras 3 port against the original's outputs, its features, the
embeddings cache, and classifiers on top as cross-validation methods and predict runs.

The references (tests/fixtures/musicnn_reference.npz for the MSD network, mtt_musicnn_reference.npz for
the MagnaTagATune one) were computed by the original musicnn code in a side environment;
tests/fixtures/make_musicnn_reference.py says how. The weights come from `make musicnn`
(part of `make setup`).
"""

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import genre_utils as gu
from conftest import SR, TINY, write_tone
from test_training import fake_features

FIXTURES = Path(__file__).with_name("fixtures")


def _reference_script():
    spec = importlib.util.spec_from_file_location("make_musicnn_reference", FIXTURES / "make_musicnn_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REFERENCES = {"msd": "musicnn_reference.npz", "mtt": "mtt_musicnn_reference.npz"}  # network -> its fixture


def _reference(network: str = "msd") -> dict:
    with np.load(FIXTURES / REFERENCES[network]) as arrays:
        return {name: arrays[name] for name in arrays.files}


@pytest.fixture(scope="module")
def reference():
    return _reference("msd")


@pytest.fixture(scope="module")
def network():
    return gu.load_musicnn()


def test_patches_match_the_originals_input_features(reference):
    script = _reference_script()
    patches = [gu.musicnn_patches(y) for y in script.reference_signals()]
    assert [len(p) for p in patches] == [1, 2, 1]  # 3.2 s: one 3 s patch; 6.2 s: two, the tail dropped
    computed = np.concatenate(patches)
    assert computed.dtype == np.float16 and computed.shape == (4, gu.MUSICNN_PATCH_FRAMES, gu.MUSICNN_MELS)
    # The same float16 values but for rare rounding flips: the float32 mel-spectrogram (FFT, then a product
    # with the mel filters: BLAS sums of 257 terms) carries a few float32 roundings whose order is the CPU's,
    # and where its value lies that close to a float16 rounding boundary the cast goes the other way, by one
    # float16 step, which 10000 * mel + 1 and log10, each rounded to float16, turn into at most two steps of
    # the patch. A few float32 roundings flip about 1e-4 of the values (7 of 71,808 here, one step each);
    # 0.1 % would take an error of ~100 roundings, while log10 computed in float32 instead of float16 changes 20 %.
    assert (computed == reference["patches"]).mean() > 0.999
    two_float16_steps = 2 * np.spacing(np.abs(reference["patches"])).astype(np.float32)
    assert (np.abs(computed.astype(np.float32) - reference["patches"].astype(np.float32)) <= two_float16_steps).all()


# Port and original are two float32 evaluations of the same network: they differ by rounding only, in
# sums whose order is the CPU kernels' choice (oneDNN's on an Intel AVX-512 CPU is not Eigen's on an AMD
# one). The comparison admits any such order and little more.
FLOAT32_UNIT_ROUNDOFF = 2.0**-24  # the largest relative error of one float32 rounding
BATCH_NORM_ROUNDINGS = 10  # inference batch norm: variance + epsilon, square root, scale, shift, x * scale + shift


def _rounding_steps(network) -> int:
    """N, the roundings that can pile up in one output of `network`: the fan-in plus the bias of every
    convolution and dense layer, BATCH_NORM_ROUNDINGS per batch norm and the 187 frames of the mean pool,
    summed over all layers, parallel branches included, so more than on any one path (musicnn: 7,795)."""
    steps = gu.MUSICNN_PATCH_FRAMES
    for layer in network.layers:
        names = [weight.path.rsplit("/", 1)[-1] for weight in layer.weights]
        if "kernel" in names:
            steps += math.prod(layer.weights[names.index("kernel")].shape[:-1]) + 1
        elif "moving_variance" in names:
            steps += BATCH_NORM_ROUNDINGS
    return steps


def _port_errors(outputs: dict, reference: dict, network) -> dict[str, float]:
    """Per musicnn output, max |port - original| over its float32 bound: 1 or less is rounding, NaN fails.

    A sum of n float32 terms, in any order, is off by at most gamma_n = n u / (1 - n u) times the sum
    of the terms' magnitudes (u = 2^-24; Higham, Accuracy and Stability of Numerical Algorithms, 2nd
    ed., 2002, section 3.1), and a layer's error adds to the errors it is fed, so N rounding steps
    (`_rounding_steps`) give gamma_N. For the magnitudes we take the largest of the output in its patch
    (of the reference, so that a wrong port cannot widen its own bound; for the taggram, its largest
    logit over 4, the sigmoid's steepest slope). Port and original each carry such an error:
    |port - original| <= 2 gamma_N scale. The terms' own magnitudes, propagated through |weights|,
    would give bounds of 1e4 here (every rounding error aligned, none cancelling); errors of random
    sign grow as sqrt(N) rather than N. The bound is ~1e-3 of each output's scale: measured
    differences are under 0.4 % of it with oneDNN on and off, and 0.17 % for the 1.4e-4 an Intel
    AVX-512 CPU gave on a max-pool value of 1.48 (row scale 89), while one of the 792,079 weights off
    by 1 % exceeds it (`test_a_porting_error_in_one_weight_fails_the_comparison`).
    """
    gamma = _rounding_steps(network) * FLOAT32_UNIT_ROUNDOFF
    gamma /= 1 - gamma
    errors = {}
    for name in gu.MUSICNN_LAYERS:
        desired = reference[name].astype(np.float64)
        if name == "taggram":
            scale = np.abs(np.log(desired / (1 - desired))).max(axis=1, keepdims=True) / 4
        else:
            scale = np.abs(desired).max(axis=1, keepdims=True)
        errors[name] = float((np.abs(outputs[name] - desired) / (2 * gamma * scale)).max())
    return errors


def test_the_port_matches_the_original_network_within_float32_rounding(reference, network):
    errors = _port_errors(gu.musicnn_outputs(reference["patches"], network), reference, network)
    assert all(error <= 1 for error in errors.values()), f"differences over their float32 bounds: {errors}"
    assert list(reference["tags"]) == list(gu.MUSICNN_TAGS)
    assert network.count_params() == 792_079  # the checkpoint's variables, without the optimizer's


def test_the_magnatagatune_network_matches_its_original_too(reference):
    mtt, mtt_network = _reference("mtt"), gu.load_musicnn(gu.musicnn_weights("mtt"))
    np.testing.assert_array_equal(mtt["patches"], reference["patches"])  # the same input features
    errors = _port_errors(gu.musicnn_outputs(mtt["patches"], mtt_network), mtt, mtt_network)
    assert all(error <= 1 for error in errors.values()), f"differences over their float32 bounds: {errors}"
    assert {"classical", "techno", "rock", "pop"} <= set(mtt["tags"]) and "indie" not in set(mtt["tags"])
    # its own weights, not the MSD network's: their outputs differ by far more than rounding
    msd_errors = _port_errors(gu.musicnn_outputs(mtt["patches"], gu.load_musicnn()), mtt, mtt_network)
    assert min(msd_errors.values()) > 10, msd_errors
    with pytest.raises(gu.ConfigError, match="musicnn network 'gtzan': choose from msd, mtt"):
        gu.musicnn_weights("gtzan")


@pytest.mark.parametrize(
    ("layer", "weight", "factor"),
    [
        ("midend_conv1", "kernel", 1.01),  # the largest weight of the first mid-end convolution, 1 % off
        ("input_norm", "moving_variance", 1.01),  # the input batch norm's variance 1 % off
        ("midend_conv3_norm", "moving_mean", 0.0),  # one batch-norm mean left out
    ],
)
def test_a_porting_error_in_one_weight_fails_the_comparison(reference, network, layer, weight, factor):
    layer = network.get_layer(layer)
    original = layer.get_weights()
    weights = [array.copy() for array in original]
    values = weights[[w.path.rsplit("/", 1)[-1] for w in layer.weights].index(weight)]
    values[np.unravel_index(np.abs(values).argmax(), values.shape)] *= factor  # one number of the 792,079
    layer.set_weights(weights)
    try:
        errors = _port_errors(gu.musicnn_outputs(reference["patches"], network), reference, network)
    finally:
        layer.set_weights(original)
    assert max(errors.values()) > 1, errors


def test_loud_audio_gives_finite_patches_where_the_originals_float16_overflows():
    t = np.arange(4 * gu.MUSICNN_SAMPLE_RATE) / gu.MUSICNN_SAMPLE_RATE
    loud = (0.9 * np.sign(np.sin(2 * np.pi * 220 * t))).astype(np.float32)  # a full-scale square wave
    patches = gu.musicnn_patches(loud)
    assert np.isfinite(patches).all() and patches.max() > np.log10(65504)  # beyond float16's range of 10000 * mel
    short = gu.musicnn_patches(loud[:8000])  # half a second: zero-padded to one patch
    assert short.shape == (1, gu.MUSICNN_PATCH_FRAMES, gu.MUSICNN_MELS)


def test_missing_weights_name_the_command_that_fetches_them(tmp_path):
    with pytest.raises(gu.CacheError, match=r"msd_musicnn.npz: musicnn weights not found; run `make musicnn`"):
        gu.load_musicnn(tmp_path / "msd_musicnn.npz")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, something=np.zeros(3))
    with pytest.raises(gu.CacheError, match="wrong.npz: not musicnn weights"):
        gu.load_musicnn(wrong)


def _clips(folder: Path, count: int = 8, seconds: float = 3.5):
    """A tracks table of `count` short WAV files at SR in two genres: low tones vs noise bursts."""
    rng = np.random.default_rng(0)
    rows = {}
    for track_id in range(count):
        t = np.arange(int(seconds * SR)) / SR
        if track_id % 2:
            y = 0.1 * rng.standard_normal(len(t)) * (np.sin(2 * np.pi * 2 * t) > 0)
            genre = "Rock"
        else:
            y = 0.2 * np.sin(2 * np.pi * (110 + 20 * track_id) * t)
            genre = "Folk"
        path = folder / f"{track_id}.wav"
        sf.write(path, y.astype(np.float32), SR)
        rows[100 + track_id] = (genre, "training", str(path))
    return pd.DataFrame.from_dict(rows, orient="index", columns=["genre", "split", "path"])


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    tracks = _clips(folder)
    (folder / "empty.wav").write_bytes(b"")
    tracks.loc[999] = ("Rock", "training", str(folder / "empty.wav"))
    cfg = gu.get_config("demo", clip_seconds=3.5, cache_dir=folder / "cache")
    with pytest.warns(UserWarning, match="skipped 1 of 9 audio files"):
        embeddings = gu.pretrained_embeddings(tracks, cfg, workers=1)
    return tracks, cfg, embeddings


def test_embeddings_pool_the_penultimate_layer_over_patches_and_skip_bad_files(embedded, network):
    tracks, cfg, embeddings = embedded
    assert embeddings.index.tolist() == list(range(100, 108))  # the empty file is left out
    assert embeddings.shape == (8, 400) and embeddings.columns[0] == "penultimate_mean_000"
    assert embeddings.columns[-1] == "penultimate_max_199"
    y = gu.load_audio(tracks.at[103, "path"], gu.MUSICNN_SAMPLE_RATE, 3.5)
    penultimate = gu.musicnn_outputs(gu.musicnn_patches(y), network)["penultimate"]
    np.testing.assert_allclose(
        embeddings.loc[103].to_numpy(), np.r_[penultimate.mean(0), penultimate.max(0)], atol=1e-5
    )


def test_embeddings_are_read_back_from_the_cache_and_resume_a_partial_run(embedded, tmp_path):
    tracks, cfg, embeddings = embedded
    cached = gu.pretrained_embeddings(
        tracks.drop(index=999), cfg.replace(cache_dir=tmp_path), workers=1, layers=("taggram",)
    )
    npz = next(tmp_path.glob("musicnn-embeddings-v*.npz"))
    # a run interrupted after one clip: its finished clip is kept, the others are computed
    partial = npz.with_suffix(".partial")
    partial.mkdir()
    np.save(partial / "100.npy", np.full(len(gu._embedding_columns()), 7.0, np.float32))
    npz.unlink()
    resumed = gu.pretrained_embeddings(
        tracks.drop(index=999), cfg.replace(cache_dir=tmp_path), workers=1, layers=("taggram",)
    )
    assert (resumed.loc[100] == 7.0).all() and not partial.exists()
    pd.testing.assert_frame_equal(resumed.drop(index=100), cached.drop(index=100))
    assert cached.shape == (8, 100)  # taggram: mean and max of 50 tags
    with pytest.raises(gu.ConfigError, match="musicnn layers"):
        gu.pretrained_embeddings(tracks, cfg, layers=("logits",))


def test_each_network_has_its_own_embeddings_cache_and_columns(embedded, tmp_path):
    tracks, cfg, msd = embedded
    cfg = cfg.replace(cache_dir=tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 of 9"):
        mtt = gu.pretrained_embeddings(tracks, cfg, workers=1, network="mtt")
    assert sorted(path.name.split("-")[3] for path in tmp_path.glob("musicnn-embeddings-*.npz")) == ["mtt"]
    assert mtt.index.equals(msd.index) and mtt.columns[0] == "mtt_penultimate_mean_000" and mtt.shape == (8, 400)
    y = gu.load_audio(tracks.at[103, "path"], gu.MUSICNN_SAMPLE_RATE, 3.5)
    penultimate = gu.musicnn_outputs(gu.musicnn_patches(y), gu.load_musicnn(gu.musicnn_weights("mtt")))["penultimate"]
    np.testing.assert_allclose(mtt.loc[103].to_numpy(), np.r_[penultimate.mean(0), penultimate.max(0)], atol=1e-5)
    # the MSD embeddings of the same clips in the same folder are computed, not read back from the MTT cache
    assert not np.allclose(gu.pretrained_embeddings(tracks.drop(index=999), cfg, workers=1).to_numpy(), mtt.to_numpy())


@pytest.mark.parametrize("kind", gu.EMBEDDING_KINDS)
def test_an_embedding_method_fits_training_and_validation_and_predicts_the_test_clips(embedded, tmp_path, kind):
    tracks, cfg, embeddings = embedded
    split = pd.Series(
        ["training", "validation", "training", "training", "training", "training", "test", "test"],
        index=embeddings.index,
    )
    result = gu.embedding_method(embeddings, tracks, cfg, kind)(split, tmp_path)
    assert result.proba.index.tolist() == [106, 107]
    assert set(result.proba.columns) == {"Folk", "Rock"} and result.parameters > 0 and result.train_seconds >= 0
    np.testing.assert_allclose(result.proba.sum(axis=1), 1.0)
    assert result.proba.idxmax(axis=1).tolist() == ["Folk", "Rock"]  # tones vs noise bursts
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(gu.EMBEDDING_RUN_FILES)
    with pytest.raises(gu.ConfigError, match="kind 'tree'"):
        gu.embedding_method(embeddings, tracks, cfg, "tree")


def _predict(*arguments) -> subprocess.CompletedProcess:
    """`genre_utils.py predict` with these arguments, its output captured."""
    command = [sys.executable, str(gu.ROOT / "genre_utils.py"), "predict", *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _predict_here(capsys, *arguments) -> tuple[int, str]:
    """The same command run in this process, where Keras is already loaded: (exit status, output)."""
    status = gu.main(["predict", *map(str, arguments)])
    return status, capsys.readouterr().out


def test_predict_command_uses_an_embedding_run_like_a_cnn_run(embedded, tmp_path):
    tracks, cfg, embeddings = embedded
    run_dir = tmp_path / "run"
    real_folder = cfg.replace(data_root=Path(tracks["path"].iloc[0]).parent)  # not the synthetic demo set
    gu.train_embedding_classifier(embeddings, tracks, real_folder, run_dir, "logistic")
    song = write_tone(tmp_path / "song.wav", 6.0, 150, amplitude=0.2)
    result = _predict(song, "--run", run_dir, "--top", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{song}: 3 windows of 3.5 s (6.0 s of audio)"  # starts 0, 1.75, 2.5: the last ends there
    assert lines[1].split()[:2] == ["1.", "Folk"] and lines[2].split()[:2] == ["2.", "Rock"]


def test_a_run_trained_on_the_synthetic_demo_set_says_so_when_it_predicts(embedded, tmp_path, capsys):
    tracks, cfg, embeddings = embedded
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / gu.DEMO_MARKER).write_text("{}")  # what make_demo_dataset writes last
    song = write_tone(tmp_path / "song.wav", 4.0, 150, amplitude=0.2)
    for root, source in ((demo, "synthetic"), (tmp_path, "folder")):
        run_dir = tmp_path / f"run-{source}"
        gu.train_embedding_classifier(embeddings, tracks, cfg.replace(data_root=root), run_dir)
        assert json.loads((run_dir / "classifier.json").read_text())["source"] == source
        status, out = _predict_here(capsys, song, "--run", run_dir)
        warned = f"warning: {run_dir} was trained on the synthetic demo set" in out
        assert status == 0 and warned == (source == "synthetic"), out
    fma = tmp_path / "fma"
    (fma / "fma_metadata").mkdir(parents=True)
    (fma / "fma_metadata" / "tracks.csv").write_text("")
    assert gu.data_source(fma) == "fma" and set(gu.DATA_SOURCES) == {"synthetic", "fma", "folder"}


def test_the_zero_shot_table_maps_msd_tags_onto_fma_genres():
    tags = [tag for group in gu.ZERO_SHOT_GENRES.values() for tag in group]
    assert set(tags) <= set(gu.MUSICNN_TAGS) and len(tags) == len(set(tags))  # each tag feeds one genre at most
    assert set(gu.ZERO_SHOT_GENRES) == set(gu.GENRES) - {"International"}  # no MSD tag names it
    rows = pd.DataFrame(0.01, index=range(3), columns=list(gu.MUSICNN_TAGS))
    rows.loc[0, ["rock", "hard rock"]] = [0.7, 0.2]
    rows.loc[1, ["Hip-Hop", "rnb", "pop"]] = [0.3, 0.5, 0.1]
    rows.loc[2, "jazz"] = 0.4
    shares = gu.zero_shot_genres(rows)
    assert list(shares.columns) == list(gu.ZERO_SHOT_GENRES)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    assert shares.idxmax(axis=1).tolist() == ["Rock", "Hip-Hop", "Instrumental"]
    assert shares.at[0, "Rock"] == pytest.approx(0.7 / (0.7 + 6 * 0.01))  # each genre: its strongest tag
    with pytest.raises(gu.DataError, match="lack the MSD tags"):
        gu.zero_shot_genres(rows.drop(columns=["rock"]))


def test_zero_shot_predict_needs_no_run_and_flags_silent_and_short_files(tmp_path, capsys):
    song = write_tone(tmp_path / "song.wav", 7.0, 220, amplitude=0.3)
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(40 * SR, np.float32), SR)
    quiet = write_tone(tmp_path / "quiet.wav", 5.0, 220, amplitude=1e-4, subtype="FLOAT")  # -83 dBFS RMS
    short = write_tone(tmp_path / "short.wav", 0.5, 440, amplitude=0.3)
    status, out = _predict_here(capsys, song, silence, quiet, short, "--plot", tmp_path / "timeline.png")
    assert status == 0, out
    assert out.splitlines()[0].startswith("zero-shot genres from musicnn's MSD tags") and "International" in out
    by_song = {}
    for line in out.splitlines()[1:]:
        if not line.startswith(" "):
            current = line.split(": ")[0]
        by_song.setdefault(current, []).append(line)
    assert by_song[str(song)][0] == f"{song}: 2 windows of 2.99 s (7.0 s of audio)"  # two whole 3 s patches
    ranked = [line.split() for line in by_song[str(song)] if line.strip()[0].isdigit()]
    assert [line[:1] for line in ranked] == [["1."], ["2."], ["3."]] and all(r[1] in gu.GENRES for r in ranked)
    assert any(line.startswith("  MSD tags: ") for line in by_song[str(song)])
    assert not any("warning" in line for line in by_song[str(song)])
    for silent, level in ((silence, "digital silence"), (quiet, "RMS level -83 dBFS")):
        lines = by_song[str(silent)]
        assert f"  warning: {silent}: silent ({level}; music is louder than -60 dBFS)" in "\n".join(lines)
        assert not any(line.strip()[0].isdigit() for line in lines[1:])  # no genre ranking
    lines = by_song[str(short)]
    assert lines[0] == f"{short}: 1 window of 2.99 s (0.5 s of audio)"
    assert f"  warning: {short}: only 0.5 s of audio; the model hears 2.99 s windows, so 83% of its input" in lines[1]
    assert (tmp_path / "timeline-song.png").is_file() and not (tmp_path / "timeline-silence.png").exists()


def test_an_embedding_and_statistics_run_computes_both_when_it_predicts(embedded, tmp_path, capsys):
    tracks, cfg, embeddings = embedded
    statistics = gu.extract_clip_statistics(tracks.drop(index=999), cfg.replace(cache_dir=tmp_path), workers=1)
    both = embeddings.join(statistics, how="inner")
    assert both.shape == (8, 400 + 88)
    run_dir = tmp_path / "run"
    pipeline = gu.train_embedding_classifier(both, tracks, cfg.replace(data_root=tmp_path), run_dir)
    assert json.loads((run_dir / "classifier.json").read_text())["layers"] == ["penultimate"]
    song = tracks.at[103, "path"]  # one window of exactly the training length: the same inputs as in training
    windows = gu.predict_file_embeddings(song, pipeline, cfg, *gu.load_embedding_run(run_dir)[2:], gu.load_musicnn())
    expected = pipeline.predict_proba(both.loc[[103]].to_numpy())[0]
    np.testing.assert_allclose(windows[list(pipeline.classes_)].iloc[0], expected, atol=1e-4)
    status, out = _predict_here(capsys, song, "--run", run_dir)
    assert status == 0 and out.splitlines()[1].split()[:2] == ["1.", "Rock"], out


def test_a_run_on_both_networks_embeds_with_both_when_it_predicts(embedded, tmp_path):
    tracks, cfg, msd = embedded
    with pytest.warns(UserWarning, match="skipped 1 of 9"):
        mtt = gu.pretrained_embeddings(tracks, cfg.replace(cache_dir=tmp_path), workers=1, network="mtt")
    both = msd.join(mtt)
    run_dir = tmp_path / "run"
    pipeline = gu.train_embedding_classifier(both, tracks, cfg.replace(data_root=tmp_path), run_dir)
    info = gu.load_embedding_run(run_dir)[2]
    assert info["networks"] == ["msd", "mtt"] and info["layers"] == ["penultimate"]
    assert info["embedding"].startswith("musicnn MSD_musicnn + MTT_musicnn")
    song = tracks.at[106, "path"]  # one window of exactly the training length: the same inputs as in training
    windows = gu.predict_file_embeddings(song, pipeline, cfg, info, gu.load_musicnn())
    expected = pipeline.predict_proba(both.loc[[106]].to_numpy())[0]
    np.testing.assert_allclose(windows[list(pipeline.classes_)].iloc[0], expected, atol=1e-4)


# Fine-tuning: a genre head on the pretrained body, parts unfrozen in stages, saved as a run


@pytest.fixture(scope="module")
def patches(embedded):
    tracks, cfg, _ = embedded
    with pytest.warns(UserWarning, match="skipped 1 of 9 audio files"):
        return gu.musicnn_clip_patches(tracks, cfg)


def test_the_genre_head_sits_on_the_pretrained_body_with_one_unit_per_genre(network, patches):
    keras = gu.import_keras()
    x, clips = patches
    assert x.shape == (8, 187, 96) and x.dtype == np.float16 and clips.tolist() == list(range(100, 108))
    model = gu.build_musicnn_classifier(("Folk", "Rock", "Pop"))
    proba = np.asarray(model.predict(x.astype(np.float32), verbose=0))
    assert tuple(model.output.shape) == (None, 3) and proba.shape == (8, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    # up to the head, the body is the MSD network: the same weights and operations on the same CPU, in
    # another graph (nested models), so only float32 reassociation differs: 1e-4 of activations ~1-10
    body = model.get_layer("musicnn_body")
    features = model.get_layer("musicnn_frontend").predict(x.astype(np.float32), verbose=0)
    penultimate = keras.Model(body.input, body.get_layer("penultimate").output).predict(features, verbose=0)
    np.testing.assert_allclose(penultimate, gu.musicnn_outputs(x, network)["penultimate"], rtol=1e-4, atol=1e-4)
    assert [w.path for w in model.trainable_weights] == ["genre_head/kernel", "genre_head/bias"]
    with pytest.raises(gu.ConfigError, match="unfreeze 'all': choose one of frontend, midend, backend, head"):
        gu.unfreeze_musicnn(model, "all")


@pytest.mark.parametrize("unfreeze", ["head", "midend"])
def test_a_training_step_changes_only_the_unfrozen_parts(patches, unfreeze):
    keras = gu.import_keras()
    x, _ = patches
    model = gu.build_musicnn_classifier(("Folk", "Rock"))
    gu.unfreeze_musicnn(model, unfreeze)
    before = {w.path: np.array(w) for w in model.weights}
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    model.train_on_batch(x.astype(np.float32), np.eye(2, dtype=np.float32)[np.arange(8) % 2])
    moved = {w.path for w in model.weights if not np.array_equal(before[w.path], np.array(w))}
    if unfreeze == "head":
        assert moved == {"genre_head/kernel", "genre_head/bias"}
    else:  # mid-end, back-end and head; not the front-end, nor any batch norm (inference mode)
        assert {"midend_conv1/kernel", "backend_dense/kernel", "genre_head/kernel"} <= moved
        assert all(path.startswith(("midend_conv", "backend_dense", "genre_head")) for path in moved), moved
        assert not any("norm" in path for path in moved)


def test_a_finetuned_run_round_trips_through_save_load_run_and_predict_file(embedded, patches, tmp_path, capsys):
    tracks, cfg, _ = embedded
    x, clips = patches
    cfg = cfg.replace(genres=("Folk", "Rock"), data_root=tmp_path)
    run_dir = tmp_path / "run"
    model = gu.finetune_musicnn(x, clips, tracks, cfg, run_dir, head_epochs=2, body_epochs=1, batch_size=4)
    # 8 patches in batches of 4: each stage's cost is said after its first epoch, unless that was its last
    said = capsys.readouterr().out.splitlines()
    assert len(said) == 1 and said[0].startswith("fine-tuning musicnn, stage 1 (head): 2 epochs expected to take "), (
        said
    )
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(gu.FINETUNE_RUN_FILES)
    info = json.loads((run_dir / "finetune.json").read_text())
    assert info["genres"] == ["Folk", "Rock"] and (info["clips"], info["patches"]) == (8, 8)
    assert info["settings"] == gu.FINETUNE_SETTINGS | {"head_epochs": 2, "body_epochs": 1, "batch_size": 4}
    assert [(row["stage"], row["unfreeze"], row["epoch"]) for row in info["history"]] == [
        (1, "head", 1),
        (1, "head", 2),
        (2, "midend", 1),
    ]
    loaded, run_cfg, history = gu.load_run(run_dir)
    assert run_cfg == cfg and history["loss"].tolist() == [row["loss"] for row in info["history"]]
    # the saved float32 weights exactly, run on the same CPU: probabilities agree to a few float32 steps
    np.testing.assert_allclose(
        loaded.predict(x.astype(np.float32), verbose=0), model.predict(x.astype(np.float32), verbose=0), atol=1e-6
    )
    song = write_tone(tmp_path / "song.wav", 7.0, 150, amplitude=0.2)
    windows = gu.predict_file(song, loaded, run_cfg)
    assert list(windows.columns) == ["Folk", "Rock"] and windows.index.tolist() == pytest.approx([0, 2.992])
    np.testing.assert_allclose(windows.sum(axis=1), 1.0, atol=1e-5)
    status, out = _predict_here(capsys, song, "--run", run_dir)
    assert status == 0 and out.splitlines()[0] == f"{song}: 2 windows of 2.99 s (7.0 s of audio)", out
    with pytest.raises(gu.ConfigError, match="fine-tuning setting"):
        gu.finetune_musicnn(x, clips, tracks, cfg, run_dir, epochs=3)
    with pytest.raises(gu.ConfigError, match="unfreeze 'all'"):  # before any training
        gu.finetune_method(x, clips, tracks, cfg, unfreeze="all")
    (run_dir / "model.keras").unlink()
    with pytest.raises(gu.DataError, match="model.keras: not found; fine-tune musicnn"):
        gu.load_run(run_dir)


def test_a_finetune_method_fits_training_and_validation_and_predicts_the_test_clips(embedded, patches, tmp_path):
    tracks, cfg, _ = embedded
    x, clips = patches
    split = pd.Series(["training", "validation", *["training"] * 4, "test", "test"], index=range(100, 108))
    method = gu.finetune_method(
        x, clips, tracks, cfg.replace(genres=("Folk", "Rock")), head_epochs=5, head_lr=1e-2, body_epochs=0, batch_size=2
    )
    result = method(split, tmp_path)
    assert result.proba.index.tolist() == [106, 107] and list(result.proba.columns) == ["Folk", "Rock"]
    np.testing.assert_allclose(result.proba.sum(axis=1), 1.0, atol=1e-5)
    assert result.parameters == 200 * 2 + 2 and result.train_seconds > 0  # the head alone
    assert result.proba.idxmax(axis=1).tolist() == ["Folk", "Rock"]  # tones vs noise bursts
    assert json.loads((tmp_path / "finetune.json").read_text())["clips"] == 6


# Late fusion: the report's CNN with musicnn's clip embedding as a fourth input to its dense head

FUSED = TINY.replace(musicnn_input=True, genres=("Folk", "Rock"))


def _fused_features(seed: int = 0, shift: float = 0.5) -> gu.Features:
    """Features whose spectrograms are noise and whose 400 embedding values carry the genre (+-shift)."""
    rng = np.random.default_rng(seed)
    data = fake_features(FUSED, n_train=24, n_val=16, seed=seed)
    data.mel[:] = rng.normal(size=data.mel.shape)
    data.cqt[:] = rng.normal(size=data.cqt.shape)
    signs = 2 * data.index["label"].to_numpy()[:, None] - 1
    values = rng.normal(size=(len(data.index), 400)) + shift * signs
    return data.with_embeddings(pd.DataFrame(values, index=data.index.index, columns=list(gu._fusion_columns())))


def test_a_fused_model_joins_the_normalised_embedding_before_its_dense_layer():
    plain, fused = gu.build_model(FUSED.replace(musicnn_input=False)), gu.build_model(FUSED)
    assert [tensor.name for tensor in plain.inputs] == ["cqt", "mel"]
    assert [tensor.name for tensor in fused.inputs] == ["cqt", "embedding", "mel"]
    assert tuple(fused.get_layer("embedding").output.shape) == (None, 400)
    assert fused.get_layer("embedding_normalization").input.name == "embedding"
    # the dense layer's inputs: the three branches' pooled channels, and the 400 embedding values
    plain_in, fused_in = (model.get_layer("dense").kernel.shape[0] for model in (plain, fused))
    assert fused_in == plain_in + 400
    assert fused.name.endswith("_musicnn") and not plain.name.endswith("_musicnn")


def test_batches_give_each_excerpt_its_clips_embedding_mixed_like_its_label_and_never_gained():
    data = _fused_features()
    rows = data.rows("training")[:4]
    inner = gu.feature_batches(
        data, np.repeat(rows, 2), FUSED, ["embedding", "mel"], excerpt_frames=10, starts=np.tile([0, 5], 4)
    )
    x, _ = inner[0]
    assert x["embedding"].dtype == np.float32 and x["embedding"].shape == (8, 400)
    np.testing.assert_array_equal(x["embedding"], data.embedding[np.repeat(rows, 2)])
    assert x["mel"].shape == (8, FUSED.n_mels, 10, 1)

    # the first two embedding values made the one-hot label: mixup must blend them as it blends the labels
    embedding = data.embedding.copy()
    embedding[:, :2] = np.eye(2)[data.index["label"].to_numpy()]
    labelled = dataclasses.replace(data, embedding=embedding)
    training = gu.feature_batches(labelled, labelled.rows("training"), FUSED, ["embedding", "mel"], shuffle=True)
    cfg = FUSED.replace(mixup_alpha=0.4, gain_db=6.0)
    x, y = gu._recipe_batches(training, None, cfg)[0][0]
    assert ((y > 0) & (y < 1)).any()  # some examples are blends
    np.testing.assert_allclose(x["embedding"][:, :2], y, atol=1e-6)  # the same float32 blend of 0s and 1s
    # a random gain shifts the spectrograms (dB), not the embedding
    x, _ = gu._recipe_batches(training, None, FUSED.replace(gain_db=6.0))[0][0]
    raw, _ = training[0]
    assert not np.allclose(x["mel"], raw["mel"].astype(np.float32))
    np.testing.assert_array_equal(x["embedding"], raw["embedding"])


def test_grad_cam_occlusion_and_cnn_features_explain_a_fused_model_with_each_clips_embedding():
    data = _fused_features()
    model, rows = gu.build_model(FUSED), data.rows("validation")[:4]
    gu.adapt_normalization(model, data, data.rows("training"))
    maps = gu.grad_cam(model, data, rows, FUSED)
    assert list(maps) == list(gu.BRANCHES)
    for branch, m in maps.items():
        height = FUSED.n_mels if gu.BRANCH_INPUTS[branch] == "mel" else FUSED.cqt_bins
        assert m.shape == (len(rows), height, FUSED.n_frames) and np.isfinite(m).all() and (m >= 0).all()
    # the dense head reads the embedding too, so it gates the gradients: each clip's own must be fed
    flipped = dataclasses.replace(data, embedding=-data.embedding)
    assert any(not np.allclose(maps[b], gu.grad_cam(model, flipped, rows, FUSED)[b]) for b in maps)
    assert gu.occlusion(model, data, rows, FUSED).shape == (len(rows), gu.MEL_BANDS)
    channels = sum(model.get_layer(f"{b}_global_pool").output.shape[-1] for b in gu.BRANCHES)
    assert gu.cnn_features(model, data, rows, FUSED).shape == (len(rows), channels)  # the CNN's own features


def test_a_fused_model_learns_the_genre_from_the_embedding_when_the_spectrograms_hold_none(tmp_path):
    data = _fused_features()
    cfg = FUSED.replace(branches=("mel_vertical",), epochs=6, learning_rate=2e-2)
    keras = gu.import_keras()
    keras.utils.set_random_seed(cfg.seed)
    model = gu.build_model(cfg)
    history = gu.train(model, data, cfg, tmp_path / "run", verbose=0)
    # 16 validation clips, each of 400 embedding values shifted by +-0.5 standard deviations with the genre
    # (10 standard deviations along their sum): a model using the embedding separates them whatever the
    # CPU's rounding; spectrograms of noise alone give chance (0.5)
    assert history["val_accuracy"].iloc[-1] >= 0.9
    normalization = model.get_layer("embedding_normalization")  # adapted to the training clips
    training = data.embedding[data.rows("training")]
    np.testing.assert_allclose(np.ravel(normalization.mean), training.mean(axis=0), rtol=1e-5, atol=1e-5)


def test_embeddings_that_are_missing_or_of_another_layer_raise_data_error():
    data = _fused_features()
    embeddings = pd.DataFrame(data.embedding, index=data.index.index, columns=list(gu._fusion_columns()))
    with pytest.raises(
        gu.DataError, match=r"no musicnn embedding for 2 clip\(s\) with features \(track ids 100, 101\)"
    ):
        data.with_embeddings(embeddings.drop(index=[100, 101]))
    with pytest.raises(gu.DataError, match="embeddings with 100 columns"):
        data.with_embeddings(embeddings.iloc[:, :100])
    plain = dataclasses.replace(data, embedding=None)
    with pytest.raises(gu.DataError, match="the model takes musicnn embeddings .* hold none; join them"):
        gu.predict_proba(gu.build_model(FUSED), plain, plain.rows("validation"), FUSED)


def test_a_fused_run_round_trips_and_predicts_files_through_musicnn(embedded, tmp_path, capsys):
    tracks, cfg, embeddings = embedded
    tracks = tracks.drop(index=999).assign(split=["training", "validation"] * 4)
    cfg = cfg.replace(genres=("Folk", "Rock"), data_root=tmp_path, musicnn_input=True, epochs=2)
    features = gu.extract_features(tracks, cfg, workers=1).with_embeddings(embeddings)
    gu.import_keras().utils.set_random_seed(cfg.seed)
    model = gu.build_model(cfg)
    gu.train(model, features, cfg, tmp_path / "run", verbose=0)
    loaded, run_cfg, _ = gu.load_run(tmp_path / "run")
    assert run_cfg.musicnn_input and "embedding" in [tensor.name for tensor in loaded.inputs]
    rows = features.rows("validation")
    np.testing.assert_allclose(
        gu.predict_proba(loaded, features, rows, run_cfg), gu.predict_proba(model, features, rows, run_cfg), atol=1e-6
    )
    # a file of one window: its embedding is the one pretrained_embeddings computed for that clip
    path = tracks.at[103, "path"]
    window = gu._window_embeddings(gu._AudioStream(path, gu.MUSICNN_SAMPLE_RATE), pd.Index([0.0]), run_cfg)
    np.testing.assert_allclose(window.iloc[0].to_numpy(), embeddings.loc[103].to_numpy(), atol=1e-5)
    # the predict command: load_run, then predict_file with each window's embedding
    capsys.readouterr()  # what extraction and training printed
    status, out = _predict_here(
        capsys, write_tone(tmp_path / "song.wav", 6.0, 150, amplitude=0.2), "--run", tmp_path / "run"
    )
    assert status == 0 and out.splitlines()[0].endswith("3 windows of 3.5 s (6.0 s of audio)"), out
    assert {line.split()[1] for line in out.splitlines()[1:3]} == {"Folk", "Rock"}, out  # both genres ranked
