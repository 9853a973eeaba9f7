"""Training efficiency of the report's CNN: FLOPs per clip, achieved GFLOP/s, and the ratio to the
machine's float32 matrix-multiply rate measured in the same run.

For each model (seed and demo presets, whole clips and chunked excerpts) the FLOPs of one forward
pass are counted from the built model's layers (conv: 2*kh*kw*cin*cout*Hout*Wout, dense:
2*in*out; pooling, ReLU and batch norm are left out); a training step is taken as 3x the forward
pass (forward, gradients of activations, gradients of weights). Each variant trains on random
batches for `--steps` steps after a warm-up step (tracing/compilation); variants and numpy's
2048x2048 matrix multiply are measured in interleaved rounds, so a machine shared with other jobs
slows all of them alike, and the medians are compared. Every table prints ratios: achieved GFLOP/s
over the matrix-multiply rate, and each variant's speed over the first variant of its model.

    python benchmarks/training.py                         # demo models, the adopted settings
    python benchmarks/training.py --models seed-chunked seed-full --batch 8
    python benchmarks/training.py --compare jit batch     # what raises the ratio on this machine
    KERAS_BACKEND=jax python benchmarks/training.py --compare jit
    python benchmarks/training.py --loader                # the batch loader alone, seed size
    python benchmarks/training.py --device gpu --precision float32 mixed   # on a GPU machine
    python benchmarks/training.py --precision float32 mixed_bfloat16      # bfloat16 on a CPU that has it

Without --compare, each model runs with the settings `genre_utils.train` uses: Keras' defaults,
which leave XLA (jit_compile) off on a CPU under TensorFlow, where it measured 2.5x slower.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import genre_utils as gu  # noqa: E402

MODELS = ("demo-full", "demo-chunked", "seed-chunked", "seed-full")  # <preset>-<train mode>
MATMUL_SIZE = 2048  # square float32 matrices of the reference matrix multiply on the CPU
GPU_MATMUL_SIZE = 8192  # ... and on a GPU


def model_config(name: str) -> gu.Config:
    """The Config of a benchmark model name such as "seed-chunked"."""
    profile, mode = name.split("-")
    return gu.get_config(profile, train_mode=mode)


def input_frames(cfg: gu.Config) -> int:
    """Frames of one training input: the whole clip, or one excerpt in chunked mode."""
    return gu.chunk_frames(cfg) if cfg.train_mode == "chunked" else cfg.n_frames


def forward_flops(model, cfg: gu.Config, frames: int) -> int:
    """Floating-point operations of one forward pass of one clip `frames` long (convs and dense layers)."""
    keras = gu.import_keras()

    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    heights = {"mel": cfg.n_mels, "cqt": cfg.cqt_bins}
    probe = keras.Model(model.inputs, [layer.output for layer in convs])
    shapes = probe.compute_output_shape({t.name: (1, heights[t.name], frames, 1) for t in model.inputs})
    flops = 0
    for layer, shape in zip(convs, shapes):
        kh, kw = layer.kernel_size
        cin = layer.input.shape[-1]
        flops += 2 * kh * kw * cin * layer.filters * shape[1] * shape[2]
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
    return flops


def matmul_gflops(size: int = MATMUL_SIZE, repeats: int = 3) -> float:
    """GFLOP/s of numpy's float32 size x size matrix multiply on the CPU (best of `repeats`)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, size, size), dtype=np.float32)
    a @ b  # warm-up: thread pool start-up
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def device_matmul_gflops(dtype: str, size: int = GPU_MATMUL_SIZE, repeats: int = 5) -> float:
    """GFLOP/s of the Keras backend's size x size matrix multiply in `dtype` on its default device (a GPU)."""
    keras = gu.import_keras()

    a = keras.random.normal((size, size), dtype=dtype, seed=0)
    b = keras.random.normal((size, size), dtype=dtype, seed=1)
    keras.ops.convert_to_numpy(keras.ops.matmul(a, b)[0, 0])  # warm-up, compilation

    def product():
        out = a
        for _ in range(4):
            out = keras.ops.matmul(out, b) * (1 / size)
        keras.ops.convert_to_numpy(out[0, 0])  # waits for the device

    best = min(_seconds(product) for _ in range(repeats))
    return 4 * 2 * size**3 / best / 1e9


