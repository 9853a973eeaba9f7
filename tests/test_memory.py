"""Memory: gradient accumulation in micro-batches, and the clear error of a step that does not fit the device."""

import shutil

import keras
import numpy as np
import pandas as pd
import pytest

import genre_utils as gu
from conftest import TINY
from test_training import fake_features

# One branch compiles in a fraction of the three-branch model's time; 64 training clips: 2 batches of 32
SMALL = TINY.replace(branches=("mel_vertical",), batch_size=32, chunk_seconds=0.5)
ACCUMULATED = SMALL.replace(accumulation_steps=4)


@pytest.fixture(scope="module")
def data():
    return fake_features(n_train=64, n_val=8)


def backend_error(module: str, name: str, message: str, base=Exception) -> Exception:
    """An exception of a class named and placed like a backend's, without importing that backend."""
    return type(name, (base,), {"__module__": module})(message)


TENSORFLOW_OOM = (
    "tensorflow.python.framework.errors_impl",
    "ResourceExhaustedError",
    "OOM when allocating tensor with shape[32,32,128,1292] and type float on /job:localhost/device:GPU:0",
)
JAX_OOM = ("jaxlib._jax", "XlaRuntimeError", "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 5.2GiB.")
TORCH_OOM = ("torch", "OutOfMemoryError", "CUDA out of memory. Tried to allocate 648.00 MiB.")


class RaiseAt(keras.callbacks.Callback):
    """Raises `error` when batch `batch` of epoch `epoch` begins ("begin") or ends ("end")."""

    def __init__(self, error, epoch=0, batch=0, when="begin"):
        super().__init__()
        self.error, self.target, self.when = error, (epoch, batch, when), when

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch, "begin") == self.target:
            raise self.error

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch, "end") == self.target:
            raise self.error


class RecordSteps(keras.callbacks.Callback):
    """After each (micro-)batch: whether the output layer's weights changed, and the learning rate."""

    def on_train_begin(self, logs=None):
        self.changed, self.rates = [], []
        self.last = self._kernel()

    def _kernel(self):
        return keras.ops.convert_to_numpy(self.model.get_layer("genre").kernel).copy()

    def on_train_batch_end(self, batch, logs=None):
        kernel = self._kernel()
        self.changed.append(not np.array_equal(kernel, self.last))
        self.last = kernel
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


def test_the_seed_preset_keeps_the_reports_batch_and_accumulation_is_a_setting():
    assert gu.PRESETS["seed"].accumulation_steps == 1 and gu.PRESETS["seed"].batch_size == 32
    cfg = gu.get_config("seed", accumulation_steps=4)
    assert (cfg.batch_size, cfg.accumulation_steps, gu.micro_batch_size(cfg)) == (32, 4, 8)


def test_a_batch_that_does_not_split_into_the_micro_batches_is_refused(tmp_path, data):
    with pytest.raises(gu.ConfigError, match=r"accumulation_steps=3: batch_size 32 .* one of 1, 2, 4, 8, 16, 32"):
        gu.train(gu.build_model(SMALL), data, SMALL.replace(accumulation_steps=3), tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()
    with pytest.raises(gu.ConfigError, match="accumulation_steps=0"):
        gu.micro_batch_size(SMALL.replace(accumulation_steps=0))


def test_training_micro_batches_split_each_batch_of_the_unaccumulated_run(data):
    rows = data.rows("training")[:40]  # a full batch of 32, then 8 clips
    plain = gu.feature_batches(data, rows, SMALL, inputs=("mel",), shuffle=True)
    micro = gu.feature_batches(data, rows, ACCUMULATED, inputs=("mel",), shuffle=True)
    assert (len(plain), len(micro)) == (2, 8)
    for batch in range(2):
        parts = [micro[4 * batch + i] for i in range(4)]
        assert [len(y) for _, y in parts] == ([8] * 4 if batch == 0 else [2] * 4)
        together = np.sort(np.concatenate([x["mel"][:, 0, 0, 0] for x, _ in parts]))
        np.testing.assert_array_equal(together, np.sort(plain[batch][0]["mel"][:, 0, 0, 0]))
    few = gu.feature_batches(data, rows[:34], ACCUMULATED, inputs=("mel",), shuffle=True)
    assert [len(few[i][1]) for i in range(len(few))] == [8, 8, 8, 8, 1, 1, 1, 1]  # 2 clips, each twice
    unshuffled = gu.feature_batches(data, rows[:34], ACCUMULATED, inputs=("mel",))  # prediction: each clip once
    assert [len(unshuffled[i][1]) for i in range(len(unshuffled))] == [8, 8, 8, 8, 2]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, data):
    recorder = RecordSteps()
    model = gu.build_model(SMALL)
    gu.train(model, data, SMALL, tmp_path_factory.mktemp("runs") / "plain", callbacks=[recorder], verbose=0)
    return model, recorder


