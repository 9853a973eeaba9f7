"""The improved recipe (`recipe` preset) against the report's recipe (`demo` preset) on the demo data.

The recipe was chosen on real recordings (benchmarks/real_music.py); this checks it is not worse on
the other data the project has, the synthetic demo set, with its own training/validation/test split.
Both runs train the same architecture at the same size with the same seed (`cnn_experiment`, which
reuses a finished run folder with exactly these settings); the table gives validation and test
accuracy (48 clips each: one clip is about 2 points) and training time, and is saved as CSV.

    python benchmarks/recipe_on_demo.py            # runs/recipe-on-demo-<preset>/, about 30 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import genre_utils as gu  # noqa: E402

DEFAULT_OUT = gu.ROOT / "benchmarks" / "results" / "recipe_on_demo.csv"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"CSV written (default {DEFAULT_OUT})")
    parser.add_argument("--runs", type=Path, default=gu.ROOT / "runs", help="folder of the two run folders")
    args = parser.parse_args(argv)

    demo = gu.get_config("demo")
    tracks = gu.load_tracks(demo.data_root, genres=demo.genres)
    features = gu.extract_features(tracks, demo)
    rows = []
    for profile in ("demo", "recipe"):
        cfg = gu.get_config(profile)
        rows.append(gu.cnn_experiment(profile, cfg, features, args.runs / f"recipe-on-demo-{profile}"))
    table = pd.DataFrame(rows).rename_axis("preset")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, float_format="%.6g")
    base = table.loc["demo"]
    print(
        f"{gu.describe_dataset(demo)}; {len(features.rows('validation'))} validation and "
        f"{len(features.rows('test'))} test clips\n"
    )
    print(f"{'preset':<8} {'epochs':>6} {'train s':>8} {'time vs demo':>12} {'validation':>10} {'test':>6}")
    for preset, row in table.iterrows():
        print(
            f"{preset:<8} {row['epochs']:>6} {row['train_seconds']:>8.0f} "
            f"{row['train_seconds'] / base['train_seconds']:>11.2f}x {row['val_accuracy']:>10.3f} "
            f"{row['test_accuracy']:>6.3f}"
        )
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
