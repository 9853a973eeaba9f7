"""Benchmark: clips per second of musicnn embedding extraction (decode, log-mel patches, network, pooling).

Compares (a) the plain per-file loop (one network in this process; for each file librosa.load at
16 kHz, `musicnn_patches`, the network's compiled predict function on the file's patches, mean and max
of the penultimate layer; (a') the same calling the network eagerly, as `musicnn_outputs` did before)
with (b) `pretrained_embeddings` in one process (its default: the network itself uses every core) and
(c) `pretrained_embeddings` in one process per core, each network on one thread; checks that all of
them give the same embeddings, and prints the ratios against (a) measured in the same run.
Needs the converted weights (`make musicnn`).

    .venv/bin/python benchmarks/embeddings.py --clips 8            # synthesized 30 s MP3s
    .venv/bin/python benchmarks/embeddings.py --audio-dir /path/to/mp3s --clips 32
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from features import synthesize_clips  # noqa: E402

import genre_utils as gu  # noqa: E402


def plain_embedding(path: Path, model, seconds: float, eager: bool = False) -> np.ndarray:
    """The straightforward computation for one file: decode, patches, network, pooling; `eager` calls
    the network directly, as `musicnn_outputs` did before it used the compiled predict function."""
    import librosa

    y, _ = librosa.load(path, sr=gu.MUSICNN_SAMPLE_RATE, duration=seconds)
    y = librosa.util.fix_length(y, size=int(gu.MUSICNN_SAMPLE_RATE * seconds))
    patches = gu.musicnn_patches(y)
    if eager:
        penultimate = np.asarray(model(patches.astype(np.float32), training=False)["penultimate"])
    else:
        penultimate = gu.musicnn_outputs(patches, model)["penultimate"]
    return np.concatenate([penultimate.mean(axis=0), penultimate.max(axis=0)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8, help="clips (default 8)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the clips used, s")
    parser.add_argument("--audio-dir", type=Path, help="use the MP3s under this folder instead")
    parser.add_argument("--workers", type=int, default=gu._available_cores(), help="processes for (c)")
    args = parser.parse_args()
    cfg = gu.get_config("seed", clip_seconds=args.seconds)

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
            f"{len(paths)} clips of {args.seconds:g} s ({int(args.seconds // 3)} patches of 3 s each); "
            f"{gu._available_cores()} cores"
        )

        model = gu.load_musicnn()
        plain_embedding(paths[0], model, args.seconds)  # warm-up: imports, first calls, graph tracing
        start = time.perf_counter()
        reference = np.stack([plain_embedding(path, model, args.seconds) for path in paths])
        timings = {"(a) plain per-file loop, 1 process": time.perf_counter() - start}
        plain_embedding(paths[0], model, args.seconds, eager=True)
        start = time.perf_counter()
        eager = np.stack([plain_embedding(path, model, args.seconds, eager=True) for path in paths])
        timings["(a') the same, network called eagerly (before)"] = time.perf_counter() - start
        results = {"(a') the same, network called eagerly (before)": eager}
        for name, workers in (
            ("(b) pretrained_embeddings, 1 process", 1),
            (f"(c) pretrained_embeddings, {args.workers} processes", args.workers),
        ):
            start = time.perf_counter()
            results[name] = gu.pretrained_embeddings(tracks, cfg, cache_dir=tmp / f"cache{workers}", workers=workers)
            timings[name] = time.perf_counter() - start
        base_rate = len(paths) / timings["(a) plain per-file loop, 1 process"]
        rows = []
        for name, seconds in timings.items():
            embeddings = results.get(name)
            difference = 0.0 if embeddings is None else float(np.abs(np.asarray(embeddings) - reference).max())
            rate = len(paths) / seconds
            rows.append(
                {
                    "variant": name,
                    "seconds": seconds,
                    "clips/s": rate,
                    "vs plain loop": rate / base_rate,
                    "max |diff|": difference,
                }
            )
        print(pd.DataFrame(rows).set_index("variant").to_string(float_format=lambda x: f"{x:.3g}"))
        print(
            "(b) and (c) include their start-up: (c) starts one process per worker, each importing Keras and "
            "building the network; a larger --clips shows the steady rate"
        )


if __name__ == "__main__":
    main()
