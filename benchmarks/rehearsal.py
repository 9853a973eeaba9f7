"""Rehearsal of a real FMA-small run at full scale, on synthetic data: time, memory and disk per step.

Generates a demo dataset with FMA-small's shape (8 genres x N clips of 30 s at 22,050 Hz in FMA's
layout, split 80/10/10), then runs the seed preset through the real path, each step in its own
child process so that its peak memory is its own:

    data      make_demo_dataset, every core (stands in for `make fma`: download and unpack)
    check     check_dataset: every file's header read, as after `make fma`
    features  extract_features: mel + CQT of every clip into the cache, every core
    train     one pass of the input pipeline alone over the training split, then one epoch of the
              report's model on it, validated on the validation split (--train-clips: on part of them)

For each step it prints the wall time, peak memory (RSS of the step's own process from getrusage;
and the sum over it and its worker processes, sampled with psutil: all of it, and the anonymous
part, without the file pages of memory maps, which the kernel can drop at will) and what it wrote
to disk; then the same extrapolated linearly to FMA-small's 8,000 clips (time and data grow with
the clips; memory does not, as every step streams: see the table's note).

    python benchmarks/rehearsal.py --clips-per-genre 125    # 1/8 of FMA-small
    python benchmarks/rehearsal.py                          # FMA-small's size: 1,000 per genre
    python benchmarks/rehearsal.py --clips-per-genre 125 --steps train --train-clips 64   # again, cheaper
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import genre_utils as gu  # noqa: E402

FMA_SMALL_CLIPS_PER_GENRE = 1000
FMA_SMALL_TRAINING = 6398  # clips of FMA-small's training split that decode (the report's count)
STEPS = ("data", "check", "features", "train")


def config(work: Path) -> gu.Config:
    """The seed preset, with every folder under `work`."""
    return gu.get_config("seed", work / "fma", cache_dir=work / "cache", runs_dir=work / "runs")


def run_step(step: str, work: Path, clips_per_genre: int, train_clips: int | None = None) -> dict:
    """Run one step in this process; returns what it measured beyond time and memory."""
    cfg = config(work)
    if step == "data":
        tracks = gu.make_demo_dataset(cfg.data_root, cfg, clips_per_genre=clips_per_genre, progress=False)
        return {"clips": len(tracks)}
    if step == "check":
        check = gu.check_dataset(cfg)
        return {"clips": len(check.tracks), "problems": len(check.problems)}
    tracks = gu.load_tracks(cfg.data_root, seed=cfg.seed)
    if step == "features":
        timings = {}
        for name in ("_finish_partial", "_band_stats"):  # time the finishing work inside extraction
            original = getattr(gu, name)

            def timed(*args, _original=original, _name=name, **kwargs):
                start = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    timings[_name] = timings.get(_name, 0.0) + time.perf_counter() - start

            setattr(gu, name, timed)
        features = gu.extract_features(tracks, cfg)
        return {
            "clips": len(features.index),
            "finish_seconds": round(timings.get("_finish_partial", 0), 1),
            "stats_seconds": round(timings.get("_band_stats", 0), 1),
        }
    if step == "train":
        features = gu.extract_features(tracks, cfg)
        if train_clips:  # an epoch over the first clips of each split only; the others are set aside
            splits = features.index["split"]
            wanted = np.where(splits == "training", train_clips, max(1, train_clips // 8))
            kept = splits.groupby(splits).cumcount() < wanted
            index = features.index.assign(split=splits.where(kept, "unused"))
            features = dataclasses.replace(features, index=index)
        # the input pipeline alone first: a GPU cannot train faster than this feeds it
        batches = gu.feature_batches(features, features.rows("training"), cfg, shuffle=True)
        start = time.perf_counter()
        for number in range(len(batches)):
            batches[number]
        loader_rate = len(features.rows("training")) / (time.perf_counter() - start)
        model = gu.build_model(cfg)
        history = gu.train(model, features, cfg.replace(epochs=1), cfg.runs_dir / "rehearsal", verbose=0)
        clips = len(features.rows("training"))
        return {
            "clips": clips,
            "epoch_seconds": round(float(history["epoch_seconds"].iloc[-1]), 1),
            "loader_clips_per_s": round(loader_rate, 1),
            "val_accuracy": round(float(history["val_accuracy"].iloc[-1]), 3),
        }
    raise ValueError(step)


def child_main(step: str, work: Path, clips_per_genre: int, train_clips: int | None) -> None:
    """Entry point of a step's child process: run it, print its measures as one JSON line."""
    start = time.perf_counter()
    measured = run_step(step, work, clips_per_genre, train_clips)
    measured["step_seconds"] = round(time.perf_counter() - start, 1)
    measured["self_peak_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB on Linux
    measured["worker_peak_mib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    print("RESULT " + json.dumps(measured), flush=True)


def tree_memory(process) -> tuple[int, int]:
    """(RSS, anonymous RSS) in bytes of a process and all its descendants."""
    import psutil

    total = anonymous = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            info = member.memory_info()
        except psutil.Error:  # ended meanwhile
            continue
        total += info.rss
        anonymous += info.rss - getattr(info, "shared", 0)  # shared: file-backed and shared-memory pages
    return total, anonymous


def measure(step: str, work: Path, clips_per_genre: int, train_clips: int | None) -> dict:
    """Run `step` in a child process, sampling the memory of its process tree; returns its measures."""
    command = [
        sys.executable,
        __file__,
        "--child",
        step,
        "--work",
        str(work),
        "--clips-per-genre",
        str(clips_per_genre),
    ]
    if train_clips:
        command += ["--train-clips", str(train_clips)]
    start = time.perf_counter()
    # the child's output goes to files: a pipe nobody reads while it runs would fill up and block it
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        child = subprocess.Popen(command, stdout=out_file, stderr=err_file, text=True)
        peak = peak_anonymous = 0
        try:
            import psutil

            process = psutil.Process(child.pid)
            while child.poll() is None:
                total, anonymous = tree_memory(process)
                peak, peak_anonymous = max(peak, total), max(peak_anonymous, anonymous)
                time.sleep(0.2)
        except ImportError:  # without psutil only the getrusage peaks are known
            child.wait()
        wall = time.perf_counter() - start
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    results = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if child.returncode or not results:
        raise SystemExit(f"step {step} failed (exit {child.returncode}):\n{err[-3000:]}")
    measured = json.loads(results[-1].removeprefix("RESULT "))
    measured.update(
        wall_seconds=round(wall, 1),
        tree_peak_mib=round(peak / 2**20),
        tree_anonymous_peak_mib=round(peak_anonymous / 2**20),
    )
    return measured


def disk_use(folder: Path) -> int:
    """Bytes allocated on disk under `folder`."""
    return sum(path.stat().st_blocks * 512 for path in folder.rglob("*") if path.is_file()) if folder.exists() else 0


FOLDERS = {"data": "fma", "features": "cache", "train": "runs"}  # what each step writes, under --work


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clips-per-genre",
        type=int,
        default=FMA_SMALL_CLIPS_PER_GENRE,
        help=f"clips per genre (default {FMA_SMALL_CLIPS_PER_GENRE}, FMA-small's)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=ROOT / "data" / "rehearsal",
        help="folder for the dataset, cache and run (default data/rehearsal)",
    )
    parser.add_argument(
        "--steps",
        nargs="+",
        choices=STEPS,
        default=list(STEPS),
        help="steps to run (default all); each empties what it writes first, later steps use what earlier runs left",
    )
    parser.add_argument(
        "--train-clips",
        type=int,
        default=None,
        help="train the epoch on this many training clips (and validate on an eighth as many, "
        "FMA's ratio) instead of the whole splits, on a slow machine; times are scaled up",
    )
    parser.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.work, args.clips_per_genre, args.train_clips)
        return

    work = args.work.resolve()
    for step in args.steps:
        if step in FOLDERS:
            shutil.rmtree(work / FOLDERS[step], ignore_errors=True)
    n_clips = 8 * args.clips_per_genre
    print(
        f"rehearsal: seed preset, 8 genres x {args.clips_per_genre} clips of 30 s in {work}; "
        f"{gu._available_cores()} cores, load average {os.getloadavg()[0]:.1f} at the start"
    )
    rows = []
    for step in (step for step in STEPS if step in args.steps):
        measured = measure(step, work, args.clips_per_genre, args.train_clips)
        measured["disk_gib"] = round(disk_use(work / FOLDERS[step]) / 2**30, 3) if step in FOLDERS else 0.0
        rows.append((step, measured))
        print(f"  {step}: {json.dumps(measured)}", flush=True)

    def table(full: bool) -> None:
        print(
            f"{'step':<9} {'clips':>6} {'wall s':>8} {'clips/s':>8} {'peak RSS MiB':>12} {'all procs':>10} "
            f"{'anonymous':>10} {'writes GiB':>10}"
        )
        for step, measured in rows:
            clips, seconds, disk = measured["clips"], measured["wall_seconds"], measured["disk_gib"]
            if full:  # the clips of FMA-small this step handles
                target = FMA_SMALL_TRAINING if step == "train" else 8 * FMA_SMALL_CLIPS_PER_GENRE
                if step == "train":  # the epoch alone: not the batches' pass nor the start-up
                    seconds, disk = measured["epoch_seconds"] * target / clips, disk
                else:
                    seconds, disk = seconds * target / clips, disk * target / clips
                clips = target
            print(
                f"{step:<9} {clips:>6} {seconds:>8.0f} {clips / seconds:>8.2f} {measured['self_peak_mib']:>12} "
                f"{measured['tree_peak_mib']:>10} {measured['tree_anonymous_peak_mib']:>10} {disk:>10.2f}"
            )

    print(f"\nmeasured, {n_clips} clips:")
    table(full=False)
    print(
        f"\nextrapolated to FMA-small ({8 * FMA_SMALL_CLIPS_PER_GENRE} clips, {FMA_SMALL_TRAINING} of them for "
        "training): wall time and what data and cache write grow with the clips (each step's fixed start-up, "
        "imports and model building are scaled too: slight overestimates); the run folder's checkpoints do not; "
        "memory as measured (no step holds more than a batch or a clip per process; the memory maps' file "
        "pages, counted in 'all procs', are the kernel's page cache)"
    )
    table(full=True)
    train = dict(rows).get("train")
    if train:
        print(
            f"\ntraining: {train['clips'] / train['epoch_seconds']:.2f} clips/s in the epoch "
            f"({train['clips']} clips in {train['epoch_seconds']} s with validation); the batches alone "
            f"(memory maps read, normalised, one process): {train['loader_clips_per_s']} clips/s"
        )


if __name__ == "__main__":
    main()
