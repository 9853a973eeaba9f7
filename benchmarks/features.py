"""Benchmark: clips per second of decoding + mel-spectrogram + CQT, at the report's settings.

Compares (a) the straightforward loop of the course skeleton (one file at a time: librosa.load
with its default resampling, librosa.feature.melspectrogram, librosa.cqt) with (b) our
extract_features in one process and (c) extract_features on every core, checks that all three
give the same features, and projects the time for FMA-small (8,000 clips of 30 s).

    .venv/bin/python benchmarks/features.py --clips 16            # synthesized 30 s MP3s
    .venv/bin/python benchmarks/features.py --audio-dir data/fma/fma_small/000
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import genre_utils as gu  # noqa: E402

FILE_RATE = 44_100  # Hz, the sample rate of FMA's MP3s
FMA_SMALL_CLIPS = 8_000


def synthesize_clips(folder: Path, n_clips: int, seconds: float, seed: int = 0) -> list[Path]:
    """Stereo MP3s of random chords over a noise-burst beat, `seconds` long, at 44.1 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(FILE_RATE * seconds)) / FILE_RATE
    paths = []
    for number in range(n_clips):
        chord = 110 * 2 ** (rng.integers(0, 24, size=3) / 12)
        tones = sum(
            np.sin(2 * np.pi * f * t) * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.1, 1) * t)) for f in chord
        )
        beat = rng.standard_normal(t.size) * np.exp(-((t * rng.uniform(1.5, 3.0)) % 1.0) * 30)
        y = 0.2 * tones / len(chord) + 0.2 * beat
        path = folder / f"{number:06d}.mp3"
        sf.write(path, np.stack([y, np.roll(y, 50)], axis=1).astype(np.float32), FILE_RATE)
        paths.append(path)
    return paths


def baseline_features(path: Path, cfg: gu.Config) -> tuple[np.ndarray, np.ndarray]:
    """The straightforward per-file computation, with librosa's defaults wherever it has one."""
    import librosa

    y, sr = librosa.load(path, sr=cfg.sample_rate, duration=cfg.clip_seconds)
    y = librosa.util.fix_length(y, size=cfg.n_samples)
    mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels)
    constant_q = np.abs(
        librosa.cqt(
            y,
            sr=sr,
            hop_length=cfg.hop_length,
            fmin=cfg.cqt_fmin,
            n_bins=cfg.cqt_bins,
            bins_per_octave=cfg.cqt_bins_per_octave,
        )
    )
    return (
        librosa.power_to_db(mel, ref=np.max, top_db=gu.TOP_DB),
        librosa.amplitude_to_db(constant_q, ref=np.max, top_db=gu.TOP_DB),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16, help="synthesized clips (default 16)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of synthesized clips, s (10-30)")
    parser.add_argument("--audio-dir", type=Path, help="use the MP3s under this folder instead")
    parser.add_argument("--workers", type=int, default=gu._available_cores(), help="processes for (c)")
    args = parser.parse_args()
    cfg = gu.get_config("seed")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.audio_dir:
            paths = sorted(args.audio_dir.rglob("*.mp3"))[: args.clips]
        else:
            (tmp / "audio").mkdir()
            paths = synthesize_clips(tmp / "audio", args.clips, args.seconds)
        tracks = pd.DataFrame(
            {"genre": [cfg.genres[i % len(cfg.genres)] for i in range(len(paths))], "split": "training", "path": paths},
            index=pd.Index(range(len(paths)), name="track_id"),
        )
        print(
            f"{len(paths)} clips, {cfg.sample_rate} Hz, {cfg.clip_seconds:g} s, {cfg.n_mels} mel bands, "
            f"{cfg.cqt_bins} CQT bins; {gu._available_cores()} cores"
        )

        baseline_features(paths[0], cfg)  # warm-up: imports and librosa's first-call compilation
        start = time.perf_counter()
        reference = [baseline_features(path, cfg) for path in paths]
        timings = {"(a) baseline loop, librosa defaults": (time.perf_counter() - start, len(paths))}  # (s, clips)

        results = {}
        parallel = f"(c) extract_features, {args.workers} processes"
        for name, workers in (("(b) extract_features, 1 process", 1), (parallel, args.workers)):
            start = time.perf_counter()
            results[name] = gu.extract_features(tracks, cfg, cache_dir=tmp / f"cache{workers}", workers=workers)
            timings[name] = (time.perf_counter() - start, len(paths))
        # Worker processes start once per run (interpreter, imports, librosa's first call). Time a
        # run of one clip per worker to tell that apart from the rate of a long run like FMA-small.
        start = time.perf_counter()
        gu.extract_features(tracks.iloc[: args.workers], cfg, cache_dir=tmp / "startup", workers=args.workers)
        startup = time.perf_counter() - start
        if timings[parallel][0] > 1.5 * startup:  # the start-up run also did one clip per worker
            steady = f"(c) without its {startup:.1f} s start-up"
            timings[steady] = (timings[parallel][0] - startup, len(paths) - args.workers)
            results[steady] = results[parallel]

        base_rate = len(paths) / timings["(a) baseline loop, librosa defaults"][0]
        rows = []
        for name, (seconds, clips) in timings.items():
            features = results.get(name)
            if features is None:
                difference = 0.0
            else:
                difference = max(
                    max(np.abs(features.mel[i] - mel).max(), np.abs(features.cqt[i] - constant_q).max())
                    for i, (mel, constant_q) in enumerate(reference)
                )
            rate = clips / seconds
            rows.append(
                {
                    "variant": name,
                    "seconds": seconds,
                    "clips/s": rate,
                    "vs baseline": rate / base_rate,
                    "max |diff| dB": difference,
                }
            )
        table = pd.DataFrame(rows).set_index("variant")
        print(table.to_string(float_format=lambda x: f"{x:.3g}"))
        best = table["clips/s"].max()
        print(
            f"projected for FMA-small ({FMA_SMALL_CLIPS:,} clips of 30 s) at {best:.3g} clips/s: "
            f"{FMA_SMALL_CLIPS / best / 60:.1f} min (baseline: {FMA_SMALL_CLIPS / base_rate / 60:.1f} min)"
        )
        if len(timings) == 3:
            print(f"worker start-up ({startup:.1f} s) dominates (c): pass more --clips for its steady rate")
        if args.audio_dir is None and args.seconds != 30.0:
            print(f"(measured on {args.seconds:g} s files: decoding 30 s files takes longer)")
        print("max |diff| against the baseline includes float16 storage rounding (<= 0.03 dB)")


if __name__ == "__main__":
    main()
