"""Peak memory and time of `genre_utils.py predict` on files of 30 s, 30 min and 2 h.

Each row runs the command in a fresh child process on one synthetic recording (chords and noise, written
block by block as 16-bit PCM into a temporary folder) and reports the child's peak resident memory
(getrusage ru_maxrss), its wall time and both ratios to the first row (the 30 s clip), measured in the
same run. The default is zero-shot prediction (musicnn, no run); --run predicts with a trained run
instead (e.g. runs/demo-full after `make demo`). `predict` decodes and classifies a file window by
window, so its peak should not grow with the file's length.

    python benchmarks/predict_memory.py                      # zero-shot, 30 s / 30 min / 2 h
    python benchmarks/predict_memory.py --run runs/demo-full # the report's CNN
    python benchmarks/predict_memory.py --files 30s 30min    # some rows
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
FILES = {  # row name: (seconds, sample rate, channels), the shapes of a song, a concert and a DJ mix
    "30s": (30, 44_100, 2),
    "30min": (30 * 60, 44_100, 2),
    "2h": (2 * 3600, 22_050, 1),
}
MIB = 2**20


def write_recording(path: Path, seconds: int, sr: int, channels: int) -> Path:
    """A recording of chords and noise, written a minute at a time so that writing it needs little memory."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", sr, channels, subtype="PCM_16") as file:
        for start in range(0, seconds, 60):
            t = np.arange(start * sr, min(seconds, start + 60) * sr) / sr
            root = 110 * 2 ** ((start // 60) % 12 / 12)  # a new chord every minute
            y = sum(0.15 * np.sin(2 * np.pi * root * ratio * t) for ratio in (1, 1.26, 1.5))
            y = y + 0.03 * rng.standard_normal(len(t))
            file.write(np.repeat(y[:, None], channels, axis=1) if channels > 1 else y)
    return path


def measure(song: Path, run: str | None) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one `predict` child process."""
    command = [sys.executable, str(ROOT / "genre_utils.py"), "predict", str(song)]
    if run:
        command += ["--run", run]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    out, err = child.stdout.read(), child.stderr.read()
    if status != 0:
        raise SystemExit(f"predict failed on {song.name}:\n{out}{err}")
    print(out.strip().splitlines()[-3 if run is None else -1], file=sys.stderr)
    return usage.ru_maxrss / 1024, seconds  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", nargs="+", default=list(FILES), choices=list(FILES), help="rows to measure")
    parser.add_argument("--run", help="a trained run folder (default: zero-shot genres, no run)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.files:
            seconds, sr, channels = FILES[name]
            song = write_recording(Path(folder) / f"{name}.wav", seconds, sr, channels)
            rss, wall = measure(song, args.run)
            rows.append((name, f"{sr / 1000:g} kHz {'stereo' if channels > 1 else 'mono'}", rss, wall))
            song.unlink()
    base_rss, base_wall = rows[0][2], rows[0][3]
    print(f"| file ({'zero-shot' if args.run is None else args.run}) | audio | peak RSS | ratio | time | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, audio, rss, wall in rows:
        print(f"| {name} | {audio} | {rss:,.0f} MiB | {rss / base_rss:.2f} | {wall:,.1f} s | {wall / base_wall:.1f} |")


if __name__ == "__main__":
    main()
