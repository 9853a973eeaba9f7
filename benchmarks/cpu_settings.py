"""TensorFlow's CPU settings for training: oneDNN kernels and the thread pool, each in its own process.

TensorFlow reads TF_ENABLE_ONEDNN_OPTS and TF_NUM_INTRAOP_THREADS once, when it starts, so every
setting trains in a fresh process: the demo network (`benchmarks/training.py`'s Variant) for --steps
steps on random batches after a warm-up step (tracing), alone, then as two processes at once (what
`make test` does on two cores). Rounds alternate the settings; the table gives medians and ratios
against oneDNN off, TensorFlow's default on every CPU but recent Intel ones. genre_utils switches
oneDNN on (its import sets TF_ENABLE_ONEDNN_OPTS=1 unless set); the Makefile's test target runs
one thread per job.

    python benchmarks/cpu_settings.py
    python benchmarks/cpu_settings.py --model demo-chunked --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {  # label: environment
    "oneDNN off (TensorFlow's default here)": {"TF_ENABLE_ONEDNN_OPTS": "0"},
    "oneDNN on (genre_utils)": {"TF_ENABLE_ONEDNN_OPTS": "1"},
    "oneDNN on, 1 thread (make test)": {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_NUM_INTRAOP_THREADS": "1"},
}


def worker(model: str, steps: int) -> None:
    """Train `model` for `steps` steps in this process; print clips/s and the warm-up seconds as JSON."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from training import Variant, model_config

    cfg = model_config(model)
    start = time.perf_counter()
    variant = Variant(model, cfg, cfg.batch_size, {}, None)
    warmup = time.perf_counter() - start
    variant.time_steps(steps)
    print(json.dumps({"clips_per_second": variant.clips_per_second, "warmup_seconds": warmup}))


def run(setting: dict, model: str, steps: int, processes: int) -> list[dict]:
    """Start `processes` workers at once under `setting`; their results."""
    command = [sys.executable, __file__, "--worker", "--model", model, "--steps", str(steps)]
    env = {**os.environ, **setting}
    for name in ("TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTRAOP_THREADS"):
        if name not in setting:
            env.pop(name, None)
    jobs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    results = []
    for job in jobs:
        out, _ = job.communicate()
        if job.returncode:
            raise SystemExit(f"worker failed under {setting} (exit {job.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-full", help="a benchmarks/training.py model (default demo-full)")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per process (default 6)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.model, args.steps)

    alone = {label: [] for label in SETTINGS}
    paired = {label: [] for label in SETTINGS}
    warmups = {label: [] for label in SETTINGS}
    for _ in range(args.rounds):
        for label, setting in SETTINGS.items():
            result = run(setting, args.model, args.steps, 1)[0]
            alone[label].append(result["clips_per_second"])
            warmups[label].append(result["warmup_seconds"])
            paired[label] += [r["clips_per_second"] for r in run(setting, args.model, args.steps, 2)]
    base = next(iter(SETTINGS))
    median = {label: statistics.median(values) for label, values in alone.items()}
    median2 = {label: statistics.median(values) for label, values in paired.items()}
    print(f"{args.model}, {args.steps} steps per process, {args.rounds} rounds, medians; {os.cpu_count()} cores")
    print(f"{'setting':<40} {'alone clips/s':>13} {'vs off':>7} {'2 at once, each':>15} {'vs off':>7} {'warm-up s':>9}")
    for label in SETTINGS:
        print(
            f"{label:<40} {median[label]:>13.1f} {median[label] / median[base]:>6.2f}x {median2[label]:>15.1f} "
            f"{median2[label] / median2[base]:>6.2f}x {statistics.median(warmups[label]):>9.1f}"
        )


if __name__ == "__main__":
    main()