@pytest.fixture(scope="module")
def out_of_memory_run(tmp_path_factory, data):
    """An accumulating run whose second epoch runs out of (simulated TensorFlow) memory after one micro-batch."""
    run_dir = tmp_path_factory.mktemp("runs") / "accumulated"
    oom = RaiseAt(backend_error(*TENSORFLOW_OOM), epoch=1, batch=0, when="end")
    with pytest.raises(gu.DeviceMemoryError) as error:
        gu.train(gu.build_model(ACCUMULATED), data, ACCUMULATED, run_dir, callbacks=[oom], verbose=0)
    return run_dir, str(error.value)


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, out_of_memory_run, data):
    run_dir = tmp_path_factory.mktemp("runs") / "resumed"
    shutil.copytree(out_of_memory_run[0], run_dir)
    recorder = RecordSteps()
    model = gu.build_model(ACCUMULATED)
    history = gu.train(model, data, ACCUMULATED, run_dir, callbacks=[recorder], verbose=0)
    return run_dir, model, recorder, history


def test_accumulating_4_micro_batches_of_8_takes_the_optimiser_steps_and_learning_rates_of_batch_32(
    plain_run, resumed_run
):
    plain, plain_steps = plain_run
    _, accumulated, steps, history = resumed_run
    assert int(plain.optimizer.iterations) == int(accumulated.optimizer.iterations) == 2 * 2  # epochs x batches
    assert plain_steps.changed == [True] * 4
    assert steps.changed == [False, False, False, True] * 2  # the resumed epoch: 8 micro-batches, 2 steps
    np.testing.assert_allclose(steps.rates[3::4], plain_steps.rates[2:], rtol=1e-6)  # the schedule counts steps
    assert history["epoch"].tolist() == [0, 1]


def test_a_run_with_accumulation_saves_a_model_that_loads_again(resumed_run):
    run_dir, *_ = resumed_run
    model, cfg, _ = gu.load_run(run_dir)
    assert cfg == ACCUMULATED
    assert model.optimizer.gradient_accumulation_steps == 4
    assert type(model.optimizer._learning_rate).__name__ == "OptimizerStepSchedule"


def test_running_out_of_memory_names_the_device_batch_precision_and_the_ways_out(out_of_memory_run):
    run_dir, message = out_of_memory_run
    assert message.startswith(f"{run_dir}: training ran out of memory on CPU (")
    assert gu.describe_devices() in message and "precision float32" in message
    assert f"batch 32 as 4 micro-batches of 8 of whole 1.5 s clips ({SMALL.n_frames} frames)" in message
    assert "accumulation_steps=8 (micro-batches of 4: 1/2 of the activations) or 16 (micro-batches of 2" in message
    assert (
        f'train_mode="chunked": random 0.5 s excerpts ({gu.chunk_frames(SMALL)} of {SMALL.n_frames} frames' in message
    )
    assert "batch_size=16: half the clips per optimiser step (micro-batches of 4" in message
    assert f"{run_dir / 'backup'} keeps the 1 finished epoch(s)" in message
    assert message.endswith("The backend said: " + TENSORFLOW_OOM[2])


def test_training_resumes_after_running_out_of_memory(out_of_memory_run, resumed_run):
    run_dir, *_ = resumed_run
    assert pd.read_csv(out_of_memory_run[0] / "history.csv")["epoch"].tolist() == [0]
    assert (out_of_memory_run[0] / "backup").is_dir() and not (out_of_memory_run[0] / "last.keras").exists()
    assert all((run_dir / name).is_file() for name in gu.RUN_FILES) and not (run_dir / "backup").exists()


@pytest.mark.parametrize("backend", [JAX_OOM, TORCH_OOM], ids=["jax", "torch"])
def test_a_jax_or_torch_out_of_memory_error_becomes_a_device_memory_error(tmp_path, data, backend):
    oom = RaiseAt(backend_error(*backend, base=RuntimeError))  # as the first step begins: nothing traced
    with pytest.raises(gu.DeviceMemoryError, match=r"(?s)ran out of memory.*batch 32 of whole.*No epoch had finished"):
        gu.train(gu.build_model(SMALL), data, SMALL, tmp_path / "run", callbacks=[oom], verbose=0)


def test_only_out_of_memory_errors_are_translated():
    assert gu._is_out_of_memory(backend_error(*JAX_OOM))
    assert gu._is_out_of_memory(backend_error("jax.errors", "JaxRuntimeError", "RESOURCE_EXHAUSTED: Out of memory"))
    assert not gu._is_out_of_memory(backend_error("jaxlib._jax", "XlaRuntimeError", "INTERNAL: cuDNN failed"))
    assert not gu._is_out_of_memory(backend_error("mypackage", "ResourceExhaustedError", "OOM"))
    assert not gu._is_out_of_memory(MemoryError("numpy could not allocate"))
    try:  # wrapped by another exception: still found
        try:
            raise backend_error(*TORCH_OOM)
        except Exception as inner:
            raise RuntimeError("step failed") from inner
    except RuntimeError as outer:
        assert gu._is_out_of_memory(outer)
