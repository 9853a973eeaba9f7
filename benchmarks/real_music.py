"""Real recordings: every method cross-validated on the same stratified folds, one table.

Reads any folder-per-genre set of audio (`DIR/<genre>/*.mp3|wav|...`, any genre names), extracts the
features once (cached) from the whole of each recording (its own length, the median of the files;
`--seconds S` cuts shorter), runs the chosen methods on k stratified folds repeated R times with
other fold seeds (`genre_utils.cross_validate`) and prints one row per method: parameters, training
time per fold, accuracy +- standard error over all folds, the worst fold, macro F1 and the gap to the
SVM baseline measured in the same run. Saves the table as CSV (columns method, accuracy_mean,
accuracy_se, accuracy_min, macro_f1, train_seconds, parameters), as markdown, and the per-fold
numbers, into --out.

    python benchmarks/real_music.py --list                       # the methods
    python benchmarks/real_music.py --methods svm,logistic       # baselines only, in seconds
    python benchmarks/real_music.py --methods all --max-folds 2 --repeats 1 --out /tmp/screen  # a quicker screening
    python benchmarks/real_music.py --data /data/gtzan           # another dataset
    python benchmarks/real_music.py --seconds 10                 # the first 10 s of each recording
    python benchmarks/real_music.py --methods musicnn-finetune --add  # one more row in the saved tables

Per-fold runs are kept under --work, in a folder named by the dataset and its features' key
(`genre_utils.features_key`: the files, their sizes and times, the clip length), so two datasets never
share one; a rerun reads finished folds back only when they were computed from the same inputs.

Methods are registered with `@register(name, description)` on a factory taking the `Inputs` (cfg,
tracks, cached features and statistics) and returning a `cross_validate` method; the CNN methods
are the `demo` preset (the report's recipe at demo size), the `recipe` preset, the recipe with
one ingredient removed or added (ABLATIONS) and the recipe with musicnn's embedding as a fourth input
(late fusion); classifiers on frozen musicnn embeddings (the MSD network's alone or with the
statistics, the MagnaTagATune network's, both networks'), and musicnn fine-tuned. `--add` adds
methods to the saved tables without rerunning the others (a CNN recipe fold costs 3-6 CPU minutes on
2 cores).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import genre_utils as gu  # noqa: E402

DEFAULT_DATA = gu.ROOT / "data" / "realmusic"  # one folder of recordings per genre (README: Results)
DEFAULT_OUT = gu.ROOT / "benchmarks" / "results" / "real_music"  # the tables (small, committed)
DEFAULT_WORK = gu.ROOT / "runs" / "real_music"  # per-fold runs, one folder per dataset and clip length
DEFAULT_METHODS = ("svm", "logistic", "cnn-report", "cnn-recipe")
DEFAULT_LABEL = "real recordings of 4 genres (Emotify excerpts of the Magnatune catalogue)"  # the default data


@dataclass
class Inputs:
    """What the method factories close over: the dataset, its config and its cached inputs."""

    tracks: pd.DataFrame  # load_tracks output
    cfg: gu.Config  # the `demo` preset's features, this dataset's genres and data root
    workers: int | None = None  # processes decoding the audio (None: one per core)

    @functools.cached_property
    def features(self) -> gu.Features:
        return gu.extract_features(self.tracks, self.cfg, workers=self.workers)

    @functools.cached_property
    def statistics(self) -> pd.DataFrame:
        return gu.extract_clip_statistics(self.tracks, self.cfg, workers=self.workers)

    @functools.cached_property
    def embeddings(self) -> pd.DataFrame:
        return gu.pretrained_embeddings(self.tracks, self.cfg, workers=self.workers)

    @functools.cached_property
    def embeddings_mtt(self) -> pd.DataFrame:
        return gu.pretrained_embeddings(self.tracks, self.cfg, workers=self.workers, network="mtt")

    @functools.cached_property
    def patches(self) -> tuple[np.ndarray, np.ndarray]:
        return gu.musicnn_clip_patches(self.tracks, self.cfg)

    def preset(self, profile: str, **changes) -> gu.Config:
        """A preset with this dataset's data root, genres, clip length and cache (same feature settings as cfg)."""
        return gu.get_config(
            profile,
            self.cfg.data_root,
            genres=self.cfg.genres,
            clip_seconds=self.cfg.clip_seconds,
            cache_dir=self.cfg.cache_dir,
            runs_dir=self.cfg.runs_dir,
            seed=self.cfg.seed,
            **changes,
        )