def reference_gflops(policy: str) -> float:
    """The matrix-multiply rate a training variant under `policy` is compared with: the GPU's
    (float32, or bfloat16/float16 for mixed policies) when the backend sees one, else numpy's on the CPU."""
    if not gu.gpu_devices():
        return matmul_gflops()
    return device_matmul_gflops({"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}.get(policy, "float32"))


def _seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


class Variant:
    """One model under one setting, compiled and warmed up, ready to time training steps."""

    def __init__(
        self, name: str, cfg: gu.Config, batch: int, compile_options: dict, device: str | None, policy: str = "float32"
    ):
        keras = gu.import_keras()

        self.name, self.cfg, self.batch, self.device, self.policy = name, cfg, batch, device, policy
        keras.mixed_precision.set_global_policy(policy)
        frames = input_frames(cfg)
        rng = np.random.default_rng(cfg.seed)
        heights = {"mel": cfg.n_mels, "cqt": cfg.cqt_bins}
        with self._on_device():
            keras.utils.set_random_seed(cfg.seed)
            self.model = gu.build_model(cfg)
            self.x = {
                t.name: rng.uniform(-80, 0, (batch, heights[t.name], frames, 1)).astype(np.float16)
                for t in self.model.inputs
            }  # dB values as cached
            self.y = rng.integers(0, len(cfg.genres), batch).astype(np.int32)
            self.model.compile(
                optimizer=keras.optimizers.Adam(cfg.learning_rate),
                loss="sparse_categorical_crossentropy",
                **compile_options,
            )
            self.model.train_on_batch(self.x, self.y)  # warm-up: tracing, compilation, allocation
        keras.mixed_precision.set_global_policy("float32")
        self.forward = forward_flops(self.model, cfg, frames)
        self.speeds: list[float] = []

    def _on_device(self):
        import contextlib

        keras = gu.import_keras()
        return keras.device(self.device) if self.device else contextlib.nullcontext()

    def time_steps(self, steps: int) -> None:
        """Train `steps` steps and record clips per second."""
        with self._on_device():
            start = time.perf_counter()
            for _ in range(steps):
                loss = self.model.train_on_batch(self.x, self.y)
            float(np.asarray(loss))  # wait for asynchronous devices
            self.speeds.append(steps * self.batch / (time.perf_counter() - start))

    @property
    def clips_per_second(self) -> float:
        return statistics.median(self.speeds)


def variants_of(
    model_name: str, compare: list[str], batch: int | None, device: str | None, precisions: list[str]
) -> list[tuple[str, gu.Config, int, dict, str]]:
    """(label, cfg, batch, compile options, policy) of every variant of one model to measure."""
    cfg = model_config(model_name)
    batch = batch or cfg.batch_size
    if not compare:  # what genre_utils.train uses: Keras' defaults (XLA off on a CPU, on for a GPU)
        return [("Keras defaults", cfg, batch, {}, policy) for policy in precisions]
    options = [("", cfg, batch, {}, precisions[0])]
    if "jit" in compare:
        options = [(f"jit_compile={jit}", cfg, batch, {"jit_compile": jit}, precisions[0]) for jit in (False, True)]
    if "batch" in compare:
        options = [
            (f"{label} batch {b}".strip(), cfg, b, extra, policy)
            for label, cfg, _, extra, policy in options
            for b in sorted({batch // 2, batch, batch * 2})
        ]
    return options


def run_training(args) -> None:
    keras = gu.import_keras()

    print(gu.describe_devices())
    print(f"{args.steps} timed steps per variant and round, {args.rounds} interleaved rounds, medians\n")
    matmul_rates = {policy: [] for policy in args.precision}
    for model_name in args.models:
        variants = []
        for label, cfg, batch, options, policy in variants_of(
            model_name, args.compare, args.batch, args.device, args.precision
        ):
            variants.append(Variant(f"{label} {policy}".strip(), cfg, batch, options, args.device, policy))
        for _ in range(args.rounds):
            for policy in args.precision:
                matmul_rates[policy].append(reference_gflops(policy))
            for variant in variants:
                variant.time_steps(args.steps)
        matmul = {policy: statistics.median(rates) for policy, rates in matmul_rates.items()}
        first = variants[0]
        cfg = first.cfg
        frames = input_frames(cfg)
        print(
            f"{model_name}: {'+'.join(cfg.branches)}, mel {cfg.n_mels}x{frames}, CQT {cfg.cqt_bins}x{frames}; "
            f"forward {first.forward / 1e9:.3f} GFLOP, training step {3 * first.forward / 1e9:.3f} GFLOP per clip"
        )
        print(f"  {'variant':<40} {'batch':>5} {'clips/s':>9} {'GFLOP/s':>9} {'of matmul':>9} {'vs first':>8}")
        for variant in variants:
            gflops = variant.clips_per_second * 3 * variant.forward / 1e9
            print(
                f"  {variant.name:<40} {variant.batch:>5} {variant.clips_per_second:>9.2f} {gflops:>9.1f} "
                f"{gflops / matmul[variant.policy]:>8.1%} {variant.clips_per_second / first.clips_per_second:>7.2f}x",
                flush=True,
            )
        where = "GPU" if gu.gpu_devices() else f"numpy float32 {MATMUL_SIZE}x{MATMUL_SIZE}"
        for policy, rate in matmul.items():
            print(f"  matmul reference ({where}, {policy}): {rate:.1f} GFLOP/s (median of {len(matmul_rates[policy])})")
        print()
        del variants
        keras.backend.clear_session()


def run_loader(args) -> None:
    """Clips per second of the batch loader alone over a synthetic memory-mapped cache at seed size."""
    cfg = gu.get_config("seed", batch_size=args.batch or 32)
    with tempfile.TemporaryDirectory(prefix="genre-loader-") as folder:
        features = synthetic_cache(Path(folder), cfg, args.loader_clips)
        rows = features.rows("training")
        print(
            f"synthetic seed-size cache: {len(features.index)} clips, mel {features.mel.shape[1:]}, "
            f"CQT {features.cqt.shape[1:]} float16, {(features.mel.nbytes + features.cqt.nbytes) / 1e9:.2f} GB "
            "on disk (in the page cache)"
        )
        excerpt = gu.chunk_frames(cfg)
        loaders = {
            "whole clips, shuffled": dict(shuffle=True),
            "chunked excerpts, shuffled": dict(shuffle=True, excerpt_frames=excerpt),
            "whole clips, in order (prediction)": dict(),
        }
        baseline = "whole clips, shuffled, normalised to float32 (before)"
        threaded = "whole clips, shuffled, 2 threads"
        speeds = {label: [] for label in [baseline, *loaders, threaded]}
        for _ in range(args.rounds):
            speeds[baseline].append(_normalising_loader_speed(features, rows, cfg))
            for label, options in loaders.items():
                batches = gu.feature_batches(features, rows, cfg, ("mel", "cqt"), **options)
                for i in range(len(batches)):  # a row's first visit also checks it for NaN/inf: time later epochs
                    batches[i]
                batches.on_epoch_end()
                start = time.perf_counter()
                for i in range(len(batches)):
                    batches[i]
                speeds[label].append(len(rows) / (time.perf_counter() - start))
                if label == "whole clips, shuffled":  # the same, two batches at a time in threads
                    from concurrent.futures import ThreadPoolExecutor

                    batches.on_epoch_end()
                    with ThreadPoolExecutor(2) as pool:
                        start = time.perf_counter()
                        list(pool.map(batches.__getitem__, range(len(batches))))
                        speeds[threaded].append(len(rows) / (time.perf_counter() - start))
        print(
            f"{'loader (batch ' + str(cfg.batch_size) + ', median of ' + str(args.rounds) + ')':<55} "
            f"{'clips/s':>9} {'vs before':>9}"
        )
        for label, values in speeds.items():
            speed = statistics.median(values)
            print(f"{label:<55} {speed:>9.0f} {speed / statistics.median(speeds[baseline]):>8.1f}x")
        del features, batches


def _normalising_loader_speed(features: gu.Features, rows: np.ndarray, cfg: gu.Config) -> float:
    """Clips/s of the loader before the model normalised its inputs: shuffled whole clips, an isfinite
    check, then per-band standardisation in float32 in numpy (the baseline of the loader rows)."""
    scale = {
        name: (
            np.full((getattr(features, name).shape[1], 1), -40, np.float32),
            np.full((getattr(features, name).shape[1], 1), 23, np.float32),
        )
        for name in ("mel", "cqt")
    }
    order = np.random.default_rng(0).permutation(rows)
    start = time.perf_counter()
    for first in range(0, len(order), cfg.batch_size):
        batch = np.sort(order[first : first + cfg.batch_size])
        for name, (mean, std) in scale.items():
            clips = getattr(features, name)[batch]
            assert np.isfinite(clips).all()
            ((clips.astype(np.float32) - mean) / std)[..., np.newaxis]
    return len(order) / (time.perf_counter() - start)


def synthetic_cache(folder: Path, cfg: gu.Config, n_clips: int) -> gu.Features:
    """A finished feature cache of `n_clips` random dB rows at cfg's size, in the cache's on-disk layout."""
    import pandas as pd

    rng = np.random.default_rng(0)
    splits = np.array(gu.SPLITS)[rng.choice(3, n_clips, p=[0.8, 0.1, 0.1])]
    labels = rng.integers(0, len(cfg.genres), n_clips)
    index = pd.DataFrame(
        {"genre": np.array(cfg.genres)[labels], "split": splits, "label": labels},
        index=pd.RangeIndex(n_clips, name="track_id"),
    )
    for name, height in (("mel", cfg.n_mels), ("cqt", cfg.cqt_bins)):
        array = np.lib.format.open_memmap(
            folder / f"{name}.npy", mode="w+", dtype=np.float16, shape=(n_clips, height, cfg.n_frames)
        )
        for start in range(0, n_clips, 256):
            chunk = rng.uniform(-80, 0, (min(256, n_clips - start), height, cfg.n_frames))
            array[start : start + 256] = chunk.astype(np.float16)
        array.flush()
        del array
    mel = np.load(folder / "mel.npy", mmap_mode="r")
    cqt = np.load(folder / "cqt.npy", mmap_mode="r")
    return gu.Features(index=index, mel=mel, cqt=cqt, path=folder)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["demo-full", "demo-chunked"],
        choices=MODELS,
        help="models to measure (default: the two demo ones)",
    )
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant and round (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (default 3)")
    parser.add_argument("--batch", type=int, default=None, help="clips per step (default: the preset's, 32)")
    parser.add_argument(
        "--compare",
        nargs="*",
        default=[],
        choices=["jit", "batch"],
        help="compare jit_compile off/on and/or half, the preset's and double batch",
    )
    parser.add_argument("--device", default=None, help="keras device, e.g. cpu:0 or gpu:0 (default: Keras' choice)")
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["float32"],
        choices=["float32", "mixed", "mixed_bfloat16"],
        help="dtype policies; mixed = the one configure_devices picks for the GPU; mixed_bfloat16 forced "
        "(e.g. on a CPU with AVX512-BF16)",
    )
    parser.add_argument("--loader", action="store_true", help="measure the batch loader alone instead")
    parser.add_argument("--loader-clips", type=int, default=2048, help="clips in the synthetic loader cache")
    args = parser.parse_args(argv)
    mixed = gu.configure_devices()  # first, so that each variant's own policy sticks
    args.precision = [mixed if p == "mixed" else p for p in args.precision]
    if args.precision == ["float32", "float32"]:  # no GPU: mixed precision means float32 here
        args.precision = ["float32"]
    if args.loader:
        run_loader(args)
    else:
        run_training(args)


if __name__ == "__main__":
    main()
