"""Memory of one training step of the report's CNN, per preset, input and batch, measured.

Each row (--configs) is one training step: the seed preset on whole 30 s clips at batch 32 (the
report's), 16 and 8, the same 32 clips as 4 accumulated micro-batches of 8, 3 s excerpts at batch 32
(chunked training), and the demo preset at batch 32. Three ways to measure (--method):

    xla     where JAX is installed (the GPU check's wheels carry it): XLA's compiled memory analysis of
            one training step, Keras' own JAXTrainer.train_step under jax.jit as `fit` compiles it,
            `.lower(state, batch).compile().memory_analysis()`: arguments + temporaries + outputs. Only
            compiled, never run: fast, on whichever device JAX has. On a CPU, XLA turns 16-bit
            convolutions back into float32 (so it says nothing about mixed precision there) and its
            max-pool gradients carry int32 index tensors a GPU compile would not; cuDNN workspace and
            allocator overhead are not in it.
    rss     otherwise (the default without JAX): one TensorFlow CPU training step (`train_on_batch`) in
            a fresh child process per row, whose peak RSS (getrusage ru_maxrss) is reported with the
            baseline subtracted: the peak of a child of the same preset that built, compiled and fed the
            same model everything but the step. The step includes its tracing, as the first step of
            `fit` does.
    device  on a GPU (benchmarks/gpu_check.sh): the backend's peak device memory over a few training
            steps (JAX peak_bytes_in_use, torch max_memory_allocated, TensorFlow's get_memory_info peak,
            via `genre_utils.device_memory`), in a fresh child process per row and precision.

Every table gives each row's ratio to the first row measured in the same run (the report's step by
default) and its memory per clip of the micro-batch.

    python benchmarks/memory.py                                        # every row, xla or rss
    python benchmarks/memory.py --configs seed-full-b8 demo-full-b32   # some rows (the seed b32 rss step needs ~11 GiB)
    python benchmarks/memory.py --method device --precision float32 mixed   # on a GPU
    python benchmarks/memory.py --accuracy    # demo set: batch 32 against 4 x 8 accumulated, 20 epochs each

--accuracy trains the demo preset twice from the same seed, plainly and with accumulation_steps=4
(`cnn_experiment`, into --runs), and prints optimiser steps, validation and test accuracy (48 clips
each) with their binomial standard errors, the scale of the noise between two such runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import genre_utils as gu  # noqa: E402

CONFIGS = {  # row name: (preset, train mode, batch size, accumulation steps), the report's step first
    "seed-full-b32": ("seed", "full", 32, 1),
    "seed-full-b16": ("seed", "full", 16, 1),
    "seed-full-b8": ("seed", "full", 8, 1),
    "seed-full-b32-acc4": ("seed", "full", 32, 4),
    "seed-chunked-b32": ("seed", "chunked", 32, 1),
    "demo-full-b32": ("demo", "full", 32, 1),
}
METHODS = ("xla", "rss", "device")
DEVICE_STEPS = 3  # training steps a device row runs: the first compiles, later ones show steady state
GIB, MIB = 2**30, 2**20


def config(name: str) -> gu.Config:
    """The Config of a row name such as "seed-full-b32-acc4"."""
    preset, mode, batch, steps = CONFIGS[name]
    return gu.get_config(preset, train_mode=mode, batch_size=batch, accumulation_steps=steps)


def frames(cfg: gu.Config) -> int:
    """Frames of one training input: the whole clip, or one excerpt in chunked mode."""
    return gu.chunk_frames(cfg) if cfg.train_mode == "chunked" else cfg.n_frames


def describe(name: str) -> tuple[str, str]:
    """(what is trained, batch) of a row, for the table."""
    cfg = config(name)
    what = "whole clip" if cfg.train_mode == "full" else f"{cfg.chunk_seconds:g} s excerpts"
    inputs = f"{cfg.profile}, {what} ({cfg.n_mels} + {cfg.cqt_bins} bins x {frames(cfg)} frames)"
    micro = gu.micro_batch_size(cfg)
    return inputs, (f"{cfg.accumulation_steps} x {micro}" if cfg.accumulation_steps > 1 else str(cfg.batch_size))


def set_precision(precision: str) -> str:
    """Set Keras' dtype policy: "mixed" is the one `configure_devices` picks (float32 without a GPU)."""
    keras = gu.import_keras()

    policy = gu.configure_devices() if precision == "mixed" else precision
    keras.mixed_precision.set_global_policy(policy)
    return policy