METHODS: dict[str, tuple[str, callable]] = {}  # name -> (description, factory(Inputs) -> method)


def register(name: str, description: str):
    """Add a method factory to METHODS under `name` (decorator)."""

    def decorator(factory):
        METHODS[name] = (description, factory)
        return factory

    return decorator


@register("svm", "baseline: MFCC/spectral statistics + SVM (RBF)")
def _svm(inputs: Inputs):
    return gu.baseline_method(inputs.statistics, inputs.tracks, "svm", inputs.cfg.seed)


@register("logistic", "baseline: MFCC/spectral statistics + logistic regression")
def _logistic(inputs: Inputs):
    return gu.baseline_method(inputs.statistics, inputs.tracks, "logistic", inputs.cfg.seed)


@register("cnn-report", "CNN, the report's recipe (demo preset: whole clips, 20 epochs)")
def _cnn_report(inputs: Inputs):
    return gu.cnn_method(inputs.features, inputs.preset("demo"))


@register("cnn-recipe", "CNN, the improved recipe (recipe preset)")
def _cnn_recipe(inputs: Inputs):
    return gu.cnn_method(inputs.features, inputs.preset("recipe"))


@register(
    "cnn-musicnn", "CNN, the improved recipe, with musicnn's embedding joined before its dense layer (late fusion)"
)
def _cnn_musicnn(inputs: Inputs):
    return gu.cnn_method(
        inputs.features.with_embeddings(inputs.embeddings), inputs.preset("recipe", musicnn_input=True)
    )


def _musicnn_factory(kind: str):
    def factory(inputs: Inputs):
        return gu.embedding_method(inputs.embeddings, inputs.tracks, inputs.cfg, kind, inputs.cfg.seed)

    return factory


for _kind, _label in (("logistic", "logistic regression"), ("svm", "SVM (RBF)"), ("mlp", "MLP")):
    register(f"musicnn-{_kind}", f"frozen musicnn (MSD) embeddings + {_label}")(_musicnn_factory(_kind))


@register("musicnn-stats", "frozen musicnn embeddings and MFCC/spectral statistics + logistic regression")
def _musicnn_stats(inputs: Inputs):
    both = inputs.embeddings.join(inputs.statistics, how="inner")
    return gu.embedding_method(both, inputs.tracks, inputs.cfg, "logistic", inputs.cfg.seed)


@register("musicnn-mtt", "frozen musicnn (MagnaTagATune) embeddings + logistic regression")
def _musicnn_mtt(inputs: Inputs):
    return gu.embedding_method(inputs.embeddings_mtt, inputs.tracks, inputs.cfg, "logistic", inputs.cfg.seed)


@register("musicnn-both", "frozen musicnn embeddings of both networks (MSD and MagnaTagATune) + logistic regression")
def _musicnn_both(inputs: Inputs):
    both = inputs.embeddings.join(inputs.embeddings_mtt, how="inner")
    return gu.embedding_method(both, inputs.tracks, inputs.cfg, "logistic", inputs.cfg.seed)


@register("musicnn-finetune", "musicnn fine-tuned: a genre head, then mid- and back-end (front-end frozen)")
def _musicnn_finetune(inputs: Inputs):
    patches, clips = inputs.patches
    return gu.finetune_method(patches, clips, inputs.tracks, inputs.cfg)


