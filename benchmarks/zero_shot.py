"""Zero-shot genres: how well musicnn's MSD tags, mapped by `gu.ZERO_SHOT_GENRES`, name real genres.

No training, so no folds: every recording of a folder-per-genre set is predicted once from its MSD
tag probabilities averaged over its 3 s patches (the `taggram` mean of the cached musicnn embeddings,
`gu.pretrained_embeddings`; the whole of each recording). Its folder names are matched to the FMA-small
genres by name (letters and digits, any case: "hiphop" is Hip-Hop), "classical" counting as
Instrumental. Prints the accuracy of the module's rule (each genre: the highest probability among its
tags) beside the other ways of combining a genre's tags, measured in the same run, with the ratio to
the module's rule, and the confusion table of the module's rule; saves both into --out.

    python benchmarks/zero_shot.py                   # ../shared/realmusic when it exists
    python benchmarks/zero_shot.py --data /data/gtzan --out /tmp/zero_shot
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from real_music import recordings_seconds  # noqa: E402

import genre_utils as gu  # noqa: E402

DEFAULT_DATA = gu.ROOT / "data" / "realmusic"
DEFAULT_OUT = gu.ROOT / "benchmarks" / "results" / "zero_shot"
ALIASES = {"classical": "Instrumental"}  # folder genres FMA-small files under another name

# ways of turning a genre's tag probabilities into its score; "max" is the module's
RULES = {
    "max": lambda p: p.max(axis=1),
    "mean": lambda p: p.mean(axis=1),
    "sum": lambda p: p.sum(axis=1),
    "noisy-or": lambda p: 1 - np.prod(1 - p, axis=1),
}


def fma_genre(folder: str) -> str | None:
    """The FMA-small genre a folder name stands for, or None."""
    by_key = {gu._genre_key(genre): genre for genre in gu.GENRES}
    return ALIASES.get(folder.lower(), by_key.get(gu._genre_key(folder)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"folder-per-genre set (default {DEFAULT_DATA})"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    try:
        genres = gu.folder_genres(args.data)
        tracks = gu.load_tracks(args.data, genres=genres)
        cfg = gu.get_config("demo", args.data, genres=genres, clip_seconds=recordings_seconds(tracks))
        embeddings = gu.pretrained_embeddings(tracks, cfg, layers=("taggram",))
    except gu.GenreError as exc:
        parser.exit(1, f"{parser.prog}: error: {exc}\n")
    tags = embeddings[[f"taggram_mean_{unit:03d}" for unit in range(len(gu.MUSICNN_TAGS))]]
    tags.columns = list(gu.MUSICNN_TAGS)
    truth = tracks.loc[tags.index, "genre"].map(fma_genre)
    unmatched = sorted(set(tracks["genre"]) - {g for g in genres if fma_genre(g)})
    if unmatched:
        print(f"left out, no FMA-small genre of that name: {', '.join(unmatched)}")
    tags, truth = tags[truth.notna()], truth.dropna()

    predictions = {
        rule: pd.DataFrame(
            {g: combine(tags[list(t)].to_numpy()) for g, t in gu.ZERO_SHOT_GENRES.items()}, tags.index
        ).idxmax(axis=1)
        for rule, combine in RULES.items()
    }
    predicted = gu.zero_shot_genres(tags).idxmax(axis=1)
    assert predicted.equals(predictions["max"]), "the module's rule is RULES['max']"
    table = pd.DataFrame({"rule": list(RULES), "accuracy": [float((p == truth).mean()) for p in predictions.values()]})
    table["vs max"] = table["accuracy"] / table["accuracy"].iloc[0]
    confusion = pd.crosstab(truth.rename("true"), predicted.rename("predicted"))
    print(f"{len(truth)} recordings of {args.data} ({', '.join(sorted(truth.unique()))}), {cfg.clip_seconds:g} s each")
    print(table.to_string(index=False, float_format="%.3f"))
    print(confusion.to_string())
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "rules.csv", index=False, float_format="%.6g")
    confusion.to_csv(args.out / "confusion.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