def compiled_model(cfg: gu.Config):
    """(model compiled as `train` compiles it, one micro-batch (x, y) of random dB values)."""
    keras = gu.import_keras()

    keras.utils.set_random_seed(cfg.seed)
    model = gu.build_model(cfg)
    micro = gu.micro_batch_size(cfg)
    rng = np.random.default_rng(cfg.seed)
    heights = {"mel": cfg.n_mels, "cqt": cfg.cqt_bins}
    x = {t.name: rng.uniform(-80, 0, (micro, heights[t.name], frames(cfg), 1)).astype(np.float16) for t in model.inputs}
    y = rng.integers(0, len(cfg.genres), micro).astype(np.int32)
    steps_per_epoch = 200  # FMA-small's 6,400 training clips in batches of 32; only the schedule's scale
    model.compile(
        optimizer=gu._optimizer(cfg, steps_per_epoch), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model, x, y


def xla_analysis(name: str, precision: str) -> dict:
    """XLA's memory analysis of one compiled (never run) training step of row `name`, JAX backend."""
    import jax

    keras = gu.import_keras()

    cfg = config(name)
    policy = set_precision(precision)
    model, x, y = compiled_model(cfg)
    model._symbolic_build(data_batch=(x, y))  # optimizer and metric variables, as `fit` builds them
    state = model._get_jax_state(
        trainable_variables=True, non_trainable_variables=True, optimizer_variables=True, metrics_variables=True
    )
    step = jax.jit(model.train_step, donate_argnums=0)  # as JAXTrainer.make_train_function compiles it
    analysis = step.lower(state, (x, y)).compile().memory_analysis()
    keras.backend.clear_session()
    return {
        "policy": policy,
        "device": jax.devices()[0].device_kind,
        "arguments": analysis.argument_size_in_bytes,
        "temporaries": analysis.temp_size_in_bytes,
        "outputs": analysis.output_size_in_bytes,
        "aliased": analysis.alias_size_in_bytes,
        "bytes": analysis.argument_size_in_bytes + analysis.temp_size_in_bytes + analysis.output_size_in_bytes,
    }


def peak_rss() -> int:
    """This process's peak resident set size, bytes (ru_maxrss: KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def child_main(name: str, method: str, precision: str) -> None:
    """Entry point of a row's child process: measure, print one RESULT line of JSON."""
    keras = gu.import_keras()

    cfg = config(name)
    policy = set_precision(precision)
    model, x, y = compiled_model(cfg)
    model.optimizer.build(model.trainable_variables)
    result = {"policy": policy, "devices": gu.describe_devices()}
    if method == "baseline":  # everything but the step
        result["peak_rss"] = peak_rss()
    else:
        start = time.perf_counter()
        for _ in range(DEVICE_STEPS if method == "device" else 1):
            loss = model.train_on_batch(x, y)
        float(np.ravel(loss)[0])  # waits for an asynchronous device (loss, accuracy)
        result.update(seconds=time.perf_counter() - start, peak_rss=peak_rss())
        if method == "device":
            memory = gu.device_memory()
            result.update(peak_device=memory["peak"], total_device=memory["total"], device=memory["device"])
    keras.backend.clear_session()
    print("RESULT " + json.dumps(result), flush=True)


def in_child(name: str, method: str, precision: str, timeout: float) -> dict:
    """Run `child_main` for one row in a fresh process; its RESULT, or {"error": ...}."""
    command = [sys.executable, __file__, "--child", name, "--child-method", method, "--precision", precision]
    # the child's output goes to files: a pipe nobody reads while it runs could fill up and block it
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        try:
            code = subprocess.run(command, stdout=out, stderr=err, text=True, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return {"error": f"no result within {timeout:.0f} s"}
        out.seek(0)
        err.seek(0)
        results = [line for line in out.read().splitlines() if line.startswith("RESULT ")]
        if code or not results:
            tail = [line for line in err.read().splitlines() if line.strip()][-3:]
            return {"error": f"exit {code}: " + " | ".join(tail)[-400:]}
    return json.loads(results[-1].removeprefix("RESULT "))


def size(n_bytes: float | None) -> str:
    """Bytes as GiB (or MiB below 1 GiB)."""
    if n_bytes is None:
        return "n/a"
    return f"{n_bytes / GIB:.1f} GiB" if abs(n_bytes) >= GIB else f"{n_bytes / MIB:.0f} MiB"


def print_row(name: str, policy: str, measured: float | None, first: float | None, extra: str = "") -> None:
    inputs, batch = describe(name)
    micro = gu.micro_batch_size(config(name))
    if measured is None:
        print(f"{inputs:<52} {batch:>6} {policy:<15} {extra}")
        return
    ratio = f"{measured / first:.2f}x" if first else "-"
    print(f"{inputs:<52} {batch:>6} {policy:<15} {size(measured):>10} {size(measured / micro):>9} {ratio:>8} {extra}")


def run_xla(args) -> None:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = gu.import_keras()
    if keras.backend.backend() != "jax":
        raise SystemExit(f"--method xla needs the JAX backend (KERAS_BACKEND is {keras.backend.backend()})")
    print(gu.describe_devices())
    print("XLA memory analysis of one compiled training step: arguments + temporaries + outputs\n")
    print(f"{'preset, input':<52} {'batch':>6} {'precision':<15} {'step':>10} {'per clip':>9} {'vs first':>8} detail")
    first = None
    for precision in args.precision:
        for name in args.configs:
            m = xla_analysis(name, precision)
            first = first or m["bytes"]
            detail = (
                f"args {size(m['arguments'])}, temporaries {size(m['temporaries'])}, outputs "
                f"{size(m['outputs'])} ({size(m['aliased'])} of them aliased to arguments); {m['device']}"
            )
            print_row(name, m["policy"], m["bytes"], first, detail)


def run_rss(args) -> None:
    print(gu.describe_devices())
    print(
        "peak RSS of one TensorFlow training step (train_on_batch, tracing included), one fresh process per "
        "row; step = peak - baseline (a process of the same preset with the model built, compiled and fed)\n"
    )
    baselines = {}
    for preset in dict.fromkeys(CONFIGS[name][0] for name in args.configs):
        row = next(name for name in args.configs if CONFIGS[name][0] == preset)
        baselines[preset] = in_child(row, "baseline", args.precision[0], args.timeout)
        print(f"baseline, {preset} preset: peak RSS {size(baselines[preset].get('peak_rss'))}", flush=True)
    print(
        f"\n{'preset, input':<52} {'batch':>6} {'precision':<15} {'step':>10} {'per clip':>9} {'vs first':>8} "
        "peak RSS, step time"
    )
    first = None
    for name in args.configs:
        m = in_child(name, "rss", args.precision[0], args.timeout)
        base = baselines[CONFIGS[name][0]].get("peak_rss")
        if "error" in m or base is None:
            print_row(name, args.precision[0], None, first, m.get("error", "no baseline"))
            continue
        step = m["peak_rss"] - base
        first = first or step
        print_row(name, m["policy"], step, first, f"{size(m['peak_rss'])}, {m['seconds']:.0f} s")
        sys.stdout.flush()


def run_device(args) -> None:
    # this process never starts the backend: JAX would claim 75 % of the GPU and starve the children
    print(f"peak device memory over {DEVICE_STEPS} training steps, one fresh process per row and precision\n")
    print(f"{'preset, input':<52} {'batch':>6} {'precision':<15} {'peak':>10} {'per clip':>9} {'vs first':>8} device")
    first = devices = None
    for name in args.configs:
        for precision in args.precision:
            m = in_child(name, "device", precision, args.timeout)
            if "error" in m or m.get("peak_device") is None:
                print_row(name, m.get("policy", precision), None, first, m.get("error", "peak not reported"))
                continue
            first, devices = first or m["peak_device"], devices or m["devices"]
            extra = f"{m['device']} ({size(m['total_device'])}), {m['seconds']:.1f} s for {DEVICE_STEPS} steps"
            print_row(name, m["policy"], m["peak_device"], first, extra)
            sys.stdout.flush()
    print(f"\n{devices or 'no row measured'}")


def run_accuracy(args) -> None:
    demo = gu.get_config("demo")
    tracks = gu.load_tracks(demo.data_root, genres=demo.genres, seed=demo.seed)
    features = gu.extract_features(tracks, demo)
    print(gu.describe_devices())
    print(f"{gu.describe_dataset(demo)}; {demo.epochs} epochs, seed {demo.seed}\n")
    print(f"{'demo preset':<24} {'optimiser steps':>15} {'train s':>8} {'validation':>12} {'test':>12}")
    n_val, n_test = len(features.rows("validation")), len(features.rows("test"))
    for label, cfg in (("batch 32", demo), ("4 x 8, accumulated", demo.replace(accumulation_steps=4))):
        run_dir = args.runs / f"memory-accuracy-{cfg.accumulation_steps}"
        row = gu.cnn_experiment(label, cfg, features, run_dir)
        steps = int(gu.load_model(run_dir / "last.keras").optimizer.iterations)

        def scored(accuracy, n):
            return f"{accuracy:.3f}+-{math.sqrt(accuracy * (1 - accuracy) / n):.3f}"

        print(
            f"{label:<24} {steps:>15} {row['train_seconds']:>8.0f} {scored(row['val_accuracy'], n_val):>12} "
            f"{scored(row['test_accuracy'], n_test):>12}",
            flush=True,
        )
    print(f"\n+- binomial standard error of an accuracy on {n_val} validation and {n_test} test clips")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), help="rows to measure (default all)"
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help="xla (default where JAX is installed), rss (default otherwise) or device (on a GPU)",
    )
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["float32"],
        choices=["float32", "mixed", "mixed_bfloat16", "mixed_float16"],
        help="dtype policies (rss: the first only); mixed = the one configure_devices picks (float32 without a GPU)",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a row's child process may take")
    parser.add_argument("--accuracy", action="store_true", help="compare demo-set accuracy, batch 32 against 4 x 8")
    parser.add_argument("--runs", type=Path, default=gu.ROOT / "runs", help="folder of --accuracy's two runs")
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--child-method", choices=["baseline", "rss", "device"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.child_method, args.precision[0])
    elif args.accuracy:
        run_accuracy(args)
    else:
        method = args.method or ("xla" if importlib.util.find_spec("jax") else "rss")
        {"xla": run_xla, "rss": run_rss, "device": run_device}[method](args)


if __name__ == "__main__":
    main()