# The ablation: the recipe preset with one ingredient removed (or added), everything else equal
ABLATIONS = {
    "recipe-whole-clips": ("recipe without random excerpts (whole clips)", dict(train_mode="full")),
    "recipe-no-mixup": ("recipe without mixup", dict(mixup_alpha=0.0)),
    "recipe-no-masks": ("recipe without SpecAugment masks", dict(time_masks=0, freq_masks=0)),
    "recipe-no-smoothing": ("recipe without label smoothing", dict(label_smoothing=0.0)),
    "recipe-no-weight-decay": ("recipe without weight decay (Adam)", dict(weight_decay=0.0)),
    "recipe-step-schedule": (
        "recipe with the report's step schedule, no warm-up",
        dict(lr_schedule="step", warmup_epochs=0.0),
    ),
    "recipe-best-checkpoint": (
        "recipe predicting with its checkpoint of best validation accuracy, not the averaged final weights",
        dict(checkpoint="best", monitor="val_accuracy"),
    ),
    "recipe-gain": ("recipe plus random gain (+-6 dB)", dict(gain_db=6.0)),
    "recipe-wide": (
        "recipe with twice the width (first-block channels 16, dense 128)",
        dict(first_block_channels=16, dense_units=128),
    ),
    "report-chunked": ("the report's recipe on random excerpts only (demo preset, chunked)", None),
}


def _ablation_factory(name: str, changes: dict | None):
    def factory(inputs: Inputs):
        cfg = inputs.preset("demo", train_mode="chunked") if changes is None else inputs.preset("recipe", **changes)
        return gu.cnn_method(inputs.features, cfg)

    return factory


for _name, (_description, _changes) in ABLATIONS.items():
    register(_name, _description)(_ablation_factory(_name, _changes))


