"""A small FMA-small look-alike with the real set's faults, for running the notebooks with the seed preset.

    python tests/fma_fixture.py data/fma-fixture [Hip-Hop,Pop,Folk]

FMA's layout (fma_metadata/tracks.csv with its two-level header, fma_small/000/000002.mp3) with
CLIPS_PER_GENRE synthesized 30 s clips of each genre given (comma-separated, at least three: each fault
below is in its own genre; default FMA-small's eight) by
`make_demo_dataset`, split 2/1/1, and the faults of a real download: one MP3 truncated to its header
(undecodable, as the demo has), one empty file (an interrupted unzip; `load_tracks` skips it) and one clip
much shorter than 30 s (as FMA-small's few). Deterministic: the same files every time.
"""

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import genre_utils as gu  # noqa: E402

CLIPS_PER_GENRE = 4  # two to train on, one to validate, one to test: a seed-preset epoch costs ~40 clip passes
SHORT_SECONDS = 12.0  # the short clip's length


def make_fma_fixture(root: Path, genres=gu.GENRES) -> None:
    if len(genres) < 3:
        raise SystemExit(f"fma_fixture.py: {len(genres)} genres given; the three faults need three genres")
    cfg = gu.get_config("seed", data_root=root, genres=tuple(genres))
    gu.make_demo_dataset(root, cfg, clips_per_genre=CLIPS_PER_GENRE, progress=False)
    metadata = gu.read_fma_tracks(root / "fma_metadata" / "tracks.csv")
    small = metadata[metadata["set", "subset"] == "small"].sort_index()
    order = small.groupby(("track", "genre_top")).cumcount()  # FMA's 80/10/10 would leave 4 clips unsplit
    metadata.loc[small.index, ("set", "split")] = order.map({0: "training", 1: "training", 2: "validation", 3: "test"})
    metadata.to_csv(root / "fma_metadata" / "tracks.csv")
    tracks = gu.load_tracks(root, cfg.subset, cfg.genres)
    truncated = next(t for t, path in tracks["path"].items() if Path(path).stat().st_size < 1000)  # the demo's one
    others = tracks[tracks["genre"] != tracks.at[truncated, "genre"]]  # every genre keeps a clip to train on
    genres = others["genre"].unique()
    empty = others.index[(others["genre"] == genres[0]) & (others["split"] == "test")][0]
    short = others.index[(others["genre"] == genres[1]) & (others["split"] == "training")][0]
    Path(tracks.at[empty, "path"]).write_bytes(b"")
    rng = np.random.default_rng([cfg.seed, short])
    audio = gu.synthesize_clip(tracks.at[short, "genre"], int(SHORT_SECONDS * cfg.sample_rate), cfg.sample_rate, rng)
    sf.write(tracks.at[short, "path"], audio, cfg.sample_rate, format="MP3", subtype="MPEG_LAYER_III")


if __name__ == "__main__":
    make_fma_fixture(Path(sys.argv[1]).resolve(), sys.argv[2].split(",") if len(sys.argv) > 2 else gu.GENRES)
