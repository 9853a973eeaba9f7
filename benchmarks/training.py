"""Training throughput of the report's CNN: clips per second on the CPU and on every GPU.

Trains the SEED model (128 x 1292 mel, 84 x 1292 CQT: 30 s clips) on random batches, a few steps
after one warm-up step (tracing/compilation), and prints one row per device with the speed-up
over the first row (the CPU, measured in the same run). Works with every Keras backend:

    python benchmarks/training.py                      # backend from KERAS_BACKEND (default tensorflow)
    KERAS_BACKEND=jax python benchmarks/training.py --steps 20 --batch 64
    python benchmarks/training.py --profile demo --branches mel_vertical   # one branch, demo size
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import genre_utils as gu  # noqa: E402


def measure(cfg: gu.Config, device: str, policy: str, steps: int, batch: int) -> float:
    """Clips per second of `steps` training steps on `device` under a dtype `policy`, after a warm-up step."""
    keras = gu.import_keras()

    keras.mixed_precision.set_global_policy(policy)
    rng = np.random.default_rng(cfg.seed)
    x = {
        "mel": rng.standard_normal((batch, cfg.n_mels, cfg.n_frames, 1), dtype=np.float32),
        "cqt": rng.standard_normal((batch, cfg.cqt_bins, cfg.n_frames, 1), dtype=np.float32),
    }
    y = rng.integers(0, len(cfg.genres), batch)
    with keras.device(device):
        model = gu.build_model(cfg)
        x = {tensor.name: x[tensor.name] for tensor in model.inputs}
        model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="sparse_categorical_crossentropy")
        model.train_on_batch(x, y)  # warm-up: tracing, compilation, memory allocation
        start = time.perf_counter()
        for _ in range(steps):
            loss = model.train_on_batch(x, y)
        float(np.asarray(loss))  # wait for asynchronous devices
        return steps * batch / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per device (default 3)")
    parser.add_argument("--batch", type=int, default=None, help="clips per step (default: the preset's, 32)")
    parser.add_argument("--profile", default="seed", choices=sorted(gu.PRESETS), help="model and input size")
    parser.add_argument("--branches", nargs="+", default=None, choices=gu.BRANCHES, help="model branches")
    args = parser.parse_args(argv)
    keras = gu.import_keras()

    cfg = gu.get_config(args.profile)
    if args.branches:
        cfg = cfg.replace(branches=tuple(args.branches))
    batch = args.batch or cfg.batch_size
    print(gu.describe_devices())
    print(f"{args.profile} model {'+'.join(cfg.branches)}, mel {cfg.n_mels}x{cfg.n_frames}, "
          f"CQT {cfg.cqt_bins}x{cfg.n_frames}, batch {batch}, {args.steps} timed steps\n")
    runs = [("cpu:0", "CPU", "float32")]
    mixed = gu.configure_devices()
    for i, (name, _) in enumerate(gu.gpu_devices()):
        runs += [(f"gpu:{i}", f"GPU {i} {name}", "float32"), (f"gpu:{i}", f"GPU {i} {name}", mixed)]
    print(f"{'device':<40} {'precision':<16} {'clips/s':>9} {'vs CPU':>7}")
    baseline = None
    for device, label, policy in runs:
        speed = measure(cfg, device, policy, args.steps, batch)
        baseline = baseline or speed
        print(f"{label:<40} {policy:<16} {speed:>9.1f} {speed / baseline:>6.1f}x", flush=True)
    keras.mixed_precision.set_global_policy(mixed)


if __name__ == "__main__":
    main()