def markdown_table(summary: pd.DataFrame, descriptions: dict[str, str]) -> str:
    """The summary as a markdown table: method, parameters, training time, accuracy +- SE, worst fold, macro F1."""
    lines = [
        "| method | parameters | training (s per fold, CPU) | accuracy ± SE | worst fold | macro F1 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in summary.itertuples():
        lines.append(
            f"| {descriptions.get(row.method, row.method)} (`{row.method}`) | {row.parameters:,} | "
            f"{row.train_seconds:.1f} | {row.accuracy_mean:.3f} ± {row.accuracy_se:.3f} | "
            f"{row.accuracy_min:.3f} | {row.macro_f1:.3f} |"
        )
    return "\n".join(lines) + "\n"


def recordings_seconds(tracks: pd.DataFrame) -> float:
    """The recordings' own length: the median duration of the readable files, to 0.1 s (DataError if none)."""
    seconds = gu.audio_info(tracks["path"])["seconds"].dropna()
    if seconds.empty:
        raise gu.DataError(f"{tracks['path'].iloc[0]}: no audio file's header could be read")
    return float(np.floor(seconds.median() * 10) / 10)


def recordings_fingerprint(tracks: pd.DataFrame) -> str:
    """16 hex digits naming the recordings: each file's genre folder, name and size. Unlike
    `gu.features_key` it leaves out modification times, which a new checkout or copy changes, so the
    same recordings anywhere give the same fingerprint, and other recordings in the same folder another."""
    files = sorted(
        f"{genre}/{Path(path).name} {Path(path).stat().st_size}" for genre, path in tracks[["genre", "path"]].values
    )
    return hashlib.sha256("\n".join(files).encode()).hexdigest()[:16]


# what --add checks: the same recordings, cut alike, on the same folds
SAME_RUN = ("recordings", "clips", "genres", "clip_seconds", "folds", "repeats", "max_folds", "seed")


def data_folder(data: Path) -> str:
    """The data folder as saved in run.json: relative to the project when inside it, else its name alone
    (the recordings themselves are identified by `recordings`)."""
    path = Path(data).resolve()
    return str(path.relative_to(gu.ROOT)) if path.is_relative_to(gu.ROOT) else path.name


def added_to_tables(out: Path, summary: pd.DataFrame, per_fold: pd.DataFrame, run: dict):
    """(summary, per_fold, run, note) of the tables in `out` with this run's methods added or replacing theirs.

    The earlier run must have had the same SAME_RUN settings, hence the same folds (DataError naming the
    difference otherwise). Rows keep the earlier order, new methods last; run.json records when the
    kept rows were measured, and `note` names those of other days for the markdown header."""
    earlier = json.loads((out / "run.json").read_text())
    differ = [
        f"{key} {earlier.get(key)!r} there, {run[key]!r} here" for key in SAME_RUN if earlier.get(key) != run[key]
    ]
    if differ:
        raise gu.DataError(f"{out}: --add needs the tables of the same folds; {'; '.join(differ)}")
    old_summary, old_folds = pd.read_csv(out / "summary.csv"), pd.read_csv(out / "per_fold.csv")
    kept = [method for method in old_summary["method"] if method not in set(summary["method"])]
    order = [*old_summary["method"], *(m for m in summary["method"] if m not in set(old_summary["method"]))]
    summary = pd.concat([old_summary[old_summary["method"].isin(kept)], summary])
    summary = summary.set_index("method").loc[order].reset_index()
    per_fold = pd.concat([old_folds[old_folds["method"].isin(kept)], per_fold])
    per_fold = per_fold.sort_values("method", key=lambda m: m.map(order.index), kind="stable")
    kept_dates = {method: earlier.get("kept", {}).get(method, earlier["date"]) for method in kept}
    run = run | {"methods": {m: (earlier["methods"] | run["methods"])[m] for m in order}, "kept": kept_dates}
    note = "; ".join(f"{m} from {d}" for m, d in kept_dates.items() if d != run["date"])
    return summary, per_fold.reset_index(drop=True), run, f" ({note})" if note else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=None, help=f"folder-per-genre dataset (default {DEFAULT_DATA} when it exists)"
    )
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated method names (see --list; default {','.join(DEFAULT_METHODS)}; 'all' runs every one)",
    )
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="repeated cross-validation: the folds drawn R times with fold seeds seed, seed+1, ... (default 3)",
    )
    parser.add_argument(
        "--max-folds",
        type=int,
        default=None,
        help="run only the first N folds of each split (quick screening; default all)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="seconds of each recording used, from its start (default: the recordings' own length, all of it)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that decode the recordings and compute their inputs (default: one per CPU core)",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the folds and the models (default 42)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    parser.add_argument(
        "--work",
        type=Path,
        default=DEFAULT_WORK,
        help=f"folder of the per-fold runs (default {DEFAULT_WORK}); each dataset and clip length gets its own "
        "sub-folder, reused when rerun",
    )
    parser.add_argument(
        "--label", help="how tables name the data (default: the default data's description, else the folder's name)"
    )
    parser.add_argument(
        "--add",
        action="store_true",
        help="add these methods' rows to the tables already in --out, which must come from the same recordings "
        "(their names and sizes), clip length, folds, repeats and seed (run.json); rows of the same methods are "
        "replaced, the others kept",
    )
    parser.add_argument("--list", action="store_true", help="list the methods and exit")
    args = parser.parse_args(argv)

    if args.list:
        for name, (description, _) in METHODS.items():
            print(f"{name:<26} {description}")
        return 0
    names = list(METHODS) if args.methods == "all" else [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        parser.error(f"unknown method(s) {', '.join(unknown) or '(none given)'}; --list shows them")
    if args.seconds is not None and args.seconds <= 0:
        parser.error(f"--seconds {args.seconds:g}: need a positive length")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers {args.workers}: need at least one")
    data = args.data or DEFAULT_DATA
    if args.data is None and not DEFAULT_DATA.is_dir():
        parser.error(f"no dataset at {DEFAULT_DATA}; pass --data DIR (a folder holding one folder of audio per genre)")
    try:
        genres = gu.folder_genres(data)
        cfg = gu.get_config("demo", data, genres=genres, seed=args.seed)
        tracks = gu.load_tracks(cfg.data_root, genres=genres, seed=args.seed)
        whole = recordings_seconds(tracks)
        seconds = whole if args.seconds is None else min(args.seconds, whole)
        cfg = cfg.replace(clip_seconds=seconds)
        length = f"whole {seconds:g} s recordings" if seconds == whole else f"the first {seconds:g} s of each recording"
        work = args.work / f"{gu._safe_name(Path(cfg.data_root).name)}-{seconds:g}s-{gu.features_key(tracks, cfg)}"
        inputs = Inputs(tracks, cfg, args.workers)
        methods = {name: METHODS[name][1](inputs) for name in names}
        labels = tracks["genre"]
        if any(name.startswith(("cnn", "recipe", "report")) for name in names):  # clips whose features exist
            labels = labels[labels.index.isin(inputs.features.index.index)]
        if any("musicnn" in name for name in names):  # clips whose embeddings exist
            labels = labels[labels.index.isin(inputs.embeddings.index)]
        if any(name in ("musicnn-mtt", "musicnn-both") for name in names):
            labels = labels[labels.index.isin(inputs.embeddings_mtt.index)]
        if "musicnn-finetune" in names:  # clips whose patches exist
            labels = labels[labels.index.isin(inputs.patches[1])]
        print(
            f"{len(labels)} clips of {len(genres)} genres ({', '.join(genres)}) in {cfg.data_root}, {length}; "
            f"{args.folds}-fold cross-validation x {args.repeats} repeats, seed {args.seed}; runs in {work}"
        )
        result = gu.cross_validate(
            methods,
            labels,
            cfg,
            folds=args.folds,
            seed=args.seed,
            out_dir=work,
            max_folds=args.max_folds,
            repeats=args.repeats,
        )
    except gu.GenreError as exc:
        parser.exit(1, f"{parser.prog}: error: {exc}\n")

    summary, per_fold = result.summary, result.folds
    descriptions = {name: METHODS[name][0] for name in names}
    label = args.label or (
        DEFAULT_LABEL if data == DEFAULT_DATA else f"folder-per-genre set '{Path(data).name}' of {len(genres)} genres"
    )
    run = {
        "data": data_folder(data),
        "label": label,
        "clips": len(labels),
        "genres": list(genres),
        "clip_seconds": seconds,
        "recording_seconds": whole,
        "features_key": gu.features_key(tracks, cfg),
        "recordings": recordings_fingerprint(tracks),
        "folds": args.folds,
        "repeats": args.repeats,
        "max_folds": args.max_folds,
        "seed": args.seed,
        "date": date.today().isoformat(),
        "methods": descriptions,
    }
    kept = ""
    if args.add and (args.out / "run.json").is_file():
        try:
            summary, per_fold, run, kept = added_to_tables(args.out, summary, per_fold, run)
        except gu.DataError as exc:
            parser.exit(1, f"{parser.prog}: error: {exc}\n")
    summary = summary.round(6)  # as the CSV keeps them, so that every table and figure rounds alike
    args.out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(args.out / "summary.csv", index=False, float_format="%.6g")
    per_fold.to_csv(args.out / "per_fold.csv", index=False, float_format="%.6g")
    scope = f"the first {args.max_folds} folds of " if args.max_folds and args.max_folds < args.folds else ""
    header = (
        f"{label[0].upper() + label[1:]}: {len(labels)} clips ({', '.join(genres)}), {length}, "
        f"{scope}{args.folds}-fold stratified cross-validation repeated {args.repeats} times (fold seeds "
        f"{args.seed}-{args.seed + args.repeats - 1}), {date.today().isoformat()}{kept}. Accuracy: mean ± "
        "standard error over all folds; worst fold: the lowest fold accuracy.\n\n"
    )
    (args.out / "summary.md").write_text(header + markdown_table(summary, run["methods"]))
    (args.out / "run.json").write_text(json.dumps(run, indent=2) + "\n")

    baseline = summary.set_index("method")["accuracy_mean"].get("svm")
    print(
        f"\n{'method':<26} {'parameters':>10} {'train s/fold':>12} {'accuracy ± SE':>15} {'worst':>6} "
        f"{'macro F1':>8}{'  vs SVM':>9}"
    )
    for row in summary.itertuples():
        gap = f"{100 * (row.accuracy_mean - baseline):+8.1f}" if baseline is not None else ""
        print(
            f"{row.method:<26} {row.parameters:>10,} {row.train_seconds:>12.1f} "
            f"{row.accuracy_mean:>8.3f} ± {row.accuracy_se:.3f} {row.accuracy_min:>6.3f} {row.macro_f1:>8.3f} {gap}"
        )
    if baseline is not None:
        print("(vs SVM: accuracy points above the SVM baseline of this run)")
    print(f"\nwritten: {args.out / 'summary.csv'}, summary.md, per_fold.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
