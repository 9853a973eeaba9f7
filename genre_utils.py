"""Music-genre classification with a three-branch CNN on mel-spectrograms and CQTs.

The shared code of the genre-cnn notebooks. Its sections, in the order data flows, with their public
names (`__all__` lists the same names in the same order; everything else starts with `_`):

Config and errors: every knob in one dataclass, its presets, and every error class
    ROOT, GENRES, BRANCHES, SPLITS, GenreError, ConfigError, DataError, AudioError, CacheError,
    DownloadError, DeviceMemoryError, Config, PRESETS, RECIPE_SETTINGS, QUICK_SETTINGS, QUICK_DIR, quick_mode,
    get_config, parse_settings
Shared helpers: quiet imports, atomic writes and output-folder errors, used by several sections
    import_keras
Data: track tables for the FMA and folder-per-genre layouts, and audio loading
    AUDIO_EXTENSIONS, load_audio, MAX_AMPLITUDE, FMA_SUBSETS, FMA_REQUIRED_COLUMNS, SPLIT_FRACTIONS, audio_path,
    read_fma_tracks, load_tracks, skipped_tracks, audio_info, folder_genres, DATA_SOURCES, data_source,
    stratified_split
Download: FMA archives fetched, verified and unpacked
    FMA_BASE_URL, FMA_URL_VARIABLE, FmaArchive, FMA_ARCHIVES, FMA_BROKEN_TRACKS, download_fma,
    DatasetCheck, check_dataset
Features: mel-spectrogram and CQT in a resumable on-disk cache, and the baseline's clip statistics
    Features, FEATURES_FORMAT, TOP_DB, FEATURE_SETTINGS, mel_spectrogram, cqt, features_key,
    extract_features, open_features, band_means, BASELINE_MFCCS, CLIP_STATISTICS_FORMAT,
    clip_statistics, extract_clip_statistics
Model: the report's three-branch CNN in backend-neutral Keras 3, and the classical baseline's classifier
    MODEL_BLOCKS, BRANCH_INPUTS, branch_blocks, conv_block, branch, classifier_head, build_model, load_model,
    model_table, branch_parameters, BASELINE_KINDS, baseline_classifier
Pretrained network: musicnn (Pons et al. 2018) ported to Keras 3, frozen or fine-tuned
    MUSICNN_SAMPLE_RATE, MUSICNN_N_FFT, MUSICNN_HOP, MUSICNN_MELS, MUSICNN_PATCH_FRAMES, MUSICNN_TAGS,
    MUSICNN_PACKAGE, MUSICNN_WHEEL_SHA256, MUSICNN_WEIGHTS, MUSICNN_NETWORKS, MUSICNN_LAYERS,
    EMBEDDINGS_FORMAT, EMBEDDING_KINDS, EMBEDDING_LOGISTIC_CS, musicnn_patches, build_musicnn,
    musicnn_weights, load_musicnn,
    fetch_musicnn_weights, musicnn_outputs, musicnn_tags, musicnn_embedding, pretrained_embeddings,
    embedding_classifier, EMBEDDING_RUN_FILES, train_embedding_classifier, load_embedding_run,
    predict_file_embeddings, ZERO_SHOT_GENRES, zero_shot_genres, predict_file_zero_shot, embedding_method,
    MUSICNN_PARTS, FINETUNE_SETTINGS, FINETUNE_RUN_FILES, musicnn_clip_patches, build_musicnn_classifier,
    unfreeze_musicnn, finetune_musicnn, musicnn_clip_proba, finetune_method
Devices and batches: where Keras runs, and normalised batches of whole clips or excerpts
    gpu_devices, configure_devices, describe_devices, device_memory, TRAIN_MODES, EXCERPT_HOP, chunk_frames,
    excerpt_starts, micro_batch_size, feature_batches
Training: Keras fit with checkpoints, logs and resume, one folder per run, read back by load_run
    RUN_FILES, RUN_FORMAT, adapt_normalization, train, LR_SCHEDULES, MONITORS, CHECKPOINTS, step_decay, load_run,
    training_cost
Prediction: genre probabilities of cached clips and of audio files of any length, with their caveats
    predict_proba, predict_file, SILENCE_DB, SHORT_SHARE, audio_warnings
Evaluation: accuracy, per-genre scores, confusion matrix, the comparison with the report, cross-validation
    REPORT_VAL_ACCURACY, REPORT_VAL_CLIPS, Scores, classification_scores, evaluate,
    most_confused_pairs, describe_dataset, compare_with_report, CV_COLUMNS, CV_FORMAT, MethodResult,
    CrossValidation, cross_validation_folds, cross_validate
Interpretation: what the trained CNN attends to (Grad-CAM, occlusion) and how its clips cluster
    OCCLUSION_KINDS, MEL_BANDS, last_block, grad_cam, occlusion_regions, occlusion, region_saliency,
    saliency_profile, cnn_features, embedding_map, neighbour_purity, plot_saliency, plot_occlusion,
    plot_embedding_maps, plot_neighbour_purity
Experiments: one results row per CNN variant or classical baseline, and cross-validation methods of both
    EXPERIMENT_COLUMNS, cnn_experiment, baseline_experiment, cnn_method, baseline_method
Plots: one style and one export helper for every figure, each drawn at its printed size
    FIGURE_DPI, FIGURE_WIDTHS, FIGURE_MAX_HEIGHT, SMALLEST_TEXT, set_plot_style, CAPTIONS_FILE,
    save_figure, figure_captions, plot_mel_vs_cqt, plot_band_frequencies, plot_mean_spectra,
    plot_band_statistics, plot_filter_shapes, plot_learning_curves, plot_confusion_matrix,
    plot_genre_scores, plot_comparison, plot_cross_validation, plot_prediction_timeline
Report: the executed notebooks as one browsable HTML page, the figures as a LaTeX and Markdown pack
    export_report
Demo data: a miniature FMA of procedurally synthesized music, self-contained
    DEMO_VERSION, DEMO_MARKER, make_demo_dataset, synthesize_clip
Command line: python genre_utils.py download | demo-data | report | predict | musicnn-weights | convert-run
    main

Heavy frameworks (Keras and its backend, matplotlib) are imported inside the functions that
need them, so that loading metadata or extracting features in worker processes stays fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import importlib
import importlib.util
import itertools
import json
import os
import platform
import re
import shutil
import sys
import textwrap
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) would fill every notebook output;
# set TF_CPP_MIN_LOG_LEVEL yourself to see it
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow uses oneDNN's CPU kernels only on recent Intel CPUs unless told to: on an AMD EPYC (AVX2)
# the demo network's training steps ran 2.9x faster with them (benchmarks/cpu_settings.py), with the
# same results run after run. Set it to 0 to compare; it applies when this module is imported before
# TensorFlow is
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


__all__ = [
    # Config and errors
    "ROOT",
    "GENRES",
    "BRANCHES",
    "SPLITS",
    "GenreError",
    "ConfigError",
    "DataError",
    "AudioError",
    "CacheError",
    "DownloadError",
    "DeviceMemoryError",
    "Config",
    "PRESETS",
    "RECIPE_SETTINGS",
    "QUICK_SETTINGS",
    "QUICK_DIR",
    "quick_mode",
    "get_config",
    "parse_settings",
    # Shared helpers
    "import_keras",
    # Data
    "AUDIO_EXTENSIONS",
    "load_audio",
    "MAX_AMPLITUDE",
    "FMA_SUBSETS",
    "FMA_REQUIRED_COLUMNS",
    "SPLIT_FRACTIONS",
    "audio_path",
    "read_fma_tracks",
    "load_tracks",
    "skipped_tracks",
    "audio_info",
    "folder_genres",
    "DATA_SOURCES",
    "data_source",
    "stratified_split",
    # Download
    "FMA_BASE_URL",
    "FMA_URL_VARIABLE",
    "FmaArchive",
    "FMA_ARCHIVES",
    "FMA_BROKEN_TRACKS",
    "download_fma",
    "DatasetCheck",
    "check_dataset",
    # Features
    "Features",
    "FEATURES_FORMAT",
    "TOP_DB",
    "FEATURE_SETTINGS",
    "mel_spectrogram",
    "cqt",
    "features_key",
    "extract_features",
    "open_features",
    "band_means",
    "BASELINE_MFCCS",
    "CLIP_STATISTICS_FORMAT",
    "clip_statistics",
    "extract_clip_statistics",
    # Model
    "MODEL_BLOCKS",
    "BRANCH_INPUTS",
    "branch_blocks",
    "conv_block",
    "branch",
    "classifier_head",
    "build_model",
    "load_model",
    "model_table",
    "branch_parameters",
    "BASELINE_KINDS",
    "baseline_classifier",
    # Pretrained network
    "MUSICNN_SAMPLE_RATE",
    "MUSICNN_N_FFT",
    "MUSICNN_HOP",
    "MUSICNN_MELS",
    "MUSICNN_PATCH_FRAMES",
    "MUSICNN_TAGS",
    "MUSICNN_PACKAGE",
    "MUSICNN_WHEEL_SHA256",
    "MUSICNN_WEIGHTS",
    "MUSICNN_NETWORKS",
    "MUSICNN_LAYERS",
    "EMBEDDINGS_FORMAT",
    "EMBEDDING_KINDS",
    "EMBEDDING_LOGISTIC_CS",
    "musicnn_patches",
    "build_musicnn",
    "musicnn_weights",
    "load_musicnn",
    "fetch_musicnn_weights",
    "musicnn_outputs",
    "musicnn_tags",
    "musicnn_embedding",
    "pretrained_embeddings",
    "embedding_classifier",
    "EMBEDDING_RUN_FILES",
    "train_embedding_classifier",
    "load_embedding_run",
    "predict_file_embeddings",
    "ZERO_SHOT_GENRES",
    "zero_shot_genres",
    "predict_file_zero_shot",
    "embedding_method",
    "MUSICNN_PARTS",
    "FINETUNE_SETTINGS",
    "FINETUNE_RUN_FILES",
    "musicnn_clip_patches",
    "build_musicnn_classifier",
    "unfreeze_musicnn",
    "finetune_musicnn",
    "musicnn_clip_proba",
    "finetune_method",
    # Devices and batches
    "gpu_devices",
    "configure_devices",
    "describe_devices",
    "device_memory",
    "TRAIN_MODES",
    "EXCERPT_HOP",
    "chunk_frames",
    "excerpt_starts",
    "micro_batch_size",
    "feature_batches",
    # Training
    "RUN_FILES",
    "RUN_FORMAT",
    "adapt_normalization",
    "train",
    "LR_SCHEDULES",
    "MONITORS",
    "CHECKPOINTS",
    "step_decay",
    "load_run",
    "training_cost",
    # Prediction
    "predict_proba",
    "predict_file",
    "SILENCE_DB",
    "SHORT_SHARE",
    "audio_warnings",
    # Evaluation
    "REPORT_VAL_ACCURACY",
    "REPORT_VAL_CLIPS",
    "Scores",
    "classification_scores",
    "evaluate",
    "most_confused_pairs",
    "describe_dataset",
    "compare_with_report",
    "CV_COLUMNS",
    "CV_FORMAT",
    "MethodResult",
    "CrossValidation",
    "cross_validation_folds",
    "cross_validate",
    # Interpretation
    "OCCLUSION_KINDS",
    "MEL_BANDS",
    "last_block",
    "grad_cam",
    "occlusion_regions",
    "occlusion",
    "region_saliency",
    "saliency_profile",
    "cnn_features",
    "embedding_map",
    "neighbour_purity",
    "plot_saliency",
    "plot_occlusion",
    "plot_embedding_maps",
    "plot_neighbour_purity",
    # Experiments
    "EXPERIMENT_COLUMNS",
    "cnn_experiment",
    "baseline_experiment",
    "cnn_method",
    "baseline_method",
    # Plots
    "FIGURE_DPI",
    "FIGURE_WIDTHS",
    "FIGURE_MAX_HEIGHT",
    "SMALLEST_TEXT",
    "set_plot_style",
    "CAPTIONS_FILE",
    "save_figure",
    "figure_captions",
    "plot_mel_vs_cqt",
    "plot_band_frequencies",
    "plot_mean_spectra",
    "plot_band_statistics",
    "plot_filter_shapes",
    "plot_learning_curves",
    "plot_confusion_matrix",
    "plot_genre_scores",
    "plot_comparison",
    "plot_cross_validation",
    "plot_prediction_timeline",
    # Report
    "export_report",
    # Demo data
    "DEMO_VERSION",
    "DEMO_MARKER",
    "make_demo_dataset",
    "synthesize_clip",
    # Command line
    "main",
]


# ── Config and errors: every knob in one dataclass, its presets, and every error class ──

ROOT = Path(__file__).resolve().parent

GENRES = ("Hip-Hop", "Pop", "Folk", "Rock", "Experimental", "International", "Electronic", "Instrumental")
BRANCHES = ("mel_vertical", "mel_horizontal", "cqt")
SPLITS = ("training", "validation", "test")


class GenreError(Exception):
    """Base class of the errors this project raises on bad input; the message names the file."""


class ConfigError(GenreError):
    """An unknown preset, a missing data root or inconsistent settings."""


class DataError(GenreError):
    """Metadata or a dataset layout that cannot be read."""


class AudioError(GenreError):
    """An audio file that cannot be decoded: empty, truncated, not audio."""


class CacheError(GenreError):
    """A feature cache folder that is missing, unfinished or does not match this code."""


class DownloadError(DataError):
    """A download that failed: an HTTP error, a time-out, a checksum mismatch, a full disk."""


class DeviceMemoryError(GenreError):
    """Training ran out of memory on its device (a GPU, or the CPU's RAM): the message names the device,
    the batch and precision, and the settings that need less memory."""


@dataclass(frozen=True)
class Config:
    """All settings of a run. Build one with `get_config`; change fields with `cfg.replace(...)`."""

    profile: str = "seed"
    # data
    data_root: Path = ROOT / "data" / "fma"  # FMA download (fma_metadata/ + fma_small/) or genre folders
    subset: str = "small"  # FMA subset whose tracks are used
    genres: tuple[str, ...] = GENRES
    cache_dir: Path = ROOT / "cache"  # feature caches, one folder per parameter set
    runs_dir: Path = ROOT / "runs"  # one folder per training run
    figures_dir: Path = ROOT / "figures"  # exported figures (PNG + PDF)
    # audio
    sample_rate: int = 22_050  # Hz
    clip_seconds: float = 30.0  # s; shorter clips are zero-padded, longer ones cropped
    # mel-spectrogram (STFT)
    n_fft: int = 2048  # samples
    hop_length: int = 512  # samples between frames, shared by mel and CQT
    n_mels: int = 128  # mel bands
    # constant-Q transform
    cqt_bins: int = 84  # 7 octaves ...
    cqt_bins_per_octave: int = 12  # ... of 12 semitones
    cqt_fmin: float = 32.70  # Hz, C1
    # model
    branches: tuple[str, ...] = BRANCHES
    first_block_channels: int = 32  # channels of each branch's first conv block; later blocks double up to 8x
    vertical_kernel_share: float = 0.4  # mel_vertical kernels span this share of the bands a block sees ...
    vertical_kernel_frames: int = 3  # ... and this many frames: spectral envelopes (timbre)
    # mel_horizontal kernels: 1 band x this many frames in blocks 1, 2, ... (the last for the rest): rhythm
    horizontal_kernel_frames: tuple[int, ...] = (32, 16, 8)
    cqt_kernel: tuple[int, int] = (3, 3)  # cqt kernels: (bins, frames)
    dense_units: int = 256
    dropout: float = 0.5
    bn_momentum: float = 0.99  # batch norm's moving statistics keep this share per step (Keras' default)
    musicnn_input: bool = False  # late fusion: musicnn's clip embedding as a fourth input to the dense head
    # training
    batch_size: int = 32  # clips per optimiser step
    accumulation_steps: int = 1  # micro-batches of batch_size // this clips per optimiser step (less memory); 1 = off
    epochs: int = 46
    learning_rate: float = 1e-3
    lr_decay_rate: float = 0.3  # learning rate is multiplied by this ...
    lr_decay_epochs: float = 10.0  # ... every this many epochs (smoothly, per step)
    train_mode: str = "full"  # "full": whole clips; "chunked": random chunk_seconds excerpts, clip-level voting
    chunk_seconds: float = 3.0  # s; excerpt length of chunked training
    # training recipe for few clips (see RECIPE_SETTINGS); every default is off: the report's recipe
    mixup_alpha: float = 0.0  # mixup: Beta(alpha, alpha) blend of two clips and their labels; 0 = off
    time_masks: int = 0  # SpecAugment: stripes of frames set to the mean, per training example ...
    time_mask_frames: int = 0  # ... each 0 to this many frames wide
    freq_masks: int = 0  # SpecAugment: stripes of bands set to the mean, per training example ...
    freq_mask_bins: int = 0  # ... each 0 to this many bins high
    gain_db: float = 0.0  # dB: random level offset per training example, uniform in +-gain_db; 0 = off
    label_smoothing: float = 0.0  # share of every target spread evenly over the genres
    weight_decay: float = 0.0  # decoupled weight decay (AdamW, per step, times the learning rate); 0 = Adam
    lr_schedule: str = "step"  # "step": x lr_decay_rate every lr_decay_epochs; "cosine": cosine decay to 0
    warmup_epochs: float = 0.0  # epochs of linear learning-rate warm-up from 0 ("cosine" schedule)
    early_stopping: int = 0  # epochs without a lower val_loss before training stops; 0 = off
    monitor: str = "val_accuracy"  # validation metric that picks best.keras: "val_accuracy" or "val_loss"
    checkpoint: str = "best"  # saved model that predicts after training: "best" (best.keras) or "last" (last.keras)
    use_ema: bool = False  # the optimizer keeps an exponential moving average of the weights, saved as last.keras
    ema_momentum: float = 0.99  # share of that average kept per step (use_ema)
    seed: int = 42
    # how much work the notebooks do; the quick runs of `make test` shrink it (QUICK_SETTINGS)
    chance_margin_sds: float = 2.0  # a trained run beats chance by this many standard errors of guessing
    ablation_branches: tuple[str, ...] = BRANCHES  # branches notebook 06 also trains alone
    musicnn_seconds: float = 0.0  # s of each clip musicnn embeds (notebooks 07, 08, 10); 0 = the whole clip
    finetune_clips_per_genre: int = 0  # training clips per genre of notebook 08's fine-tuning and fusion; 0 = all
    finetune_epochs: tuple[int, int] = (3, 8)  # musicnn fine-tuning: epochs of the head alone, then with the body
    studied_per_genre: int = 0  # clips per genre and split notebook 10 studies closely (occlusion); 0 = all
    # demo dataset (generated by make_demo_dataset)
    demo_clips_per_genre: int = 60

    @property
    def n_samples(self) -> int:
        """Samples in one clip."""
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def n_frames(self) -> int:
        """Frames of a clip's mel-spectrogram and CQT (librosa centres frames)."""
        return 1 + self.n_samples // self.hop_length

    def replace(self, **changes) -> Config:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready dict of every field (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}

    def changed_settings(self) -> str:
        """The fields that differ from the preset's, as GENRE_SETTINGS writes them ("none" if none);
        where data, caches, runs and figures go, and quick mode's epochs, are left out."""
        base = _preset(self.profile) if self.profile in PRESETS else Config()
        changed = [
            f"{f.name}={_setting_text(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if f.name not in _PLACE_SETTINGS and getattr(self, f.name) != getattr(base, f.name)
        ]
        return " ".join(changed) or "none"


PRESETS = {
    # The report's settings: 30 s FMA clips at 22,050 Hz, batch 32, 46 epochs.
    "seed": Config(),
    # Small and fast enough for CI on two CPU cores: short clips, narrower model, fewer epochs.
    "demo": Config(
        profile="demo",
        data_root=ROOT / "data" / "demo",
        clip_seconds=10.0,
        n_mels=64,
        first_block_channels=8,
        dense_units=64,
        bn_momentum=0.9,  # 12 steps an epoch: the moving statistics must follow the weights within one
        epochs=20,
        lr_decay_epochs=8.0,
    ),
}
# The training recipe that learns real recordings from few clips: the report's network and features on
# random excerpts with mixup, SpecAugment, label smoothing, weight decay and a warmed-up cosine schedule to
# 0, predicting with the moving average of the final weights; the literature's usual values, measured by
# cross-validation on real recordings (benchmarks/real_music.py, notebook 09). Batch norm's statistics at
# 0.99 lag ~20 epochs at 5 steps an epoch, so 0.9; validation on ~20 clips is too noisy to stop or choose on.
RECIPE_SETTINGS = dict(
    train_mode="chunked",
    chunk_seconds=3.0,
    mixup_alpha=0.2,
    time_masks=2,
    time_mask_frames=20,
    freq_masks=2,
    freq_mask_bins=8,
    label_smoothing=0.1,
    weight_decay=0.01,
    lr_schedule="cosine",
    warmup_epochs=3.0,
    epochs=60,
    early_stopping=0,  # a fixed budget: the validation loss of ~20 clips is too noisy to stop on
    monitor="val_loss",  # picks best.keras, kept for the curves; it does not predict
    checkpoint="last",  # the model at the end of the cosine decay predicts ...
    use_ema=True,  # ... with its weights averaged ...
    ema_momentum=0.98,  # ... over about the last 10 epochs (50 steps)
    bn_momentum=0.9,  # 5 steps an epoch: moving statistics that follow the weights within 2 epochs
)
# The demo preset's sizes with that recipe: `recipe` runs where `demo` runs (GENRE_PROFILE=recipe)
PRESETS["recipe"] = PRESETS["demo"].replace(profile="recipe", **RECIPE_SETTINGS)
# GENRE_QUICK=1 (`make test`): every preset does less work, under QUICK_DIR (never over figures/ or the runs
# of `make demo`), so the notebooks run every code path in a fraction of the time. A network of 1 epoch
# need not beat chance: the notebooks' checks expect nothing of its accuracy.
QUICK_SETTINGS = dict(
    epochs=1,
    chance_margin_sds=float("-inf"),
    ablation_branches=(),  # notebook 06 trains the three-branch network both ways, no single branch
    musicnn_seconds=3.0,  # one musicnn patch a clip
    finetune_clips_per_genre=16,
    finetune_epochs=(1, 1),
    studied_per_genre=1,
)
QUICK_DIR = ROOT / "runs" / "quick"
# fields that say where things go, not how they are computed: Config.changed_settings leaves them out
_PLACE_SETTINGS = ("profile", "data_root", "cache_dir", "runs_dir", "figures_dir")
_RENAMED_SETTINGS = {"filters": "first_block_channels"}  # old name: new name (saved configs are read with either)


def quick_mode() -> bool:
    """Whether GENRE_QUICK is set (not empty or "0"): the quick runs of `make test`, see QUICK_SETTINGS."""
    return os.environ.get("GENRE_QUICK", "0") not in ("", "0")


def get_config(profile: str | None = None, data_root: str | os.PathLike | None = None, **changes) -> Config:
    """The settings of a preset, with the data root and any field overridden.

    `profile` defaults to the environment variable GENRE_PROFILE (else "demo"), `data_root` to
    GENRE_DATA (else the preset's). With GENRE_QUICK set (not empty or "0"), QUICK_SETTINGS are the
    defaults, and runs_dir, figures_dir are QUICK_DIR and QUICK_DIR/figures. GENRE_SETTINGS
    changes any field for every notebook and script of a run: space-separated `field=value` pairs
    ("n_mels=128 epochs=10"; tuples comma-separated, "horizontal_kernel_frames=16,8"; paths relative
    to the project folder); `changes` win over it. Raises ConfigError for an unknown preset or field,
    or a value that does not parse as the field's type, naming it.
    """
    profile = profile or os.environ.get("GENRE_PROFILE") or "demo"
    if profile not in PRESETS:
        raise ConfigError(f"unknown preset {profile!r}; choose one of {', '.join(PRESETS)} (GENRE_PROFILE)")
    changes = {**parse_settings(os.environ.get("GENRE_SETTINGS", "")), **changes}
    data_root = data_root or os.environ.get("GENRE_DATA")
    if data_root:
        changes["data_root"] = Path(data_root).expanduser().resolve()
    unknown = set(changes) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        renamed = [f"{old} is now {new}" for old, new in _RENAMED_SETTINGS.items() if old in unknown]
        raise ConfigError(f"unknown setting(s) {', '.join(sorted(unknown))}" + "".join(f" ({r})" for r in renamed))
    return _preset(profile).replace(**changes)


def parse_settings(text: str) -> dict:
    """`field=value` pairs separated by spaces (GENRE_SETTINGS) as typed Config changes.

    >>> parse_settings("n_mels=128 epochs=10 use_ema=true horizontal_kernel_frames=16,8")
    {'n_mels': 128, 'epochs': 10, 'use_ema': True, 'horizontal_kernel_frames': (16, 8)}

    Raises ConfigError naming a pair without "=", an unknown field or a value of the wrong type.
    """
    defaults = {f.name: getattr(Config(), f.name) for f in dataclasses.fields(Config)}
    changes = {}
    for pair in text.split():
        name, equals, value = pair.partition("=")
        if not equals or not value:
            raise ConfigError(f"GENRE_SETTINGS: {pair!r} is not field=value (e.g. n_mels=128)")
        if name == "profile":
            raise ConfigError("GENRE_SETTINGS: choose the preset with GENRE_PROFILE, not profile=")
        if name not in defaults:
            renamed = f" ({name} is now {_RENAMED_SETTINGS[name]})" if name in _RENAMED_SETTINGS else ""
            raise ConfigError(f"GENRE_SETTINGS: unknown setting {name!r}{renamed}; the fields of Config are settings")
        default = defaults[name]
        try:
            if isinstance(default, tuple):
                kind = type(default[0]) if default else str
                changes[name] = tuple(_typed(kind, item) for item in value.split(","))
            else:
                changes[name] = _typed(type(default), value)
        except ValueError:
            raise ConfigError(
                f"GENRE_SETTINGS: {name}={value!r} is not a valid {type(default).__name__} (default {default!r})"
            ) from None
    return changes


def _typed(kind: type, text: str):
    """`text` as a value of `kind` (bool, int, float, Path relative to ROOT, str); ValueError if it is not."""
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(text)
        return text.lower() in ("true", "1", "yes")
    if issubclass(kind, Path):
        return (ROOT / Path(text).expanduser()).resolve()
    return kind(text)


def _setting_text(value) -> str:
    """A field's value as GENRE_SETTINGS writes it."""
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def _preset(profile: str) -> Config:
    """The preset, with QUICK_SETTINGS and the quick folders when GENRE_QUICK is set."""
    if quick_mode():
        return PRESETS[profile].replace(**QUICK_SETTINGS, runs_dir=QUICK_DIR, figures_dir=QUICK_DIR / "figures")
    return PRESETS[profile]


# ── Shared helpers: quiet imports, atomic writes and output-folder errors, used by several sections ──


def import_keras():
    """Keras, imported with its backend's start-up messages muted: TensorFlow prints some (CUDA probing,
    oneDNN notices) before its logging is configured, whatever TF_CPP_MIN_LOG_LEVEL says, then logs
    warnings such as notes on retraced functions; they would fill notebook outputs. Errors still show."""
    import logging

    with _silenced_stderr():
        import keras
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return keras


@contextlib.contextmanager
def _silenced_stderr():
    """Discard what C libraries write straight to file descriptor 2 while the block runs."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _duration_text(seconds: float) -> str:
    """A duration for people: "40 s", "12 min", "3.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class _ExpectedDuration:
    """Says once, after the first `after` of `total` items, how long all of them should take at that pace.

    The long steps (feature extraction, training, fine-tuning, cross-validation) print this before most of
    their work, so a run on real data tells its cost early; their progress bars then count down (tqdm's
    ETA, or Keras' epoch lines). `write` prints the line (a tqdm bar's write keeps the bar intact).
    """

    def __init__(self, what: str, total: int, unit: str, after: int = 3, write=print, warm: int = 1):
        self.what, self.total, self.unit, self.after, self.write = what, total, unit, max(1, after), write
        self.start, self.done, self.first, self.warm = time.perf_counter(), 0, None, warm

    def update(self, n: int = 1) -> None:
        now = time.perf_counter()
        self.done += n
        if self.first is None and self.done >= self.warm:  # the first `warm` items pay the start-up (worker
            self.first = (now, self.done)  # processes, a first graph) once; the pace is measured after them
        if self.done - n < self.after <= self.done < self.total:
            (first, first_done), elapsed = self.first or (now, self.done), now - self.start
            pace = (now - first) / (self.done - first_done) if self.done > first_done else elapsed / self.done
            self.say(first - self.start + pace * (self.total - first_done), f"at the pace of the first {self.done}")

    def say(self, seconds: float, basis: str) -> None:
        end = time.strftime("%H:%M", time.localtime(time.time() + seconds - (time.perf_counter() - self.start)))
        units = f"{self.total} {self.unit}{'s' * (self.total != 1)}"
        self.write(
            f"{self.what}: {units} expected to take about {_duration_text(seconds)} on this machine "
            f"({basis}; done around {end})"
        )


@contextlib.contextmanager
def _atomic_path(path: Path):
    """A temporary file next to `path`, renamed onto it when the block succeeds and removed when it
    fails: readers, and a later run after a kill, never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, content: dict) -> None:
    """Write JSON atomically: a killed process never leaves half a file."""
    with _atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2, default=str) + "\n")


def _mkdir(path: Path) -> Path:
    """`path`, created with its parents if needed."""
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _exclusive(lock: Path, wait: bool = True):
    """Hold an exclusive advisory lock on the file `lock` while the block runs, so that a second
    process building the same cache waits for the first and then finds its result, instead of writing
    into the same files (two notebooks, or a notebook and a benchmark, started at once). Yields whether
    the lock is held: with wait=False, False at once when another process holds it (that process is
    doing the work; `cross_validate` then turns to other folds). Where the platform has no `fcntl`
    (Windows), the block runs unlocked; so does a 'spawn' worker that is still importing its parent's
    script (one without `if __name__ == "__main__":`), which would otherwise wait forever for its own
    parent instead of failing with the error that names the missing guard."""
    import multiprocessing

    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is None or getattr(multiprocessing.current_process(), "_inheriting", False):
        yield True
        return
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fingerprint(*parts) -> str:
    """16 hex digits of SHA-256 over `parts`, the key of what a saved result was computed from.

    DataFrames and Series count by their index, columns and values (pandas' row hashes), arrays by
    their shape, dtype and bytes, anything else by its JSON text: a result read back instead of
    recomputed must have been computed from the same inputs, not merely from inputs of the same shape.
    """
    import hashlib

    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, (pd.DataFrame, pd.Series)):
            names = list(part.columns) if isinstance(part, pd.DataFrame) else [part.name]
            digest.update(json.dumps([str(n) for n in names]).encode())
            digest.update(pd.util.hash_pandas_object(part, index=True).to_numpy().tobytes())
        elif isinstance(part, np.ndarray):
            digest.update(f"{part.shape}{part.dtype}".encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


_WRITE_PROBLEMS = {  # errno -> what it means for an output folder
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a file is in the way: part of the path is not a folder",
    errno.EEXIST: "a file is in the way: part of the path is not a folder",
}


@contextlib.contextmanager
def _writing_to(folder: Path, error: type[GenreError], setting: str):
    """Turn an OSError raised while writing under `folder` into `error` naming the folder, the
    reason and the fix (free space, or point `setting` elsewhere)."""
    try:
        yield
    except OSError as exc:
        reason = _WRITE_PROBLEMS.get(exc.errno, exc.strerror or type(exc).__name__)
        file = f" (writing {exc.filename})" if exc.filename else ""
        raise error(
            f"{folder}: cannot write there: {reason}{file}. Free some space or make the folder "
            f"writable, or set {setting} to another folder; finished results are untouched"
        ) from None


def _warn(message: str) -> None:
    """A UserWarning named after this module and the line that warns (`genre_utils:1971: UserWarning: ...`),
    not after its caller's file, which in a notebook is the kernel's temporary file
    (/tmp/ipykernel_.../...py); a name that is no file's keeps Python from printing the warning's source line."""
    warnings.warn_explicit(message, UserWarning, "genre_utils", sys._getframe(1).f_lineno, module="genre_utils")


def _shown(path: str | os.PathLike) -> str:
    """A path as messages show it: relative to the project when inside it (`runs/demo-full`, as a
    reader's own checkout prints it), else as given."""
    with contextlib.suppress(ValueError, OSError):
        return Path(path).resolve().relative_to(ROOT).as_posix()
    return str(path)


# ── Data: track tables for the FMA and folder-per-genre layouts, and audio loading ──

AUDIO_EXTENSIONS = (".mp3", ".wav", ".au", ".flac", ".ogg")


def load_audio(path: str | os.PathLike, sr: int, duration: float | None) -> np.ndarray:
    """Decode an audio file to mono float32 samples at `sr` Hz.

    Parameters
    ----------
    path : str or os.PathLike
        Audio file in a format soundfile or, failing that, audioread can decode (WAV, FLAC, OGG, MP3 ...).
    sr : int
        Sample rate of the result, Hz; the audio is resampled (soxr_hq) from its own rate.
    duration : float or None
        Seconds to return: longer audio is cropped to its first `duration` seconds, shorter audio is zero-padded
        at the end. None decodes the whole file at its own length.

    Returns
    -------
    np.ndarray [shape=(round(sr * duration),), or (samples,) for duration=None; dtype=float32]
        Mono samples (the channels' mean), finite and within ±MAX_AMPLITUDE.

    Raises
    ------
    AudioError
        Naming the file when it is missing, empty, has no audio header (e.g. a text file named .au, which
        libsndfile would otherwise read as raw samples), cannot be decoded, or decodes to no samples or to
        corrupt ones (`_check_samples`: the whole file is refused).
    """
    import librosa

    path = Path(path)
    _check_audio_file(path)
    try:
        # librosa warns when it falls back from soundfile to audioread, and libmpg123 prints its
        # own warnings about broken MP3s: both are replaced by the AudioError below
        with warnings.catch_warnings(), _silenced_stderr():
            warnings.simplefilter("ignore")
            y, native_sr = librosa.load(path, sr=None, mono=False, duration=duration)
    except Exception as exc:  # every decoder failure becomes one clear message
        raise _decoding_error(path, exc) from None
    if y.size == 0:
        raise AudioError(f"{_shown(path)}: no audio samples decoded (truncated or not audio)")
    if y.ndim > 1:  # mix down a contiguous copy: same samples as librosa.to_mono, ~5x faster
        y = np.ascontiguousarray(y).mean(axis=0)
    y = librosa.resample(_check_samples(path, y), orig_sr=native_sr, target_sr=sr, res_type="soxr_hq")
    return y if duration is None else librosa.util.fix_length(y, size=int(round(sr * duration)))


def _check_audio_file(path: Path) -> None:
    """Raise AudioError naming the file when it is missing, empty or has no audio header (a text file
    named .au, which libsndfile would otherwise read as raw samples)."""
    import soundfile as sf

    if not path.is_file():
        what = "a link to a missing file" if path.is_symlink() and not path.exists() else "file not found"
        raise AudioError(f"{_shown(path)}: {'a folder, not an audio file' if path.is_dir() else what}")
    if path.stat().st_size == 0:
        raise AudioError(f"{_shown(path)}: file is empty (0 bytes)")
    with contextlib.suppress(sf.LibsndfileError, RuntimeError), _silenced_stderr():
        if sf.info(str(path)).format == "RAW":  # no header: the "samples" would be the file's bytes
            raise AudioError(f"{_shown(path)}: cannot decode audio (no audio header found: not an audio file)")


# Full scale is 1: 200 real MP3s peak at 0.92 (median) to 1.45 (a decoder's overshoot of a clipped master), their
# copies with 0.1-1 % of the bytes flipped (frames libmpg123 cannot dequantize) at up to 23,000. Beyond: corrupt
MAX_AMPLITUDE = 2.0


def _check_samples(path: Path, y: np.ndarray) -> np.ndarray:
    """`y`, decoded from `path`; AudioError naming the file when a sample is NaN, infinite or beyond MAX_AMPLITUDE:
    corrupt frames, and the whole file is refused (the frames around them decode to garbage within range)."""
    peak = float(np.max(np.abs(y), initial=0.0))  # NaN when any sample is
    if not peak <= MAX_AMPLITUDE:
        what = f"reach {peak:.3g} times full scale" if np.isfinite(peak) else "are NaN or infinite"
        raise AudioError(f"{_shown(path)}: decoded samples {what} (corrupt frames; music is within ±{MAX_AMPLITUDE:g})")
    return y


def _decoding_error(path: Path, exc: Exception) -> AudioError:
    """The AudioError for a decoder's failure on `path`."""
    if type(exc).__name__ in ("NoBackendError", "LibsndfileError"):  # no decoder read it, or not to its end
        return AudioError(
            f"{_shown(path)}: cannot decode audio (no decoder can read it: truncated, corrupt or not audio)"
        )
    return AudioError(f"{_shown(path)}: cannot decode audio ({_first_line(exc)})")


class _AudioStream:
    """An audio file decoded block by block, mono float32 at `sr` Hz, so that memory does not grow with
    its length: `window` hands out excerpts in order of their start and forgets the samples before.

    The samples are `load_audio(path, sr, None)`'s, checked as there: the same decoder (libsndfile, MP3
    included), the channels' mean, and soxr's resampler run as a stream, which gives the same samples as
    resampling the whole file. A format libsndfile cannot read is decoded whole by `load_audio` (audioread).
    After the file ends, `total` is its length in samples and `level_db` its RMS level in dBFS (-inf if silent).
    """

    BLOCK_SECONDS = 30.0  # decoded at a time

    def __init__(self, path: str | os.PathLike, sr: int, progress: bool = False):
        import soundfile as sf

        self.path, self.sr = Path(path), sr
        _check_audio_file(self.path)
        self.total: int | None = None
        self._buffer, self._offset, self._squares = np.zeros(0, np.float32), 0, 0.0
        try:
            with _silenced_stderr():
                self._file = sf.SoundFile(str(self.path))
        except Exception:  # not for libsndfile: audioread decodes it, whole
            self._file = None
            self._append(load_audio(self.path, sr, None))
            self.total = len(self._buffer)
            return
        native = self._file.samplerate
        self._native_frames = 0
        self._resampler = None
        if native != sr:
            import soxr

            self._resampler = soxr.ResampleStream(native, sr, 1, dtype="float32", quality="soxr_hq")
        from tqdm.auto import tqdm

        seconds = self._file.frames / native if self._file.frames > 0 else 0.0
        shown = progress and seconds > 180  # long files show how far decoding has come
        self._progress = tqdm(total=round(seconds), desc=self.path.name, unit="s", leave=False, disable=not shown)

    @property
    def level_db(self) -> float:
        rms = np.sqrt(self._squares / self.total) if self.total else 0.0
        return 20 * np.log10(rms) if rms > 0 else -np.inf

    def _append(self, y: np.ndarray) -> None:
        self._squares += float(np.square(y, dtype=np.float64).sum())
        self._buffer = np.concatenate([self._buffer, y])

    def _decode_block(self) -> None:
        """Decode the next block into the buffer; at the end of the file set `total` (as load_audio's length)."""
        native = self._file.samplerate
        try:
            with warnings.catch_warnings(), _silenced_stderr():
                warnings.simplefilter("ignore")
                block = self._file.read(int(native * self.BLOCK_SECONDS), dtype="float32", always_2d=True)
        except Exception as exc:
            raise _decoding_error(self.path, exc) from None
        last = len(block) == 0
        y = _check_samples(self.path, block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0])
        self._native_frames += len(y)
        if self._resampler is not None:
            y = self._resampler.resample_chunk(y, last=last)
        if last:  # librosa's length: ceil(frames * sr / native)
            self.total = int(np.ceil(self._native_frames * self.sr / native))
            y = y[: max(0, self.total - self._offset - len(self._buffer))]
            self._file.close()
            self._progress.close()
            if self.total == 0:
                raise AudioError(f"{_shown(self.path)}: no audio samples decoded (truncated or not audio)")
        else:
            self._progress.update(round(self._native_frames / native) - self._progress.n)
        self._append(np.ascontiguousarray(y, dtype=np.float32))
        if last and self._offset + len(self._buffer) < self.total:
            self._append(np.zeros(self.total - self._offset - len(self._buffer), np.float32))

    def reaches(self, end: int) -> bool:
        """Whether the file holds at least `end` samples (decoding as far as needed to tell)."""
        while self.total is None and self._offset + len(self._buffer) < end:
            self._decode_block()
        return self._offset + len(self._buffer) >= end

    def window(self, start: int, length: int, clip: bool = False) -> tuple[int, np.ndarray]:
        """(start, the `length` samples from `start`), zero-padded before 0 and past the end. With `clip`, a
        window that would run past the end is moved back to end with the file (not before 0), as
        `excerpt_starts` places the last excerpt. Starts must not decrease from one call to the next."""
        if not self.reaches(start + length) and clip:
            start = max(0, self.total - length)
        skip = max(0, start) - self._offset  # samples before this window are not needed again
        self._buffer, self._offset = self._buffer[skip:], self._offset + skip
        y = self._buffer[: start + length - self._offset]
        return start, np.pad(y, (max(0, -start), length - len(y) - max(0, -start)))

    def windows(self, length: int):
        """(start, samples) of the windows `length` long that `excerpt_starts(max(total, length), length)`
        places: every EXCERPT_HOP of a window, the last ending with the file, a short file zero-padded."""
        hop, start = max(1, int(length * EXCERPT_HOP)), 0
        while True:
            first, y = self.window(start, length, clip=True)
            yield first, y
            if first < start or not self.reaches(first + length + 1):  # this window ends with the file
                return
            start += hop


FMA_SUBSETS = ("small", "medium", "large")  # nested: every small track is also in medium and large
FMA_REQUIRED_COLUMNS = (("set", "subset"), ("set", "split"), ("track", "genre_top"))
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # training, validation, test shares of the folder-per-genre layout


def audio_path(root: str | os.PathLike, track_id: int, subset: str = "small") -> Path:
    """Where FMA keeps a clip: `<root>/fma_<subset>/000/000002.mp3` for track 2 (FMA's get_audio_path).

    >>> audio_path("data/fma", 2).as_posix()
    'data/fma/fma_small/000/000002.mp3'
    >>> audio_path("data/fma", 155066, subset="large").as_posix()
    'data/fma/fma_large/155/155066.mp3'
    """
    tid = f"{int(track_id):06d}"
    return Path(root) / f"fma_{subset}" / tid[:3] / f"{tid}.mp3"


def read_fma_tracks(path: str | os.PathLike) -> pd.DataFrame:
    """Read FMA's `tracks.csv` as FMA's own loader does: two-level columns, indexed by track_id.

    ('set', 'subset') becomes an ordered category small < medium < large, so
    `tracks[tracks["set", "subset"] <= "small"]` selects FMA-small. Raises DataError naming the
    file when it cannot be parsed, has no two-level header, non-integer track ids or lacks one of
    the columns set/subset, set/split, track/genre_top.
    """
    path = Path(path)
    try:
        tracks = pd.read_csv(path, index_col=0, header=[0, 1], low_memory=False)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read as FMA tracks.csv ({_first_line(exc)})") from None
    if not isinstance(tracks.columns, pd.MultiIndex):
        raise DataError(f"{path}: expected FMA's two-level header (e.g. set/subset, track/genre_top)")
    missing = [col for col in FMA_REQUIRED_COLUMNS if col not in tracks.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join('/'.join(col) for col in missing)}; "
            "expected FMA's fma_metadata/tracks.csv with its two-level header"
        )
    if not pd.api.types.is_integer_dtype(tracks.index):
        raise DataError(f"{path}: the first column must hold integer track ids")
    tracks.index.name = "track_id"
    tracks["set", "subset"] = tracks["set", "subset"].astype(pd.CategoricalDtype(FMA_SUBSETS, ordered=True))
    return tracks


def load_tracks(root: str | os.PathLike, subset: str = "small", genres=GENRES, *, seed: int = 42) -> pd.DataFrame:
    """The tracks of a dataset: one row per clip, indexed by track_id.

    Two layouts are read:

    - FMA: `root/fma_metadata/tracks.csv` and `root/fma_<subset>/000/000002.mp3`; the tracks of
      `subset` (and of the smaller subsets it contains) with FMA's official split;
    - one folder per genre, `root/<genre>/*.mp3|wav|au|flac|ogg` (as GTZAN); folder names match
      `genres` ignoring case and punctuation ("hiphop" is "Hip-Hop"); track ids number the files in
      sorted order; a stratified 80/10/10 split (`stratified_split`), the same for the same files and
      `seed`.

    Tracks whose genre is not in `genres`, whose split is not a known one, or whose audio file is
    missing or empty (0 bytes) are dropped: a warning sums them up and `skipped_tracks(tracks)` lists
    them (track_id, path, reason). Files that exist but cannot be decoded are only found when decoded
    (`load_audio` raises AudioError).

    Parameters
    ----------
    root : str or os.PathLike
        The dataset folder (`~` is expanded).
    subset : str
        FMA subset, one of FMA_SUBSETS; the folder-per-genre layout ignores it.
    genres : sequence of str
        Genres kept, default GENRES (FMA-small's eight).
    seed : int
        Seed of the folder-per-genre layout's split.

    Returns
    -------
    pd.DataFrame
        Indexed by track_id; columns genre (one of `genres`), split (training/validation/test), title,
        artist (missing values where the layout has none) and path (absolute path of the audio file,
        str).

    Raises
    ------
    DataError
        For a missing root, an unrecognised layout, unreadable metadata, or when no track is left.
    ConfigError
        For an unknown FMA subset.

    References
    ----------
    M. Defferrard, K. Benzi, P. Vandergheynst and X. Bresson, "FMA: A Dataset for Music Analysis",
    ISMIR 2017 (the FMA layout, metadata and split).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{root}: data folder not found. Set GENRE_DATA to the folder holding fma_metadata/ and "
            "fma_small/ (or one folder per genre), or run `make data` to generate the demo dataset there"
        )
    root = root.resolve()
    if (root / "fma_metadata" / "tracks.csv").is_file():
        if subset not in FMA_SUBSETS:
            raise ConfigError(f"unknown FMA subset {subset!r}; choose one of {', '.join(FMA_SUBSETS)}")
        tracks = _fma_tracks(root, subset)
    elif (root / "fma_metadata").is_dir() or (root / f"fma_{subset}").is_dir():
        raise DataError(
            f"{root / 'fma_metadata' / 'tracks.csv'}: not found. FMA's genres and splits come from it: "
            f"unzip fma_metadata.zip into {root} (or set GENRE_DATA to the folder that holds it)"
        )
    elif genre_folders := _genre_folders(root):
        tracks = _folder_tracks(genre_folders, seed)
    else:
        found = sorted(p.name + "/" * p.is_dir() for p in root.iterdir() if not p.name.startswith("."))
        raise DataError(
            f"{root}: no dataset layout recognised. Accepted: FMA (fma_metadata/tracks.csv and "
            f"fma_{subset}/000/000002.mp3 ...) or one folder per genre holding "
            f"{'/'.join(AUDIO_EXTENSIONS)} files. Found: {', '.join(found[:12]) or 'nothing'}"
            + (" ..." if len(found) > 12 else "")
        )
    return _drop_unusable(tracks, root, genres)


def skipped_tracks(tracks: pd.DataFrame) -> pd.DataFrame:
    """The tracks `load_tracks` dropped, as a table indexed by track_id with columns path, reason."""
    records = tracks.attrs.get("skipped", [])
    return pd.DataFrame.from_records(records, columns=["track_id", "path", "reason"]).set_index("track_id")


def audio_info(paths) -> pd.DataFrame:
    """What the headers of audio files say, without decoding them (fast, even for all of FMA).

    `paths`: a Series of paths (its index, e.g. track_id, is kept) or any sequence of paths.
    Returns one row per file: sample_rate (Hz), channels, seconds, format, and error ("" when the
    header was read; otherwise the numbers are missing). Raises nothing for unreadable files.
    """
    import soundfile as sf

    paths = paths if isinstance(paths, pd.Series) else pd.Series(list(paths))
    rows = {}
    for key, path in paths.items():
        try:
            with _silenced_stderr():  # libmpg123 prints its own warnings about broken MP3s
                info = sf.info(str(path))
            rows[key] = (info.samplerate, info.channels, info.duration, info.format, "")
        except (sf.LibsndfileError, RuntimeError, OSError):
            rows[key] = (pd.NA, pd.NA, np.nan, "", "cannot read the header")
    columns = ["sample_rate", "channels", "seconds", "format", "error"]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    table.index.name = paths.index.name
    return table.astype({"sample_rate": "Int64", "channels": "Int64", "seconds": float})


def _fma_tracks(root: Path, subset: str) -> pd.DataFrame:
    """The FMA layout's tracks of one subset, before dropping unusable ones."""
    raw = read_fma_tracks(root / "fma_metadata" / "tracks.csv")
    raw = raw[raw["set", "subset"] <= subset]

    def column(name):
        return raw[name] if name in raw.columns else pd.Series(pd.NA, index=raw.index, dtype="object")

    tracks = pd.DataFrame(
        {
            "genre": column(("track", "genre_top")),
            "split": column(("set", "split")),
            "title": column(("track", "title")),
            "artist": column(("artist", "name")),
            "path": [str(audio_path(root, tid, subset)) for tid in raw.index],
        },
        index=raw.index,
    )
    return tracks


def _genre_key(name: str) -> str:
    """A genre name reduced to lower-case letters and digits: 'Hip-Hop' and 'hiphop' match."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _genre_folders(root: Path) -> dict[str, list[Path]]:
    """The sub-folders of `root` that hold audio files, with their sorted audio files.

    When some do, a warning names what is ignored: folders without audio, files that are not
    audio and folders nested in a genre folder (hidden files, as .DS_Store, are ignored silently).
    """
    folders, empty, stray, nested = {}, [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        files = [f for f in entries if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS]
        nested += [f"{folder.name}/{p.name}/" for p in entries if p.is_dir()]
        stray += [f"{folder.name}/{p.name}" for p in entries if p.is_file() and p not in files]
        if files:
            folders[folder.name] = files
        else:
            empty.append(f"{folder.name}/")
    ignored = [
        (empty, "folder(s) without audio files"),
        (stray, f"file(s) that are not {'/'.join(AUDIO_EXTENSIONS)}"),
        (nested, "nested folder(s) (audio must sit directly in a genre folder)"),
    ]
    if folders and any(names for names, _ in ignored):
        details = "; ".join(
            f"{len(names)} {what}: {', '.join(names[:5])}{' ...' * (len(names) > 5)}"
            for names, what in ignored
            if names
        )
        _warn(f"{_shown(root)}: ignored {details}")
    return folders


def folder_genres(root: str | os.PathLike) -> tuple[str, ...]:
    """The genres of a folder-per-genre dataset: the names of `root`'s sub-folders holding audio, sorted.

    Use them as cfg.genres for a dataset with its own genre names (`get_config(..., genres=...)`).
    Raises DataError when `root` is missing or no sub-folder holds audio files.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; pass a folder holding one folder of audio files per genre")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load_tracks warns about what it ignores
        folders = _genre_folders(root)
    if not folders:
        raise DataError(
            f"{root}: no sub-folder holds {'/'.join(AUDIO_EXTENSIONS)} files; expected one folder per genre"
        )
    return tuple(folders)


DATA_SOURCES = {  # what data_source returns -> how predict names it
    "synthetic": "the synthetic demo set",
    "fma": "FMA",
    "folder": "a folder of real recordings",
}


def data_source(root: str | os.PathLike) -> str:
    """What kind of music a data root holds, as every run records it (a key of DATA_SOURCES):
    "synthetic" for the generated demo set (its DEMO_MARKER file), "fma" for FMA's layout
    (fma_metadata/tracks.csv), "folder" for anything else, a folder per genre of real recordings.
    A model trained on synthetic clips knows only synthetic genres, which `predict` says.
    """
    root = Path(root).expanduser()
    if (root / DEMO_MARKER).is_file():
        return "synthetic"
    return "fma" if (root / "fma_metadata" / "tracks.csv").is_file() else "folder"


def _folder_tracks(folders: dict[str, list[Path]], seed: int) -> pd.DataFrame:
    """The folder-per-genre layout as a tracks table with a stratified split."""
    rows = [(name, path) for name, files in folders.items() for path in files]
    tracks = pd.DataFrame(
        {
            "genre": [name for name, _ in rows],
            "split": "",
            "title": [path.stem for _, path in rows],
            "artist": pd.Series([pd.NA] * len(rows), dtype="object"),
            "path": [str(path) for _, path in rows],
        },
        index=pd.RangeIndex(len(rows), name="track_id"),
    )
    tracks["split"] = stratified_split(tracks["genre"], seed=seed)
    return tracks


def stratified_split(labels, fractions=SPLIT_FRACTIONS, seed: int = 42) -> np.ndarray:
    """Assign 'training'/'validation'/'test' to items so that every label is split by `fractions`.

    `labels`: one label per item (any sequence). Within each label the items are shuffled with a
    generator seeded by `seed` and the label's name, then cut at the rounded fractions (validation
    and test get `round(n * fraction)` items each). Same labels and seed, same split.

    >>> labels = ["Rock"] * 10 + ["Pop"] * 20
    >>> splits = stratified_split(labels)
    >>> [int((splits[:10] == split).sum()) for split in SPLITS]  # the ten Rock items
    [8, 1, 1]
    >>> [int((splits[10:] == split).sum()) for split in SPLITS]  # the twenty Pop items
    [16, 2, 2]
    >>> bool((stratified_split(labels) == splits).all())
    True
    """
    labels = np.asarray(labels, dtype=object)
    splits = np.empty(len(labels), dtype=object)
    for label in sorted(set(labels)):
        rows = np.flatnonzero(labels == label)
        rows = rows[np.random.default_rng([seed, *str(label).encode()]).permutation(len(rows))]
        n_val, n_test = (int(round(len(rows) * share)) for share in fractions[1:])
        n_train = len(rows) - n_val - n_test
        splits[rows[:n_train]] = SPLITS[0]
        splits[rows[n_train : n_train + n_val]] = SPLITS[1]
        splits[rows[n_train + n_val :]] = SPLITS[2]
    return splits.astype(str)


def _drop_unusable(tracks: pd.DataFrame, root: Path, genres) -> pd.DataFrame:
    """Map genre names onto `genres`, drop what cannot be used, warn and record it in attrs."""
    canonical = {_genre_key(g): g for g in genres}
    genre = tracks["genre"].map(lambda g: canonical.get(_genre_key(g)) if isinstance(g, str) else None)
    reasons = pd.Series("", index=tracks.index, dtype=object)
    reasons[genre.isna()] = [
        f"genre {g!r} not in the genres used" if isinstance(g, str) else "no top genre"
        for g in tracks.loc[genre.isna(), "genre"]
    ]
    bad_split = ~tracks["split"].isin(SPLITS) & (reasons == "")
    reasons[bad_split] = [f"split {s!r} is not one of {'/'.join(SPLITS)}" for s in tracks.loc[bad_split, "split"]]
    for track_id in reasons.index[reasons == ""]:
        path = Path(tracks.at[track_id, "path"])
        if not path.is_file():
            reasons[track_id] = "audio file not found"
        elif path.stat().st_size == 0:
            reasons[track_id] = "audio file is empty (0 bytes)"
    dropped = reasons != ""
    kept = tracks[~dropped].assign(genre=genre[~dropped].astype(str))
    kept["split"] = kept["split"].astype(str)
    summary = ", ".join(f"{n} {reason}" for reason, n in reasons[dropped].value_counts().items())
    if kept.empty:
        raise DataError(f"{root}: no usable track in {len(tracks)} ({summary or 'the table is empty'})")
    kept.attrs["skipped"] = [
        {"track_id": int(tid), "path": tracks.at[tid, "path"], "reason": reasons[tid]} for tid in reasons.index[dropped]
    ]
    if dropped.any():
        _warn(
            f"{_shown(root)}: skipped {dropped.sum()} of {len(tracks)} tracks ({summary}); "
            "see genre_utils.skipped_tracks(tracks)"
        )
    return kept


# ── Download: FMA archives fetched, verified and unpacked ──

FMA_BASE_URL = "https://os.unil.cloud.switch.ch/fma"  # the dataset's official location (README of mdeff/fma)
FMA_URL_VARIABLE = "GENRE_FMA_URL"  # environment variable that replaces FMA_BASE_URL (a mirror)
_MiB, _GiB = 2**20, 2**30


@dataclass(frozen=True)
class FmaArchive:
    """One zip of the FMA download and what it unpacks to."""

    file: str  # name of the zip on the server and in the data root
    folder: str  # the one top-level folder it holds
    sha1: str  # hex digest published in the README of mdeff/fma
    size: int  # bytes of the zip (published, rounded: used only until the server gives the exact size)
    unpacked: int  # bytes once unpacked (an upper estimate: the zip's own directory is checked before unpacking)


FMA_ARCHIVES = {
    "metadata": FmaArchive(
        "fma_metadata.zip", "fma_metadata", "f0df49ffe5f2a6008d7dc83c6915b31835dfe733", 342 * _MiB, 2 * _GiB
    ),
    "small": FmaArchive(
        "fma_small.zip", "fma_small", "ade154f733639d52e35e32f5593efe5be76c6d70", int(7.2 * _GiB), int(7.4 * _GiB)
    ),
    "medium": FmaArchive(
        "fma_medium.zip", "fma_medium", "c67b69ea232021025fca9231fc1c7c1a063ab50b", 22 * _GiB, int(22.5 * _GiB)
    ),
    "large": FmaArchive("fma_large.zip", "fma_large", "497109f4dd721066b5ce5e5f250ec604dc78939e", 93 * _GiB, 95 * _GiB),
}
# FMA-small files reported broken in the issue threads of mdeff/fma: flagged by check_dataset as known
FMA_BROKEN_TRACKS = {
    99134: "no audio",
    108925: "no audio",
    133297: "no audio",
    98565: "much shorter than 30 s",
    98567: "much shorter than 30 s",
    98569: "much shorter than 30 s",
}
_UNPACKED_MARKER = ".unpacked.json"  # written into a folder before it is renamed into place
_CHUNK_BYTES = _MiB  # bytes read from the network or a file at a time
_HTTP_RETRIED = (408, 425, 429, 500, 502, 503, 504)  # status codes of transient server trouble


def download_fma(
    root: str | os.PathLike,
    archives=("metadata", "small"),
    *,
    base_url: str | None = None,
    sha1: dict[str, str] | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> list[Path]:
    """Download, verify and unpack FMA archives into `root`, doing only what is not done yet.

    Parameters
    ----------
    root : path
        Data root; gets `fma_metadata/`, `fma_small/`, ... next to the zips.
    archives : sequence of str
        Keys of FMA_ARCHIVES ("metadata", "small", "medium", "large"), in the order to fetch them.
    base_url : str, optional
        Where the zips are (`<base_url>/fma_small.zip`); default: the environment variable
        GENRE_FMA_URL, else FMA_BASE_URL (the official location).
    sha1 : dict, optional
        Expected SHA-1 (hex) per archive, by key or file name ({"fma_small.zip": "..."}), for a
        mirror that repacks; default: FMA_ARCHIVES' published ones.
    retries : int
        Attempts after a failed one (connection error, time-out, HTTP 408/429/5xx), waiting
        `backoff` s, then twice as long each time; a try that received data resets the count.
    timeout : float
        Seconds to wait for a connection or for the next data before giving up on an attempt.
    progress : bool
        tqdm progress bars for downloading, checking and unpacking.

    Returns
    -------
    list of Path
        The unpacked folders, one per archive.

    Writes
    ------
    `<root>/<archive>.zip` (kept after unpacking: a verified zip is never fetched again),
    `<root>/<archive>.zip.part` while downloading (resumed by the next run with an HTTP Range
    request), `<root>/<archive>.zip.verified.json` (its verified SHA-1, size and modification time, so a
    later run need not read the zip again), and the unpacked folder, extracted into
    `<root>/.<folder>.unpacking/` and renamed into place when complete: an interrupted unzip leaves
    nothing that `load_tracks` takes for data. A zip whose SHA-1 does not match is renamed to
    `<archive>.zip.bad-<its sha1>` and never unpacked.

    Raises
    ------
    DownloadError
        Naming the file or URL and the fix: not enough free disk space (checked before any request
        for every archive still to fetch and unpack, and again with the zip's exact sizes before
        unpacking), an HTTP error (404, ... ; transient ones after the retries), a time-out, a
        checksum mismatch, a zip that cannot be read, or a disk that fills up while writing
        (the `.part` file is kept and resumes once space is freed).
    ConfigError
        For an unknown archive key or a malformed SHA-1.
    """
    root = Path(root).expanduser().resolve()
    base_url = (base_url or os.environ.get(FMA_URL_VARIABLE) or FMA_BASE_URL).rstrip("/")
    chosen = _chosen_archives(archives, sha1 or {})
    with _writing_to(root, DownloadError, "the data root (--data or GENRE_DATA)"):
        root.mkdir(parents=True, exist_ok=True)
        for archive in chosen:  # leftovers of a killed unzip
            shutil.rmtree(root / f".{archive.folder}.unpacking", ignore_errors=True)
    for archive in chosen:
        if (root / archive.folder).exists() and not _is_unpacked(root, archive):
            _warn(
                f"{_shown(root / archive.folder)}: already there but not unpacked from {archive.file} by this "
                "command (by hand?); left as it is. Delete it to have it downloaded and unpacked"
            )
    todo = [archive for archive in chosen if not (root / archive.folder).exists()]
    _check_free_space(root, todo)
    for archive in todo:
        zip_path = root / archive.file
        if not _is_verified(zip_path, archive.sha1, progress):
            _fetch(
                f"{base_url}/{archive.file}",
                zip_path,
                retries=retries,
                backoff=backoff,
                timeout=timeout,
                progress=progress,
            )
            digest = _sha1_of(zip_path, progress)
            if digest != archive.sha1:
                bad = _set_aside(zip_path, digest)
                raise DownloadError(
                    f"{zip_path}: SHA-1 {digest} but {archive.sha1} expected: the download is corrupt or not this "
                    f"archive; it was renamed {bad.name} and not unpacked. Run the download again (for a mirror "
                    "that repacks the archive, give its SHA-1 with --sha1 NAME=HEX)"
                )
            _stamp_verified(zip_path, digest)
        _unpack(zip_path, root, archive, progress=progress)
    return [root / archive.folder for archive in chosen]


@dataclass
class DatasetCheck:
    """What `check_dataset` found: the usable tracks and every file worth a look."""

    root: Path
    tracks: pd.DataFrame  # as load_tracks returns it
    problems: pd.DataFrame  # indexed by track_id: path, problem, known (listed in FMA_BROKEN_TRACKS)

    @property
    def counts(self) -> pd.DataFrame:
        """Usable tracks per genre (rows) and split (columns), with totals."""
        table = pd.crosstab(self.tracks["genre"], self.tracks["split"], margins=True, margins_name="total")
        return table.reindex(columns=[s for s in (*SPLITS, "total") if s in table.columns])

    def summary(self) -> str:
        """A few lines for a terminal: counts per split and genre, then the problems."""
        lines = [f"{self.root}: {len(self.tracks)} tracks", self.counts.to_string()]
        if self.problems.empty:
            lines.append("no missing, unreadable or short audio file")
        else:
            known = int(self.problems["known"].sum())
            lines.append(
                f"{len(self.problems)} file(s) missing, unreadable or much shorter than the clips "
                f"({known} of them known broken in FMA-small):"
            )
            lines += [
                f"  {path}: {problem}{' (known)' * known_}"
                for path, problem, known_ in self.problems.itertuples(index=False)
            ]
        return "\n".join(lines)


def check_dataset(cfg: Config, shortest: float = 0.8) -> DatasetCheck:
    """Check the dataset at cfg.data_root without decoding it, as `download` does after unpacking.

    Parameters
    ----------
    cfg : Config
        data_root, subset, genres and seed say which tracks (as `load_tracks` reads them);
        clip_seconds how long the clips should be.
    shortest : float
        Files shorter than this share of cfg.clip_seconds are reported.

    Returns
    -------
    DatasetCheck
        The usable tracks, their counts per genre and split, and one row per file that is
        missing, empty, has no readable audio header or is too short (headers are read with
        `audio_info`: fast, even for all of FMA-small), marked `known` for the files of
        FMA_BROKEN_TRACKS. The warnings of `load_tracks` are folded into it.

    Raises
    ------
    DataError, ConfigError
        As `load_tracks`: no dataset at cfg.data_root, unreadable metadata, no usable track.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped tracks are reported below instead
        tracks = load_tracks(cfg.data_root, cfg.subset, cfg.genres, seed=cfg.seed)
    skipped = skipped_tracks(tracks)
    problems = skipped.loc[skipped["reason"].str.startswith("audio file"), ["path", "reason"]]
    problems = problems.rename(columns={"reason": "problem"})
    info = audio_info(tracks["path"])
    unreadable = info["error"] != ""
    short = ~unreadable & (info["seconds"] < shortest * cfg.clip_seconds)
    found = pd.DataFrame(
        {
            "path": tracks["path"],
            "problem": np.where(
                unreadable,
                info["error"],
                [f"{s:.1f} s long, much shorter than {cfg.clip_seconds:g} s" for s in info["seconds"]],
            ),
        }
    )[unreadable | short]
    problems = pd.concat([problems, found]).sort_index()
    problems["known"] = problems.index.isin(list(FMA_BROKEN_TRACKS))
    return DatasetCheck(root=Path(cfg.data_root), tracks=tracks, problems=problems)


def _chosen_archives(keys, sha1: dict[str, str]) -> list[FmaArchive]:
    """The FmaArchive of each key, with SHA-1 overrides (by key or file name) applied."""
    if isinstance(keys, str):
        keys = [keys]
    unknown = [key for key in keys if key not in FMA_ARCHIVES]
    if unknown:
        raise ConfigError(f"unknown FMA archive(s) {', '.join(unknown)}; choose among {', '.join(FMA_ARCHIVES)}")
    names = {name: key for key, archive in FMA_ARCHIVES.items() for name in (key, archive.file)}
    overrides = {}
    for name, digest in sha1.items():
        if name not in names:
            raise ConfigError(f"--sha1 {name}=...: no such archive; use one of {', '.join(sorted(names))}")
        if not re.fullmatch(r"[0-9a-fA-F]{40}", digest):
            raise ConfigError(f"--sha1 {name}={digest}: a SHA-1 is 40 hexadecimal digits")
        overrides[names[name]] = digest.lower()
    return [
        dataclasses.replace(FMA_ARCHIVES[key], sha1=overrides.get(key, FMA_ARCHIVES[key].sha1))
        for key in dict.fromkeys(keys)
    ]


def _is_unpacked(root: Path, archive: FmaArchive) -> bool:
    """Whether `archive` was unpacked completely from a zip with its expected SHA-1."""
    marker = root / archive.folder / _UNPACKED_MARKER
    try:
        return json.loads(marker.read_text()).get("sha1") == archive.sha1
    except (OSError, ValueError):
        return False


def _is_verified(zip_path: Path, sha1: str, progress: bool = True) -> bool:
    """Whether `zip_path` holds the archive of SHA-1 `sha1`: its stamp says so and it has not changed
    since (size, modification time), or it is read again and matches. A zip that does not match is
    renamed aside (with a warning) and False returned."""
    if not zip_path.is_file():
        return False
    stat = zip_path.stat()
    with contextlib.suppress(OSError, ValueError):
        stamp = json.loads(_verified_stamp(zip_path).read_text())
        if stamp == {"sha1": sha1, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}:
            return True
    digest = _sha1_of(zip_path, progress)  # downloaded by hand, changed, or the stamp was lost
    if digest == sha1:
        _stamp_verified(zip_path, digest)
        return True
    bad = _set_aside(zip_path, digest)
    _warn(f"{_shown(zip_path)}: SHA-1 {digest} but {sha1} expected; renamed {bad.name}, downloading it again")
    return False


def _verified_stamp(zip_path: Path) -> Path:
    """The file recording that `zip_path` was verified: its SHA-1, size and modification time."""
    return zip_path.with_name(f"{zip_path.name}.verified.json")


def _stamp_verified(zip_path: Path, digest: str) -> None:
    """Record that `zip_path`, as it is now, has SHA-1 `digest`."""
    stat = zip_path.stat()
    _write_json(_verified_stamp(zip_path), {"sha1": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})


def _set_aside(zip_path: Path, digest: str) -> Path:
    """Rename a zip whose SHA-1 is wrong to `<name>.bad-<its sha1>`, so it is never used; returns the new path."""
    bad = zip_path.with_name(f"{zip_path.name}.bad-{digest}")
    os.replace(zip_path, bad)
    _verified_stamp(zip_path).unlink(missing_ok=True)
    return bad


def _sha1_of(path: Path, progress: bool = True) -> str:
    """SHA-1 (hex) of a file, read a chunk at a time."""
    import hashlib

    from tqdm.auto import tqdm

    digest = hashlib.sha1()
    with (
        open(path, "rb") as file,
        tqdm(
            total=path.stat().st_size,
            desc=f"checking {path.name}",
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not progress,
        ) as bar,
    ):
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _check_free_space(root: Path, archives: list[FmaArchive]) -> None:
    """Raise DownloadError unless the disk of `root` holds what is left to download and unpack."""
    needed, parts = 0, []
    for archive in archives:
        zip_path, part = root / archive.file, root / f"{archive.file}.part"
        to_fetch = 0 if zip_path.is_file() else max(archive.size - (part.stat().st_size if part.is_file() else 0), 0)
        needed += to_fetch + archive.unpacked
        parts.append(f"{archive.file}: {_size(to_fetch)} to download, {_size(archive.unpacked)} unpacked")
    _require_space(root, needed, "; ".join(parts))


def _require_space(root: Path, needed: int, what: str) -> None:
    """Raise DownloadError when fewer than `needed` bytes are free on the disk of `root`."""
    free = shutil.disk_usage(root).free
    if free < needed:
        raise DownloadError(
            f"{root}: not enough free disk space: {_size(needed)} needed ({what}), {_size(free)} free. "
            "Free some space or download into another folder (--data or GENRE_DATA)"
        )


def _size(n_bytes: int) -> str:
    """Bytes for a message, in GiB or MiB."""
    return f"{n_bytes / _GiB:.2f} GiB" if n_bytes >= _GiB / 10 else f"{n_bytes / _MiB:.1f} MiB"


def _fetch(url: str, zip_path: Path, *, retries: int, backoff: float, timeout: float, progress: bool) -> None:
    """Download `url` to `zip_path` through `<zip_path>.part`, resuming what is there.

    pooch.retrieve would restart a cut 7 GB download from zero (and delete a file whose hash does
    not match), so the transfer is done here with requests: HTTP Range requests to resume, bounded
    retries with exponential back-off. Raises DownloadError.
    """
    import requests
    import urllib3
    from tqdm.auto import tqdm

    part = zip_path.with_name(zip_path.name + ".part")
    failures = 0
    with tqdm(
        desc=f"downloading {zip_path.name}", unit="B", unit_scale=True, unit_divisor=1024, disable=not progress
    ) as bar:
        while True:
            before = part.stat().st_size if part.is_file() else 0
            try:
                with _writing_to(zip_path.parent, DownloadError, "the data root (--data or GENRE_DATA)"):
                    try:
                        size, total = _fetch_once(url, part, timeout, bar)
                    except (
                        requests.RequestException,
                        urllib3.exceptions.HTTPError,
                        ConnectionError,
                        TimeoutError,
                    ) as exc:
                        detail = str(
                            exc.args[0] if exc.args and isinstance(exc.args[0], (str, Exception)) else exc
                        ).strip()  # the cause, without the tuples of urllib3's wrappers
                        problem = detail.splitlines()[0] if detail else type(exc).__name__
                        if (
                            isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError))
                            or "timed out" in problem.lower()
                        ):
                            problem = f"no answer or no data for {timeout:g} s"
                        raise _TransientHTTPError(problem) from None
                if total is None or size >= total:
                    break
                raise _TransientHTTPError(f"connection closed after {size} of {total} bytes")
            except _TransientHTTPError as exc:
                kept = part.stat().st_size if part.is_file() else 0
                failures = 1 if kept > before else failures + 1  # a try that brought data starts the count again
                if failures > retries:
                    raise DownloadError(
                        f"{url}: download failed {failures} time(s) in a row, last: {exc}. Run it again later: "
                        f"{part.name} keeps the {_size(kept)} received and the next run resumes from there"
                    ) from None
                time.sleep(backoff * 2 ** (failures - 1))
    os.replace(part, zip_path)


def _fetch_once(url: str, part: Path, timeout: float, bar) -> tuple[int, int | None]:
    """One request for what `part` lacks, appended to it; returns (bytes in part, size of the whole
    file or None if the server does not say). Raises DownloadError for a definite HTTP error,
    _TransientHTTPError for one worth retrying, requests' and urllib3's errors for network trouble."""
    import requests

    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        total = _response_total(response, offset)
        if response.status_code == 416:  # nothing left to send: the part is complete, or longer than the file
            if total == offset:
                return offset, total
            part.unlink()
            raise _TransientHTTPError("the partial download was longer than the file; starting again")
        if response.status_code in _HTTP_RETRIED:
            raise _TransientHTTPError(f"HTTP {response.status_code} {response.reason}")
        if response.status_code not in (200, 206):
            raise DownloadError(
                f"{url}: HTTP {response.status_code} {response.reason}; check the address (--base-url or "
                f"{FMA_URL_VARIABLE}; the official one is {FMA_BASE_URL})"
            )
        if response.status_code == 200:  # the whole file (a server that ignores Range): start over
            offset = 0
        bar.reset(total=total)
        bar.update(offset)
        with open(part, "ab" if offset else "wb") as file:
            while chunk := response.raw.read1(_CHUNK_BYTES):  # what has arrived: a cut loses nothing received
                file.write(chunk)
                bar.update(len(chunk))
    return part.stat().st_size, total


class _TransientHTTPError(Exception):
    """A failed download attempt worth retrying: a server error or a connection cut short."""


def _response_total(response, offset: int) -> int | None:
    """Size of the whole file from a response's Content-Range or Content-Length, None if unknown."""
    content_range = response.headers.get("Content-Range", "")
    if match := re.fullmatch(r"bytes (?:\d+-\d+|\*)/(\d+)", content_range.strip()):
        return int(match.group(1))
    length = response.headers.get("Content-Length")
    if length is None or not length.isdigit():
        return None
    return int(length) + (offset if response.status_code == 206 else 0)


def _unpack(zip_path: Path, root: Path, archive: FmaArchive, progress: bool = True) -> None:
    """Extract `zip_path`, which holds `archive.folder`, into `root` atomically: into a hidden
    temporary folder, marked complete and renamed into place at the end."""
    import zipfile

    from tqdm.auto import tqdm

    temporary = root / f".{archive.folder}.unpacking"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        with zipfile.ZipFile(zip_path) as zip_file:
            members = zip_file.infolist()
            outside = [m.filename for m in members if m.filename.split("/")[0] != archive.folder]
            if outside:
                raise DownloadError(
                    f"{zip_path}: expected everything under {archive.folder}/, found "
                    f"{', '.join(outside[:3])}; is this the right archive?"
                )
            size = sum(m.file_size for m in members)
            _require_space(root, size, f"unpacking {archive.file}")
            with (
                tqdm(
                    total=size,
                    desc=f"unpacking {archive.file}",
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    disable=not progress,
                ) as bar,
                _writing_to(root, DownloadError, "the data root (--data or GENRE_DATA)"),
            ):
                for member in members:
                    zip_file.extract(member, temporary)
                    bar.update(member.file_size)
                _write_json(
                    temporary / archive.folder / _UNPACKED_MARKER,
                    {"archive": archive.file, "sha1": archive.sha1, "files": len(members), "bytes": size},
                )
                os.replace(temporary / archive.folder, root / archive.folder)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise DownloadError(
            f"{zip_path}: cannot unpack ({_first_line(exc)}); delete it and run the download again"
        ) from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


# ── Features: mel-spectrogram and CQT in a resumable on-disk cache, and the baseline's clip statistics ──


@dataclass
class Features:
    """The cached features of a dataset; row i of every array belongs to row i of `index`.

    index: DataFrame indexed by track_id with columns genre, split, label (int, position in
        cfg.genres). mel: (n, n_mels, n_frames) and cqt: (n, cqt_bins, n_frames) float16 arrays,
        usually read-only memory maps so nothing is loaded until used. stats: per-band mean and
        standard deviation of the training split, keys mel_mean, mel_std, cqt_mean, cqt_std (a
        description of the cache; training adapts the model's own normalisation to the rows it
        trains on, see `adapt_normalization`), empty for features built in memory. embedding: None,
        or (n, 400) float32 musicnn clip embeddings for a model with cfg.musicnn_input (`with_embeddings`).
    """

    index: pd.DataFrame
    mel: np.ndarray
    cqt: np.ndarray
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None  # cache folder, None for features built in memory
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "reason"]))
    embedding: np.ndarray | None = None

    def rows(self, split: str) -> np.ndarray:
        """Row numbers of one split ('training', 'validation' or 'test')."""
        return np.flatnonzero(self.index["split"].to_numpy() == split)

    def fingerprint(self) -> str:
        """Key of these features and their splits, recorded by every result trained on them.

        A cache is named by `features_key` (the audio files, their sizes and times, the settings), so
        its folder name stands for its arrays; features built in memory count by their bytes. The
        index (track ids, splits, labels) counts too: a cross-validation fold is a view with other splits.
        """
        arrays = (self.path.name,) if self.path is not None else (self.mel, self.cqt)
        embedding = () if self.embedding is None else (self.embedding,)
        return _fingerprint(*arrays, *embedding, self.index[["split", "label"]])

    def with_embeddings(self, embeddings: pd.DataFrame) -> Features:
        """These features with each clip's musicnn embedding (`pretrained_embeddings`' default layer,
        indexed by track_id) as `embedding`, for a model with cfg.musicnn_input. Raises DataError
        naming the clips that have features but no embedding."""
        missing = self.index.index.difference(embeddings.index)
        if len(missing):
            raise DataError(
                f"{self.path or 'in-memory features'}: no musicnn embedding for {len(missing)} clip(s) with "
                f"features (track ids {', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}); "
                "compute them with pretrained_embeddings on the same tracks"
            )
        columns = list(_fusion_columns())
        if list(embeddings.columns) != columns:
            raise DataError(
                f"embeddings with {embeddings.shape[1]} columns: a fused model takes the {len(columns)} values of "
                "pretrained_embeddings' default layer (penultimate)"
            )
        return dataclasses.replace(self, embedding=embeddings.loc[self.index.index].to_numpy(np.float32))


FEATURES_FORMAT = 1  # version of the cache layout and feature recipe; bump it to invalidate old caches
TOP_DB = 80.0  # dB: dynamic range kept below each clip's loudest bin
# Config fields that change the features. A new field that changes them must be added here,
# or old caches would be reused for it. Model and training settings are deliberately absent.
FEATURE_SETTINGS = (
    "sample_rate",
    "clip_seconds",
    "n_fft",
    "hop_length",
    "n_mels",
    "cqt_bins",
    "cqt_bins_per_octave",
    "cqt_fmin",
    "genres",
)
_FLUSH_ROWS = 64  # rows computed between two flushes of the cache's done flags to disk
_CACHE_FILES = ("mel.npy", "cqt.npy", "index.csv", "stats.npz", "skipped.csv", "config.json")


def mel_spectrogram(y: np.ndarray, cfg: Config) -> np.ndarray:
    """Log-mel spectrogram of a mono clip `y` (float32 samples at cfg.sample_rate).

    Returns float32 (cfg.n_mels, 1 + len(y) // cfg.hop_length) in dB relative to the clip's
    loudest bin: values lie in [-TOP_DB, 0]. The per-clip reference (ref=np.max) removes the
    loudness differences of mastering and recording, which say little about genre, and keeps
    every clip on the same scale for the network; TOP_DB floors the near-silent bins so that
    silence gives zeros instead of -inf.
    """
    import librosa

    power = librosa.feature.melspectrogram(
        y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels
    )
    return librosa.power_to_db(power, ref=np.max, top_db=TOP_DB).astype(np.float32, copy=False)


def cqt(y: np.ndarray, cfg: Config) -> np.ndarray:
    """Log-magnitude constant-Q transform of a mono clip `y` (float32 samples at cfg.sample_rate).

    cfg.cqt_bins bins from cfg.cqt_fmin Hz (C1) at cfg.cqt_bins_per_octave per octave, one frame
    every cfg.hop_length samples. Returns float32 (cfg.cqt_bins, 1 + len(y) // cfg.hop_length) in
    dB relative to the clip's loudest bin, in [-TOP_DB, 0], for the same reasons as
    `mel_spectrogram`.
    """
    import librosa

    magnitude = np.abs(
        librosa.cqt(
            y,
            sr=cfg.sample_rate,
            hop_length=cfg.hop_length,
            fmin=cfg.cqt_fmin,
            n_bins=cfg.cqt_bins,
            bins_per_octave=cfg.cqt_bins_per_octave,
        )
    )
    return librosa.amplitude_to_db(magnitude, ref=np.max, top_db=TOP_DB).astype(np.float32, copy=False)


def features_key(tracks: pd.DataFrame, cfg: Config) -> str:
    """The 16-hex-digit cache key of `tracks` (as from load_tracks) under `cfg`.

    Hashes FEATURES_FORMAT, the librosa version, the FEATURE_SETTINGS of cfg and, per track, its
    id, genre, split, absolute path, file size and modification time: changing any of them gives
    a new key, so a new cache folder. Raises DataError for a malformed track table.
    """
    table = _checked_tracks(tracks, cfg)
    return _features_key(table, cfg)


def extract_features(
    tracks: pd.DataFrame, cfg: Config, cache_dir: str | os.PathLike | None = None, workers: int | None = None
) -> Features:
    """Mel-spectrograms and CQTs of every track, computed once into `<cache_dir>/features-<key>/`.

    An unchanged dataset with unchanged settings reuses the finished cache without decoding anything.
    Work happens in `features-<key>.partial/`, renamed when complete; an interrupted run resumes from
    the rows already flushed there. Files that cannot be decoded, or give NaN/inf features, are
    skipped, listed in Features.skipped and summed up in a warning when the extraction ends; their
    rows are removed in place (no second copy of the cache on disk), and a run killed meanwhile
    finishes that without decoding again. After the first few clips it prints how long all should take.

    Parameters
    ----------
    tracks : pd.DataFrame
        Indexed by track_id, with columns genre (one of cfg.genres), split ('training', 'validation'
        or 'test') and path (audio file), as `load_tracks` returns it.
    cfg : Config
        The audio and feature settings (FEATURE_SETTINGS); they and the tracks make the cache key
        (`features_key`).
    cache_dir : str or os.PathLike, optional
        Folder of the caches, default cfg.cache_dir.
    workers : int, optional
        Processes, default every available core; 1 computes in this process.

    Returns
    -------
    Features
        The finished cache, memory-mapped, rows sorted by track_id.

    Writes
    ------
    `<cache_dir>/features-<key>/`
        mel.npy and cqt.npy (float16, one row per decoded clip), index.csv (genre, split, label),
        stats.npz (per-band mean and standard deviation of the training split), skipped.csv (path,
        reason) and config.json (format, key, librosa version, feature settings). A finished cache is
        never modified.
    `<cache_dir>/features-<key>.lock`
        Held while the cache is built: another process asking for the same cache meanwhile waits, then
        reads the finished one (two writers would corrupt each other's rows).

    Raises
    ------
    DataError
        For a malformed track table, no training track, or when no file at all can be decoded.
    CacheError
        Naming the folder when the cache cannot be written (disk full, read-only, a file in the way),
        or when a finished cache does not hold cfg's settings.
    """
    table = _checked_tracks(tracks, cfg)
    key = _features_key(table, cfg)
    cache_dir = Path(cache_dir if cache_dir is not None else cfg.cache_dir)
    final = cache_dir / f"features-{key}"
    if final.is_dir():
        return open_features(final, cfg)
    with _writing_to(cache_dir, CacheError, "cfg.cache_dir"):
        cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache_dir / f"features-{key}.lock"):  # one builder at a time; the others wait, then read
        if not final.is_dir():
            _build_features(table, key, cache_dir, cfg, workers)
    features = open_features(final, cfg)
    if len(features.skipped):
        examples = "; ".join(
            f"{_shown(path)}: {reason}" for path, reason in features.skipped.head(3).itertuples(index=False)
        )
        _warn(
            f"{_shown(final)}: skipped {len(features.skipped)} of {len(table)} audio files ({examples}"
            f"{' ...' * (len(features.skipped) > 3)}); all are listed in Features.skipped and skipped.csv"
        )
    return features


def _build_features(table: pd.DataFrame, key: str, cache_dir: Path, cfg: Config, workers: int | None) -> None:
    """Compute the cache `features-<key>` of `table` in its .partial folder (resumed if there), then finish it."""
    from tqdm.auto import tqdm

    final, partial = cache_dir / f"features-{key}", cache_dir / f"features-{key}.partial"
    with _writing_to(cache_dir, CacheError, "cfg.cache_dir"):
        mel, cqt_rows, done = _open_partial(partial, key, table, cfg)
    journal = _compaction_journal(partial)  # a run killed while compacting: every file was tried
    todo = np.flatnonzero(done == 0) if journal is None else np.empty(0, dtype=np.int64)
    skipped: list[tuple[int, str, str]] = [] if journal is None else [tuple(item) for item in journal["skipped"]]
    unflushed: list[int] = []

    def flush() -> None:  # data first, then the flags that vouch for it
        mel.flush()
        cqt_rows.flush()
        done[unflushed] = 1
        done.flush()
        unflushed.clear()

    jobs = [(int(row), str(table["path"].iloc[row])) for row in todo]
    progress = tqdm(total=len(table), initial=len(table) - len(todo), desc=f"features {key}", unit="clip")
    workers = workers or _available_cores()
    # each worker's first clip waits for its process to start and librosa to compile: the pace is timed after
    expected = _ExpectedDuration("feature extraction", len(jobs), "clip", 5 * workers - 2, progress.write, workers)
    try:
        for row, (mel_row, cqt_row, reason) in _feature_results(jobs, cfg, workers):
            if reason is None:
                mel[row], cqt_rows[row] = mel_row, cqt_row
                unflushed.append(row)
                if len(unflushed) >= _FLUSH_ROWS:
                    with _writing_to(cache_dir, CacheError, "cfg.cache_dir"):
                        flush()
            else:
                skipped.append((row, str(table["path"].iloc[row]), reason))
            progress.update()
            expected.update()
    finally:
        with _writing_to(cache_dir, CacheError, "cfg.cache_dir"):
            flush()
        progress.close()
    mel = cqt_rows = None  # close the memory maps before the folder is compacted and renamed
    with _writing_to(cache_dir, CacheError, "cfg.cache_dir"):
        _finish_partial(partial, final, table, done, skipped, key, cfg)


def open_features(path: str | os.PathLike, cfg: Config | None = None) -> Features:
    """The Features of a finished cache folder `path` (as made by extract_features), memory-mapped.

    Raises CacheError naming the folder when it is missing, unfinished (a `.partial` folder or a
    missing file), from another FEATURES_FORMAT, when its files disagree with each other or,
    given `cfg`, when it was extracted with other FEATURE_SETTINGS than cfg's.
    """
    path = Path(path)
    if path.name.endswith(".partial"):
        raise CacheError(
            f"{path}: unfinished feature cache (an interrupted extraction); run extract_features again to resume it"
        )
    if not path.is_dir():
        raise CacheError(f"{path}: no feature cache here; run extract_features to build it")
    missing = [name for name in _CACHE_FILES if not (path / name).is_file()]
    if missing:
        raise CacheError(
            f"{path}: incomplete feature cache, missing {', '.join(missing)}; "
            "delete the folder and run extract_features again"
        )
    try:
        info = json.loads((path / "config.json").read_text())
        index = pd.read_csv(
            path / "index.csv", index_col="track_id", dtype={"genre": str, "split": str, "label": np.int64}
        )
        skipped = pd.read_csv(path / "skipped.csv", dtype=str, keep_default_na=False)
        mel = np.load(path / "mel.npy", mmap_mode="r")
        cqt_rows = np.load(path / "cqt.npy", mmap_mode="r")
        with np.load(path / "stats.npz") as stats_file:
            stats = {name: stats_file[name] for name in stats_file.files}
    except (OSError, ValueError, KeyError) as exc:
        raise CacheError(
            f"{path}: unreadable feature cache ({exc}); delete the folder and run extract_features again"
        ) from None
    if info.get("format") != FEATURES_FORMAT:
        raise CacheError(
            f"{path}: cache format {info.get('format')} but this code reads format "
            f"{FEATURES_FORMAT}; delete the folder and run extract_features again"
        )
    problems = []
    if path.name != f"features-{info.get('key')}":
        problems.append(f"folder name does not match its key {info.get('key')}")
    if not (mel.ndim == cqt_rows.ndim == 3 and mel.dtype == cqt_rows.dtype == np.float16):
        problems.append("mel.npy and cqt.npy must be 3-D float16 arrays")
    elif not (len(mel) == len(cqt_rows) == len(index)):
        problems.append(f"{len(index)} index rows but {len(mel)} mel and {len(cqt_rows)} CQT rows")
    else:
        for name, array in (("mel", mel), ("cqt", cqt_rows)):
            for stat in ("mean", "std"):
                if stats.get(f"{name}_{stat}", np.empty(0)).shape != (array.shape[1],):
                    problems.append(f"stats.npz lacks a {name}_{stat} of {array.shape[1]} bands")
    if problems:
        raise CacheError(
            f"{path}: inconsistent feature cache ({'; '.join(problems)}); delete the "
            "folder and run extract_features again"
        )
    if cfg is not None:
        wanted = json.loads(json.dumps({name: getattr(cfg, name) for name in FEATURE_SETTINGS}))
        cached = info.get("settings", {})
        differing = [
            f"{name} {cached.get(name)!r} (config: {wanted[name]!r})"
            for name in FEATURE_SETTINGS
            if cached.get(name) != wanted[name]
        ]
        if differing:
            raise CacheError(
                f"{path}: features extracted with other settings: {', '.join(differing)}; "
                "call extract_features with this config to get matching features"
            )
    return Features(index=index, mel=mel, cqt=cqt_rows, stats=stats, path=path, skipped=skipped)


def _available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _checked_tracks(tracks: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """`tracks` sorted by track_id with a label column; DataError for anything unusable."""
    missing = {"genre", "split", "path"} - set(tracks.columns)
    if missing:
        raise DataError(
            f"track table lacks column(s) {', '.join(sorted(missing))}; expected genre, split, path (see load_tracks)"
        )
    if tracks.empty:
        raise DataError("track table is empty: no audio to extract features from")
    if tracks.index.has_duplicates:
        duplicates = tracks.index[tracks.index.duplicated()].unique()[:5].tolist()
        raise DataError(f"track table has duplicate track ids, e.g. {duplicates}")
    unknown_genres = sorted(set(tracks["genre"]) - set(cfg.genres), key=str)
    if unknown_genres:
        raise DataError(f"track table has genre(s) {unknown_genres} not in cfg.genres {list(cfg.genres)}")
    unknown_splits = sorted(set(tracks["split"]) - set(SPLITS), key=str)
    if unknown_splits:
        raise DataError(f"track table has split(s) {unknown_splits}; expected one of {list(SPLITS)}")
    if not (tracks["split"] == "training").any():
        raise DataError("track table has no 'training' track: normalization statistics need some")
    table = tracks[["genre", "split", "path"]].sort_index()
    table.index.name = "track_id"
    table["path"] = [os.path.abspath(p) for p in table["path"]]
    table["label"] = [cfg.genres.index(genre) for genre in table["genre"]]
    return table


def _features_key(table: pd.DataFrame, cfg: Config) -> str:
    """Hash of everything that changes the cached result (see features_key)."""
    import hashlib
    from importlib.metadata import version

    def file_signature(path: str) -> tuple[int, int]:
        try:
            stat = os.stat(path)
        except OSError:
            return (-1, -1)  # missing now; it will be skipped, and a new key once it appears
        return (stat.st_size, stat.st_mtime_ns)

    settings = {name: getattr(cfg, name) for name in FEATURE_SETTINGS}
    rows = [
        [str(track_id), genre, split, path, *file_signature(path)]
        for track_id, genre, split, path in table[["genre", "split", "path"]].itertuples()
    ]
    text = json.dumps(
        {"format": FEATURES_FORMAT, "librosa": version("librosa"), "settings": settings, "tracks": rows}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _open_partial(partial: Path, key: str, table: pd.DataFrame, cfg: Config):
    """The row arrays and done flags of an unfinished cache, resumed if sound, else created."""
    from numpy.lib.format import open_memmap

    shapes = {"mel": (len(table), cfg.n_mels, cfg.n_frames), "cqt": (len(table), cfg.cqt_bins, cfg.n_frames)}
    if partial.is_dir():
        try:
            mel = open_memmap(partial / "mel.rows.npy", mode="r+")
            cqt_rows = open_memmap(partial / "cqt.rows.npy", mode="r+")
            done = open_memmap(partial / "done.npy", mode="r+")
            if (mel.shape, cqt_rows.shape, done.shape) == (shapes["mel"], shapes["cqt"], (len(table),)):
                return mel, cqt_rows, done
        except (OSError, ValueError):
            pass  # created but never written completely: start this folder afresh
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    (partial / "config.json").write_text(json.dumps(_cache_info(key, cfg), indent=2))
    mel = _new_memmap(partial / "mel.rows.npy", shapes["mel"])
    cqt_rows = _new_memmap(partial / "cqt.rows.npy", shapes["cqt"])
    done = open_memmap(partial / "done.npy", mode="w+", dtype=np.uint8, shape=(len(table),))
    done.flush()
    return mel, cqt_rows, done


def _cache_info(key: str, cfg: Config) -> dict:
    """What config.json of a cache records: format, key, librosa version and feature settings."""
    from importlib.metadata import version

    settings = {name: getattr(cfg, name) for name in FEATURE_SETTINGS}
    return {
        "format": FEATURES_FORMAT,
        "key": key,
        "librosa": version("librosa"),
        "top_db": TOP_DB,
        "n_frames": cfg.n_frames,
        "settings": settings,
    }


def _init_feature_worker() -> None:
    """Worker set-up: one math thread per process, since the processes already fill the cores."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def _features_of_file(path: str, cfg: Config) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """(mel, cqt, None) as float16 for one audio file, or (None, None, reason) if it is unusable."""
    try:
        y = load_audio(path, cfg.sample_rate, cfg.clip_seconds)
    except AudioError as exc:
        return None, None, str(exc).removeprefix(f"{_shown(path)}: ")
    mel = mel_spectrogram(y, cfg)
    constant_q = cqt(y, cfg)
    for name, array in (("mel-spectrogram", mel), ("CQT", constant_q)):
        if not np.all(np.isfinite(array)):
            return None, None, f"{name} contains NaN or infinite values"
    return mel.astype(np.float16), constant_q.astype(np.float16), None


def _feature_results(jobs: list[tuple[int, str]], cfg: Config, workers: int, compute=_features_of_file):
    """Yield (row, compute(path, cfg)) for every (row, path) job, in completion order.

    workers > 1 runs the jobs in that many 'spawn' processes (safe when the caller has imported
    TensorFlow), with a bounded number in flight so finished arrays never pile up in memory. Raises
    GenreError saying why and what to do when a worker process dies (BrokenProcessPool).
    """
    workers = min(workers, len(jobs))
    if workers <= 1:
        for row, path in jobs:
            yield row, compute(path, cfg)
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    pending_jobs = iter(jobs)
    executor = ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_feature_worker
    )
    try:
        in_flight = {}
        for row, path in itertools.islice(pending_jobs, 4 * workers):
            in_flight[executor.submit(compute, path, cfg)] = row
        while in_flight:
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                row = in_flight.pop(future)
                yield row, future.result()
                for next_row, path in itertools.islice(pending_jobs, 1):
                    in_flight[executor.submit(compute, path, cfg)] = next_row
    except BrokenProcessPool:
        raise GenreError(
            f"a worker process of the {workers} computing features died. Either it ran out of "
            "memory (pass workers=1 or fewer workers, or free memory), or the calling script starts the "
            'extraction without `if __name__ == "__main__":`: each worker process re-imports the script '
            "(the 'spawn' start method), so put the calling code under that guard. Run again afterwards: "
            "finished clips are kept and the extraction resumes"
        ) from None
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _finish_partial(
    partial: Path,
    final: Path,
    table: pd.DataFrame,
    done: np.ndarray,
    skipped: list[tuple[int, str, str]],
    key: str,
    cfg: Config,
) -> None:
    """Compact the successful rows in place, write index, stats and skip list, then rename to `final`."""
    ok_rows = np.flatnonzero(done == 1)
    skipped_table = pd.DataFrame([(path, reason) for _, path, reason in sorted(skipped)], columns=["path", "reason"])
    if len(ok_rows) == 0:
        examples = "; ".join(
            f"{_shown(path)}: {reason}" for path, reason in skipped_table.head(3).itertuples(index=False)
        )
        raise DataError(f"none of the {len(table)} audio files could be decoded ({examples})")
    index = table.iloc[ok_rows][["genre", "split", "label"]]
    if not (index["split"] == "training").any():
        raise DataError("every training file was skipped as unreadable: no normalization statistics")
    # Everything is written beside the row files, which are only cut short and renamed at the end:
    # a failure (disk full) or kill before that leaves a partial folder that still resumes.
    if len(ok_rows) < len(table):
        _compact_rows(partial, ok_rows, skipped)
    stats = {}
    training_rows = np.flatnonzero(index["split"].to_numpy() == "training")  # the successful rows come first now
    for name in ("mel", "cqt"):
        rows = np.load(partial / f"{name}.rows.npy", mmap_mode="r")
        stats[f"{name}_mean"], stats[f"{name}_std"] = _band_stats(rows, training_rows)
        del rows
    index.to_csv(partial / "index.csv")
    skipped_table.to_csv(partial / "skipped.csv", index=False)
    np.savez(partial / "stats.npz", **stats)
    info = _cache_info(key, cfg) | {"tracks": len(index), "skipped": len(skipped_table)}
    (partial / "config.json").write_text(json.dumps(info, indent=2))
    for name in ("mel", "cqt"):
        _cut_rows(partial / f"{name}.rows.npy", len(ok_rows))
        os.replace(partial / f"{name}.rows.npy", partial / f"{name}.npy")
    (partial / "done.npy").unlink()
    (partial / _COMPACTION_JOURNAL).unlink(missing_ok=True)
    try:
        os.replace(partial, final)
    except OSError:  # another run finished the same cache first; keep its copy
        if not final.is_dir():
            raise
        shutil.rmtree(partial)


_COMPACTION_JOURNAL = "compaction.json"  # in an unfinished cache: the skipped files and how far rows have moved


def _compaction_journal(partial: Path) -> dict | None:
    """The journal of a compaction that a killed run left unfinished in `partial`, else None."""
    try:
        return json.loads((partial / _COMPACTION_JOURNAL).read_text())
    except (OSError, ValueError):
        return None


def _compact_rows(partial: Path, ok_rows: np.ndarray, skipped: list[tuple[int, str, str]]) -> None:
    """Move the successful rows of mel.rows.npy and cqt.rows.npy to the front, in order, in place:
    no second copy of a multi-GB cache, no second allocation of its disk space.

    A journal records the skipped files and, after every move, how far each file got, so a run
    killed meanwhile resumes the moves instead of decoding again. A move takes no more rows than
    the gap between its destinations and its sources, so its sources are never overwritten by
    itself or an earlier move: a move repeated after a kill reads the same data.
    """
    from numpy.lib.format import open_memmap

    journal_path = partial / _COMPACTION_JOURNAL
    journal = _compaction_journal(partial) or {
        "skipped": [[int(row), path, reason] for row, path, reason in skipped],
        "moved": {"mel": 0, "cqt": 0},
    }
    _write_json(journal_path, journal)
    in_place = np.flatnonzero(ok_rows != np.arange(len(ok_rows)))  # rows before the first skipped one stay
    first_move = int(in_place[0]) if len(in_place) else len(ok_rows)
    for name in ("mel", "cqt"):
        rows = open_memmap(partial / f"{name}.rows.npy", mode="r+")
        position = max(journal["moved"][name], first_move)
        while position < len(ok_rows):
            count = min(int(ok_rows[position]) - position, 256, len(ok_rows) - position)
            rows[position : position + count] = rows[ok_rows[position : position + count]]
            position += count
            journal["moved"][name] = position
            _write_json(journal_path, journal)
        rows.flush()
        del rows


def _cut_rows(path: Path, n_rows: int) -> None:
    """Keep the first `n_rows` rows of a .npy file in place: its header gets the new shape, padded to
    its old length so the data stays where it is, and the file is truncated."""
    from numpy.lib import format as npy

    with open(path, "r+b") as file:
        version = npy.read_magic(file)
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran_order, dtype = read_header(file)
        if shape[0] == n_rows:
            return
        data_start = file.tell()
        header_start = len(npy.MAGIC_PREFIX) + 2 + (2 if version == (1, 0) else 4)  # magic, version, length
        header = repr(
            {"descr": npy.dtype_to_descr(dtype), "fortran_order": fortran_order, "shape": (n_rows, *shape[1:])}
        ).encode("latin1")
        file.seek(header_start)
        file.write(header.ljust(data_start - header_start - 1) + b"\n")
        file.truncate(data_start + n_rows * int(np.prod(shape[1:])) * dtype.itemsize)


def band_means(features: np.ndarray, rows=None, chunk_rows: int = 256) -> np.ndarray:
    """Each clip's mean over frames, per band: float32 (len(rows), bands) for `rows` (default all)
    of a (clips, bands, frames) array such as Features.mel. Reads `chunk_rows` clips at a time, so
    a memory map is never loaded whole (FMA-small's training mels are 4 GB as float32)."""
    rows = np.arange(len(features)) if rows is None else np.asarray(rows)
    means = np.empty((len(rows), features.shape[1]), dtype=np.float32)
    for start in range(0, len(rows), chunk_rows):
        means[start : start + chunk_rows] = features[rows[start : start + chunk_rows]].astype(np.float32).mean(axis=2)
    return means


def _band_stats(features: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation (float32, shape (bands,)) of features[rows] over rows
    and frames, accumulated in float64 a chunk at a time so a memory map is never loaded whole."""
    total = np.zeros(features.shape[1])
    total_sq = np.zeros(features.shape[1])
    for start in range(0, len(rows), 256):
        chunk = features[rows[start : start + 256]].astype(np.float64)
        total += chunk.sum(axis=(0, 2))
        total_sq += np.square(chunk).sum(axis=(0, 2))
    count = len(rows) * features.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


def _new_memmap(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A new float16 .npy memory map of `shape` whose disk space is reserved at once, so that a
    full disk fails here with OSError(ENOSPC) rather than killing the process (SIGBUS) later."""
    from numpy.lib.format import open_memmap

    array = open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    if hasattr(os, "posix_fallocate"):  # Linux and most Unixes; not macOS
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # file systems without it: write as we go
                raise
        finally:
            os.close(fd)
    return array


BASELINE_MFCCS = 20  # MFCCs of the classical baseline, as in the FMA paper's features
CLIP_STATISTICS_FORMAT = 1  # version of clip_statistics' recipe; part of its cache file name


def clip_statistics(y: np.ndarray, cfg: Config) -> pd.Series:
    """Summary statistics of a mono clip for the classical baseline (the FMA paper's librosa features).

    y: float32 samples at cfg.sample_rate. Frame-wise features with cfg.n_fft / cfg.hop_length:
    BASELINE_MFCCS MFCCs (of a cfg.n_mels-band mel spectrogram), spectral centroid, bandwidth and
    roll-off (Hz), 7 spectral-contrast bands (dB), zero-crossing rate, RMS level and 12 chroma bins;
    of each, the mean and standard deviation over frames. Returns a float64 Series named
    `<feature>[_<k>]_<mean|std>` (88 values, finite for any finite input, silence included).
    """
    import librosa

    sr = cfg.sample_rate
    magnitude = np.abs(librosa.stft(y, n_fft=cfg.n_fft, hop_length=cfg.hop_length))
    power = magnitude**2
    mel = librosa.feature.melspectrogram(S=power, sr=sr, n_mels=cfg.n_mels)
    frames = {
        "mfcc": librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=BASELINE_MFCCS),
        "centroid": librosa.feature.spectral_centroid(S=magnitude, sr=sr, n_fft=cfg.n_fft),
        "bandwidth": librosa.feature.spectral_bandwidth(S=magnitude, sr=sr, n_fft=cfg.n_fft),
        "rolloff": librosa.feature.spectral_rolloff(S=magnitude, sr=sr, n_fft=cfg.n_fft),
        "contrast": librosa.feature.spectral_contrast(S=magnitude, sr=sr, n_fft=cfg.n_fft),
        "zcr": librosa.feature.zero_crossing_rate(y, frame_length=cfg.n_fft, hop_length=cfg.hop_length),
        "rms": librosa.feature.rms(S=magnitude, frame_length=cfg.n_fft),
        "chroma": librosa.feature.chroma_stft(S=power, sr=sr, n_fft=cfg.n_fft, tuning=0.0),
    }
    values = {}
    for name, array in frames.items():
        for k, row in enumerate(array, start=1):
            label = f"{name}_{k:02d}" if len(array) > 1 else name
            values[f"{label}_mean"], values[f"{label}_std"] = float(row.mean()), float(row.std())
    return pd.Series(values, dtype=np.float64)


def extract_clip_statistics(
    tracks: pd.DataFrame, cfg: Config, cache_dir: str | os.PathLike | None = None, workers: int | None = None
) -> pd.DataFrame:
    """`clip_statistics` of every track, computed once into `<cache_dir>/clip-statistics-v<N>-<key>.csv`.

    tracks, cache_dir, workers and the key as for `extract_features` (same dataset and settings,
    same key); the file is written atomically once every track is done, and read back after that.
    Returns a float64 DataFrame indexed by track_id (sorted), one column per statistic; tracks whose
    audio cannot be decoded are left out (as from the feature cache). Raises DataError for a
    malformed track table or when no file at all can be decoded.
    """
    from tqdm.auto import tqdm

    table = _checked_tracks(tracks, cfg)
    key = _features_key(table, cfg)
    path = (
        Path(cache_dir if cache_dir is not None else cfg.cache_dir)
        / f"clip-statistics-v{CLIP_STATISTICS_FORMAT}-{key}.csv"
    )
    if path.is_file():
        return pd.read_csv(path, index_col="track_id")
    jobs = [(int(track_id), str(audio)) for track_id, audio in table["path"].items()]
    results, reasons = {}, []
    progress = tqdm(total=len(jobs), desc=f"clip statistics {key}", unit="clip", mininterval=1)
    with progress:
        for track_id, (statistics, reason) in _feature_results(
            jobs, cfg, workers or _available_cores(), _clip_statistics_of_file
        ):
            if reason is None:
                results[track_id] = statistics
            else:
                reasons.append(f"{_shown(table.at[track_id, 'path'])}: {reason}")
            progress.update()
    if not results:
        raise DataError(f"none of the {len(jobs)} audio files could be decoded ({'; '.join(reasons[:3])})")
    frame = pd.DataFrame.from_dict(results, orient="index").sort_index()
    frame.index.name = "track_id"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_path(path) as tmp:
        frame.to_csv(tmp)
    return pd.read_csv(path, index_col="track_id")  # as later runs will read it, to the last digit


def _clip_statistics_of_file(path: str, cfg: Config) -> tuple[pd.Series | None, str | None]:
    """(clip_statistics, None) of one audio file, or (None, reason) if it is unusable."""
    try:
        y = load_audio(path, cfg.sample_rate, cfg.clip_seconds)
    except AudioError as exc:
        return None, str(exc).removeprefix(f"{_shown(path)}: ")
    return clip_statistics(y, cfg), None  # finite: load_audio's samples are


# ── Model: the report's three-branch CNN in backend-neutral Keras 3, and the classical baseline's classifier ──

# Notebook 03 writes the network out: its #@save cells hold MODEL_BLOCKS, branch_blocks, conv_block, branch
# and classifier_head as they are here (tests/test_lessons.py compares them). Filter shapes follow Pons et
# al. 2017, whose figure the report's lost one cited; mel_horizontal's, Schlüter & Böck 2014. Six "same" 2x2
# pools leave 2 x 21 maps of the seed input (128 x 1292 mel), 1 x 7 of the demo's (64 x 431).

MODEL_BLOCKS = {"mel_vertical": (4, 3), "mel_horizontal": (7, 6), "cqt": (7, 6)}  # branch: (convs, pools)
BRANCH_INPUTS = {"mel_vertical": "mel", "mel_horizontal": "mel", "cqt": "cqt"}


def branch_blocks(branch, height, cfg):
    """(channels, kernel, pool) of each conv block of `branch` on an input `height` bins high; sizes are
    (frequency bins, time frames), and the last blocks have no pool (None)."""
    n_convs, n_pools = MODEL_BLOCKS[branch]
    blocks = []
    for b in range(n_convs):
        channels = cfg.first_block_channels * min(2**b, 8)  # doubled every block, at most 8x
        if branch == "mel_vertical":  # tall: a share of the bands the block sees, a few frames (timbre)
            kernel = (max(1, round(cfg.vertical_kernel_share * height)), cfg.vertical_kernel_frames)
        elif branch == "mel_horizontal":  # one band high, long in time (rhythm, onsets)
            kernel = (1, cfg.horizontal_kernel_frames[min(b, len(cfg.horizontal_kernel_frames) - 1)])
        else:  # cqt: small squares, as image CNNs use (pitch patterns)
            kernel = tuple(cfg.cqt_kernel)
        pool = None if b >= n_pools else (4, 2) if branch == "mel_vertical" and b == 0 else (2, 2)
        blocks.append((channels, kernel, pool))
        if pool:
            height = -(-height // pool[0])  # "same" pooling rounds up
    return blocks


def conv_block(x, channels, kernel, pool, name, cfg):
    """The report's block: convolution -> ReLU -> batch normalisation -> max-pooling (none if `pool` is None)."""
    from keras import layers

    x = layers.Conv2D(channels, kernel, padding="same", kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.ReLU(name=f"{name}_relu")(x)
    x = layers.BatchNormalization(momentum=cfg.bn_momentum, name=f"{name}_bn")(x)
    if pool:
        x = layers.MaxPooling2D(pool, padding="same", name=f"{name}_pool")(x)
    return x


def branch(x, name, cfg):
    """One branch on `x` (batch, bins, frames, channels): its conv blocks, then the mean of every channel."""
    from keras import layers

    for b, (channels, kernel, pool) in enumerate(branch_blocks(name, x.shape[1], cfg), start=1):
        x = conv_block(x, channels, kernel, pool, f"{name}_block{b}", cfg)
    return layers.GlobalAveragePooling2D(name=f"{name}_global_pool")(x)


def classifier_head(pooled, cfg):
    """The branches' vectors joined, a dense layer with dropout, and a softmax over the genres."""
    from keras import layers

    x = layers.Concatenate(name="concat")(pooled) if len(pooled) > 1 else pooled[0]
    x = layers.Dense(cfg.dense_units, activation="relu", kernel_initializer="he_normal", name="dense")(x)
    x = layers.Dropout(cfg.dropout, name="dropout")(x)
    return layers.Dense(len(cfg.genres), activation="softmax", dtype="float32", name="genre")(x)


def _check_branches(branches) -> tuple[str, ...]:
    branches = tuple(branches)
    unknown = [b for b in branches if b not in MODEL_BLOCKS]
    if not branches or unknown or len(set(branches)) != len(branches):
        raise ConfigError(
            f"branches {branches!r}: choose a non-empty subset of {', '.join(MODEL_BLOCKS)} without repeats"
        )
    return branches


def build_model(cfg: Config, branches=None):
    """The report's three-branch CNN as a functional keras.Model, compiled by `train`.

    Each input is standardised per band, each branch (`branch`) is a stack of `conv_block`s ending in
    global average pooling, and `classifier_head` joins them; every layer is named
    `<branch>_block<b>_<role>`. Options wrap around that network: with cfg.time_masks or
    cfg.freq_masks a SpecAugment layer masks each input while training; with cfg.musicnn_input
    musicnn's clip embedding joins the branches before the head (late fusion; `Features.with_embeddings`
    supplies it); on GPUs the layers compute in mixed precision, mirrored over all of them
    (`configure_devices`).

    Parameters
    ----------
    cfg : Config
        Input heights (n_mels, cqt_bins), first_block_channels, the kernel shapes, dense_units,
        dropout, bn_momentum and the genres.
    branches : sequence of str, optional
        A non-empty subset of BRANCHES, default cfg.branches; only the inputs they need are created.

    Returns
    -------
    keras.Model
        Inputs "mel" (batch, cfg.n_mels, frames, 1) and/or "cqt" (batch, cfg.cqt_bins, frames, 1):
        the cached float16 dB features as they are, any number of frames >= 1; with cfg.musicnn_input
        also "embedding" (batch, 400) float32. Each input's Normalization layer
        (`<input>_normalization`) is adapted to the training split by `adapt_normalization` and saved
        with the model. Output "genre" (batch, len(cfg.genres)) float32 probabilities. ConfigError for
        unknown branches.
    """
    keras = import_keras()
    layers = keras.layers

    configure_devices()
    branches = _check_branches(cfg.branches if branches is None else branches)
    heights = {"mel": cfg.n_mels, "cqt": cfg.cqt_bins}
    with _strategy_scope():
        inputs = {
            name: keras.Input((heights[name], None, 1), name=name, dtype="float16")
            for name in dict.fromkeys(BRANCH_INPUTS[b] for b in branches)
        }
        normalised = {  # per band (axis 1), in float32; then SpecAugment's masks when cfg asks for them
            name: _spec_augment(
                layers.Normalization(axis=1, dtype="float32", name=f"{name}_normalization")(x), name, cfg
            )
            for name, x in inputs.items()
        }
        pooled = [branch(normalised[BRANCH_INPUTS[b]], b, cfg) for b in branches]
        if cfg.musicnn_input:
            inputs["embedding"] = keras.Input((len(_fusion_columns()),), name="embedding", dtype="float32")
            pooled.append(layers.Normalization(dtype="float32", name="embedding_normalization")(inputs["embedding"]))
        name = "genre_cnn_" + "_".join(branches) + ("_musicnn" if cfg.musicnn_input else "")
        return keras.Model(inputs, classifier_head(pooled, cfg), name=name)


def _spec_augment(tensor, name: str, cfg: Config):
    """`tensor` through a SpecAugment layer named `<name>_spec_augment` when cfg asks for masks, else itself."""
    if not (cfg.time_masks and cfg.time_mask_frames) and not (cfg.freq_masks and cfg.freq_mask_bins):
        return tensor
    return _spec_augment_class()(
        cfg.time_masks,
        cfg.time_mask_frames,
        cfg.freq_masks,
        cfg.freq_mask_bins,
        seed=cfg.seed,
        name=f"{name}_spec_augment",
    )(tensor)


@functools.cache
def _spec_augment_class():
    """The SpecAugment layer class (created on first use so Keras is not imported with the module;
    registered, so saved models holding it load again)."""
    keras = import_keras()
    ops = keras.ops

    @keras.saving.register_keras_serializable(package="genre_utils")
    class SpecAugment(keras.layers.Layer):
        """Time and frequency masking (Park et al. 2019) of (batch, bins, frames, channels) inputs.

        While training, every example gets `time_masks` stripes of 0 to `time_mask_frames` frames and
        `freq_masks` stripes of 0 to `freq_mask_bins` bins, at random positions, set to 0 (the mean of
        normalised input). At inference the layer passes its input through unchanged.
        """

        def __init__(self, time_masks=0, time_mask_frames=0, freq_masks=0, freq_mask_bins=0, seed=None, **kwargs):
            super().__init__(**kwargs)
            self.time_masks, self.time_mask_frames = int(time_masks), int(time_mask_frames)
            self.freq_masks, self.freq_mask_bins = int(freq_masks), int(freq_mask_bins)
            self.seed = seed
            self.seed_generator = keras.random.SeedGenerator(seed)
            self.supports_masking = True

        def _stripes(self, inputs, axis: int, count: int, width: int):
            """1 where none of `count` random stripes (0..width wide, along `axis`) lies, else 0."""
            per_example = ops.shape(inputs[:, :1, :1, :1])  # (batch, 1, 1, 1), batch known at run time
            length = ops.cast(ops.shape(inputs)[axis], "float32")
            position = ops.cast(ops.arange(ops.shape(inputs)[axis]), "float32")
            position = ops.reshape(position, (1, -1, 1, 1) if axis == 1 else (1, 1, -1, 1))
            keep = ops.ones(per_example, "float32")
            for _ in range(count):
                size = ops.floor(keras.random.uniform(per_example, 0.0, width + 1.0, seed=self.seed_generator))
                size = ops.minimum(size, length)
                start = ops.floor(keras.random.uniform(per_example, seed=self.seed_generator) * (length - size + 1))
                inside = ops.logical_and(position >= start, position < start + size)
                keep = keep * (1.0 - ops.cast(inside, "float32"))
            return keep

        def call(self, inputs, training=None):
            if not training:
                return inputs
            keep = ops.ones_like(inputs[:, :1, :1, :1], dtype="float32")
            if self.time_masks and self.time_mask_frames:
                keep = keep * self._stripes(inputs, 2, self.time_masks, self.time_mask_frames)
            if self.freq_masks and self.freq_mask_bins:
                keep = keep * self._stripes(inputs, 1, self.freq_masks, self.freq_mask_bins)
            return inputs * ops.cast(keep, inputs.dtype)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {
                **super().get_config(),
                "time_masks": self.time_masks,
                "time_mask_frames": self.time_mask_frames,
                "freq_masks": self.freq_masks,
                "freq_mask_bins": self.freq_mask_bins,
                "seed": self.seed,
            }

    return SpecAugment


def load_model(path: str | os.PathLike):
    """A model saved by `train` (best.keras, last.keras) or `finetune_musicnn` (model.keras), with this
    module's layers (SpecAugment) and learning-rate schedule (gradient accumulation's) known.

    Keras' safe mode stays on: a file that would run code when loaded (a Lambda layer's bytecode) is
    refused. Raises DataError naming the file when it is missing, not a .keras archive (a pickle, a
    truncated download) or not a model this code can build.
    """
    keras = import_keras()

    path = Path(path)
    _spec_augment_class()  # registers the layer with Keras' deserialisation
    _optimizer_step_schedule_class()  # ... and the schedule of a run with cfg.accumulation_steps
    try:
        with open(path, "rb") as file:
            magic = file.read(4)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the model ({_first_line(exc)})") from None
    if magic != b"PK\x03\x04":
        raise DataError(f"{path}: not a .keras model archive (a zip file written by Keras expected); not loaded")
    try:
        with _silenced_stderr():
            return keras.saving.load_model(path, safe_mode=True)
    except Exception as exc:  # truncated archives and foreign configs fail deep inside Keras
        raise DataError(f"{path}: not a model this code can load ({_first_line(exc)})") from None


def model_table(model, n_frames: int | None = None) -> pd.DataFrame:
    """One row per conv block of a `build_model` model: branch, block, kernel, filters, pool,
    output shape (bins, frames, channels) for an input `n_frames` long (None: any length) and
    parameters (conv + batch norm)."""
    rows, frames = [], {}
    for layer in model.layers:
        if not layer.name.endswith("_conv"):
            continue
        prefix = layer.name.removesuffix("_conv")
        branch, block = prefix.rsplit("_block", 1)
        pool = next((other for other in model.layers if other.name == f"{prefix}_pool"), None)
        bn = model.get_layer(f"{prefix}_bn")
        length = frames.get(branch, n_frames)
        if pool and length is not None:
            length = -(-length // pool.pool_size[1])  # "same" pooling rounds up
        frames[branch] = length
        height, _, channels = (pool or bn).output.shape[1:]
        rows.append(
            {
                "branch": branch,
                "block": int(block),
                "kernel": "x".join(map(str, layer.kernel_size)),
                "filters": layer.filters,
                "pool": "x".join(map(str, pool.pool_size)) if pool else "-",
                "output shape": (height, length, channels),
                "parameters": layer.count_params() + bn.count_params(),
            }
        )
    order = {branch: i for i, branch in enumerate(MODEL_BLOCKS)}
    return pd.DataFrame(rows).sort_values(
        ["branch", "block"], key=lambda c: c.map(order) if c.name == "branch" else c, ignore_index=True
    )


def branch_parameters(model) -> pd.Series:
    """Trainable + non-trainable parameters per branch ("head" = dense layers; "normalization" = the
    inputs' per-band means and variances), and "total"."""
    counts = dict.fromkeys((*MODEL_BLOCKS, "normalization", "head"), 0)
    for layer in model.layers:
        branch = (
            "normalization"
            if layer.name.endswith("_normalization")
            else next((b for b in MODEL_BLOCKS if layer.name.startswith(b + "_")), "head")
        )
        counts[branch] += layer.count_params()
    counts = {name: count for name, count in counts.items() if count or name == "head"}
    counts["total"] = model.count_params()
    return pd.Series(counts, name="parameters")


BASELINE_KINDS = ("svm", "logistic")


def baseline_classifier(kind: str = "svm", seed: int = 42):
    """The classical baseline as an unfitted scikit-learn Pipeline over `clip_statistics` vectors.

    StandardScaler, then an RBF-kernel SVC (kind "svm", the FMA paper's best baseline) or a
    multinomial LogisticRegression ("logistic"); `seed` fixes their randomness. Raises ConfigError
    for an unknown kind.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if kind == "svm":
        classifier = SVC(kernel="rbf", C=1.0, random_state=seed)
    elif kind == "logistic":
        classifier = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    else:
        raise ConfigError(f"baseline kind {kind!r}: choose one of {', '.join(BASELINE_KINDS)}")
    return make_pipeline(StandardScaler(), classifier)


# ── Pretrained network: musicnn (Pons et al. 2018) ported to Keras 3, frozen or fine-tuned ──
# musicnn's MSD model (Pons & Serra 2019), trained to tag ~200,000 songs of the Million Song Dataset with
# their 50 most frequent last.fm tags, rebuilt layer for layer as a frozen feature extractor. The same
# network trained on MagnaTagATune (~21,000 clips of the Magnatune catalogue, 50 crowd-sourced tags) is a
# second ear (MUSICNN_NETWORKS). Their weights come from the `musicnn` package on PyPI (ISC licence),
# converted once at set-up (`make musicnn`).

MUSICNN_SAMPLE_RATE = 16_000  # Hz
MUSICNN_N_FFT = 512  # samples
MUSICNN_HOP = 256  # samples between frames (16 ms)
MUSICNN_MELS = 96  # mel bands
MUSICNN_PATCH_FRAMES = 187  # frames of one input patch (3 s); a clip is cut into consecutive patches
MUSICNN_TAGS = (
    "rock",
    "pop",
    "alternative",
    "indie",
    "electronic",
    "female vocalists",
    "dance",
    "00s",
    "alternative rock",
    "jazz",
    "beautiful",
    "metal",
    "chillout",
    "male vocalists",
    "classic rock",
    "soul",
    "indie rock",
    "Mellow",
    "electronica",
    "80s",
    "folk",
    "90s",
    "chill",
    "instrumental",
    "punk",
    "oldies",
    "blues",
    "hard rock",
    "ambient",
    "acoustic",
    "experimental",
    "female vocalist",
    "guitar",
    "Hip-Hop",
    "70s",
    "party",
    "country",
    "easy listening",
    "sexy",
    "catchy",
    "funk",
    "electro",
    "heavy metal",
    "Progressive rock",
    "60s",
    "rnb",
    "indie pop",
    "sad",
    "House",
    "happy",
)  # the MSD model's outputs, in order
MUSICNN_PACKAGE = "musicnn==0.1.0"  # the PyPI release whose wheel ships the TF1 checkpoints
MUSICNN_WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"
MUSICNN_WEIGHTS = ROOT / "cache" / "musicnn" / "msd_musicnn.npz"  # converted weights, written by `make musicnn`
# network -> its checkpoint in the wheel: "msd" (the Million Song Dataset, 50 last.fm tags) is the default
# everywhere, "mtt" (MagnaTagATune, the Magnatune catalogue, 50 tags) the second ear; each network's
# weights sit beside MUSICNN_WEIGHTS as <network>_musicnn.npz (`musicnn_weights`)
MUSICNN_NETWORKS = {"msd": "MSD_musicnn", "mtt": "MTT_musicnn"}
MUSICNN_LAYERS = ("penultimate", "mean_pool", "max_pool", "taggram")  # outputs, sizes 200, 753, 753, 50
EMBEDDINGS_FORMAT = 1  # version of the embeddings cache recipe; part of its file name
EMBEDDING_KINDS = ("logistic", "svm", "mlp")
# inverse L2 strengths the logistic probe chooses from: 400 embedding values and a few hundred clips need
# strong regularisation (on the real-music set, C = 1 scores 8 points below C = 0.001)
EMBEDDING_LOGISTIC_CS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
# checkpoint variable scope -> Keras layer of build_musicnn (tf.compat.v1.layers numbered them in creation order)
_MUSICNN_CHECKPOINT_LAYERS = {
    "batch_normalization": "input_norm",
    "conv2d": "frontend_timbral_7x38",
    "batch_normalization_1": "frontend_timbral_7x38_norm",
    "conv2d_1": "frontend_timbral_7x67",
    "batch_normalization_2": "frontend_timbral_7x67_norm",
    "conv2d_2": "frontend_temporal_128",
    "batch_normalization_3": "frontend_temporal_128_norm",
    "conv2d_3": "frontend_temporal_64",
    "batch_normalization_4": "frontend_temporal_64_norm",
    "conv2d_4": "frontend_temporal_32",
    "batch_normalization_5": "frontend_temporal_32_norm",
    "conv2d_5": "midend_conv1",
    "batch_normalization_6": "midend_conv1_norm",
    "conv2d_6": "midend_conv2",
    "batch_normalization_7": "midend_conv2_norm",
    "conv2d_7": "midend_conv3",
    "batch_normalization_8": "midend_conv3_norm",
    "batch_normalization_9": "backend_pool_norm",
    "dense": "backend_dense",
    "batch_normalization_10": "penultimate",
    "dense_1": "tag_logits",
}


def musicnn_patches(y: np.ndarray) -> np.ndarray:
    """musicnn's input: the log-mel patches of a mono clip `y` (float32 samples at 16 kHz).

    As the original's `batch_data`: a 96-band mel power spectrogram (n_fft 512, hop 256), cast to float16,
    log10(1 + 10000 * mel) in float16, cut into consecutive 187-frame patches (3 s; the incomplete last patch
    is dropped). Where that float16 product would overflow (loud bins of real music, 1-3 % of the bins of the
    real-music set's pop and rock, where the original gives inf and then the same tags for every such patch),
    the value is computed in float32, so patches are finite for any finite `y`; elsewhere they are the original's.
    A clip shorter than one patch is zero-padded to one. Returns float16 (patches, 187, 96), (time, mel).
    """

    y = np.pad(y, (0, max(0, (MUSICNN_PATCH_FRAMES - 1) * MUSICNN_HOP - len(y))))
    log_mel = _musicnn_log_mel(y, center=True)
    n_patches = len(log_mel) // MUSICNN_PATCH_FRAMES
    return log_mel[: n_patches * MUSICNN_PATCH_FRAMES].reshape(n_patches, MUSICNN_PATCH_FRAMES, MUSICNN_MELS)


def _musicnn_log_mel(y: np.ndarray, center: bool) -> np.ndarray:
    """musicnn's float16 log-mel frames (time, mel) of 16 kHz samples, as `musicnn_patches` describes."""
    import librosa

    power = librosa.feature.melspectrogram(
        y=y, sr=MUSICNN_SAMPLE_RATE, n_fft=MUSICNN_N_FFT, hop_length=MUSICNN_HOP, n_mels=MUSICNN_MELS, center=center
    ).T
    cast = power <= np.finfo(np.float16).max  # the original's float16 mel, where float16 holds it
    product = 10000 * np.where(cast, np.where(cast, power, 0).astype(np.float16), power)  # float32
    fits = product < 65520  # float16 holds 10000 * mel: the original's float16 arithmetic
    log_mel = np.log10(np.where(fits, product, 0).astype(np.float16) + 1)
    log_mel[~fits] = np.log10(product[~fits] + 1)
    return log_mel


_PATCH_SAMPLES = MUSICNN_PATCH_FRAMES * MUSICNN_HOP  # a musicnn patch's span: 3 s at 16 kHz
# Windows or patches a streamed prediction holds at a time. TensorFlow's oneDNN kernels keep memory for
# the largest batch they have seen: musicnn at 32 patches a batch peaked at 2.2-2.5 GiB on a 20-minute
# file, at 8 at 1.36 GiB, the peak of a 30 s clip (10 patches, one batch): benchmarks/predict_memory.py
_PREDICT_BATCH = 8


def _streamed_musicnn_patches(stream: _AudioStream):
    """(start_s, patches) of an audio stream at 16 kHz, _PREDICT_BATCH patches at a time: `musicnn_patches`
    of the whole file, each patch computed from its own samples (its frames, centred as there, reach
    half an FFT into the neighbouring patches), so memory does not grow with the file's length."""
    margin = MUSICNN_N_FFT // 2
    starts, patches, k = [], [], 0
    while k == 0 or stream.reaches(k * _PATCH_SAMPLES + (MUSICNN_PATCH_FRAMES - 1) * MUSICNN_HOP):
        _, y = stream.window(k * _PATCH_SAMPLES - margin, _PATCH_SAMPLES + margin)  # zeros past either end
        patches.append(_musicnn_log_mel(y, center=False))
        starts.append(k * _PATCH_SAMPLES / MUSICNN_SAMPLE_RATE)
        k += 1
        if len(patches) == _PREDICT_BATCH:
            yield np.array(starts), np.stack(patches)
            starts, patches = [], []
    if patches:
        yield np.array(starts), np.stack(patches)


def _streamed_predictions(batches, predict) -> pd.DataFrame:
    """The rows of `predict(*batch)` (a DataFrame indexed by start_s) for every batch, in order."""
    return pd.concat([predict(*batch) for batch in batches])


def _window_batches(windows):
    """(starts, windows) of a `_AudioStream.windows` generator, _PREDICT_BATCH at a time."""
    while batch := list(itertools.islice(windows, _PREDICT_BATCH)):
        yield tuple(map(np.array, zip(*batch)))


def build_musicnn():
    """The MSD_musicnn network of Pons et al. (2018) as a functional Keras 3 model, weights untrained.

    Input: log-mel patches (batch, 187, 96) from `musicnn_patches`. Front-end (musically motivated
    filters over the batch-normalised input): two timbral convolutions 7 frames x 38 and 67 bands
    (40 % and 70 % of the mel axis, 204 filters each) and three temporal ones of 128, 64 and 32 frames
    x 1 band (51 filters each), each followed by batch norm and a max over frequency: 561 features per
    frame. Mid-end: three 7-frame convolutions of 64 filters with residual connections, densely
    concatenated with the front-end: 753 features per frame. Back-end: max and mean over time (753
    each), batch norm, a 200-unit dense layer and batch norm (the penultimate layer), 50 sigmoid tags.
    Returns a Model named "msd_musicnn" with dict outputs taggram (50), penultimate (200), mean_pool
    and max_pool (753 each); `load_musicnn` gives it the trained weights.

    References
    ----------
    J. Pons, O. Nieto, M. Prockup, E. M. Schmidt, A. F. Ehmann and X. Serra, "End-to-end learning for
    music audio tagging at scale", ISMIR 2018. J. Pons and X. Serra, "musicnn: pre-trained convolutional
    neural networks for music audio tagging", ISMIR late-breaking demo 2019.
    """
    keras = import_keras()
    patches = keras.Input((MUSICNN_PATCH_FRAMES, MUSICNN_MELS), name="log_mel")
    pooled = _musicnn_backend(_musicnn_frontend(patches))
    dropped = keras.layers.Dropout(0.5, name="backend_dropout")(pooled["penultimate"])
    logits = keras.layers.Dense(len(MUSICNN_TAGS), name="tag_logits")(dropped)
    taggram = keras.layers.Activation("sigmoid", name="taggram")(logits)
    return keras.Model(patches, {"taggram": taggram, **pooled}, name="msd_musicnn")


def _musicnn_frontend(patches):
    """musicnn's input batch norm and front-end: log-mel patches (batch, 187, 96) -> (batch, 187, 561)."""
    layers = import_keras().layers
    image = layers.Reshape((MUSICNN_PATCH_FRAMES, MUSICNN_MELS, 1), name="add_channel")(patches)
    normalized = layers.BatchNormalization(name="input_norm")(image)
    padded = layers.ZeroPadding2D(((3, 3), (0, 0)), name="frontend_timbral_pad")(normalized)
    frontend = []
    for height in (38, 67):  # int(0.4 * 96), int(0.7 * 96) bands: timbre (spectral envelopes)
        name = f"frontend_timbral_7x{height}"
        x = layers.Conv2D(204, (7, height), activation="relu", name=name)(padded)
        frontend.append(_max_over_frequency(layers.BatchNormalization(name=f"{name}_norm")(x), name))
    for length in (128, 64, 32):  # frames (2 s, 1 s, 0.5 s) x 1 band: rhythm and tempo
        name = f"frontend_temporal_{length}"
        x = layers.ZeroPadding2D((((length - 1) // 2, length // 2), (0, 0)), name=f"{name}_pad")(normalized)
        x = layers.Conv2D(51, (length, 1), activation="relu", name=name)(x)  # TF's "same" padding, made explicit
        frontend.append(_max_over_frequency(layers.BatchNormalization(name=f"{name}_norm")(x), name))
    return layers.Concatenate(name="frontend")(frontend)


def _musicnn_backend(frontend) -> dict:
    """musicnn's mid-end and back-end up to the penultimate layer: front-end features (batch, 187, 561)
    -> {"penultimate": (batch, 200), "mean_pool", "max_pool": (batch, 753)}."""
    layers = import_keras().layers
    midend = [frontend]
    x = frontend
    for number in (1, 2, 3):  # 7-frame convolutions over all features; the 2nd and 3rd add a residual
        name = f"midend_conv{number}"
        conv = layers.Conv1D(64, 7, activation="relu", name=name)(layers.ZeroPadding1D(3, name=f"{name}_pad")(x))
        conv = layers.BatchNormalization(name=f"{name}_norm")(conv)
        x = conv if number == 1 else layers.Add(name=f"midend_residual{number}")([conv, x])
        midend.append(x)
    midend = layers.Concatenate(name="midend")(midend)
    max_pool = layers.GlobalMaxPooling1D(name="max_pool")(midend)
    mean_pool = layers.GlobalAveragePooling1D(name="mean_pool")(midend)
    x = layers.Concatenate(name="backend_pool")([max_pool, mean_pool])
    x = layers.Dropout(0.5, name="backend_pool_dropout")(layers.BatchNormalization(name="backend_pool_norm")(x))
    x = layers.Dense(200, activation="relu", name="backend_dense")(x)
    return {
        "penultimate": layers.BatchNormalization(name="penultimate")(x),
        "mean_pool": mean_pool,
        "max_pool": max_pool,
    }


def _max_over_frequency(x, name: str):
    """(batch, time, bands, filters) -> (batch, time, filters): the strongest response at any band."""
    layers = import_keras().layers
    pooled = layers.MaxPooling2D((1, x.shape[2]), name=f"{name}_pool")(x)
    return layers.Reshape((x.shape[1], x.shape[3]), name=f"{name}_squeeze")(pooled)


def musicnn_weights(network: str = "msd") -> Path:
    """Where `make musicnn` puts the converted weights of `network` (a key of MUSICNN_NETWORKS).

    >>> musicnn_weights("mtt").name
    'mtt_musicnn.npz'
    """
    if network not in MUSICNN_NETWORKS:
        raise ConfigError(f"musicnn network {network!r}: choose from {', '.join(MUSICNN_NETWORKS)}")
    return MUSICNN_WEIGHTS.with_name(f"{network}_musicnn.npz")


def load_musicnn(weights: str | os.PathLike = MUSICNN_WEIGHTS):
    """`build_musicnn()` with converted weights from `weights` (see `fetch_musicnn_weights`; default the
    MSD network's, `musicnn_weights("mtt")` for the MagnaTagATune one), frozen.

    Raises CacheError naming the file and the command that makes it when it is missing, and when it
    does not fit the network (delete it and run the command again).
    """
    path = Path(weights)
    if not path.is_file():
        raise CacheError(
            f"{path}: musicnn weights not found; run `make musicnn` (or `python genre_utils.py "
            "musicnn-weights`) once, with access to PyPI, to download and convert them"
        )
    with _silenced_stderr():  # TensorFlow logs its CUDA probing on a machine without a GPU
        model = build_musicnn()
    _set_musicnn_weights(model.layers, path)
    model.trainable = False
    return model


def _set_musicnn_weights(layers, path: Path) -> None:
    """Give each of `layers` that has weights its converted weights from `path`, matched by layer name."""
    try:
        with np.load(path) as arrays:
            for layer in layers:
                if layer.weights:
                    layer.set_weights([arrays[f"{layer.name}/{w.path.rsplit('/', 1)[-1]}"] for w in layer.weights])
    except (OSError, ValueError, KeyError) as exc:
        raise CacheError(
            f"{path}: not musicnn weights for this network ({_first_line(exc)}); delete it and run `make musicnn` again"
        ) from None


def fetch_musicnn_weights(folder: str | os.PathLike = MUSICNN_WEIGHTS.parent) -> list[Path]:
    """Download musicnn's wheel from PyPI and convert the checkpoint of every MUSICNN_NETWORKS network
    into `folder` (set-up, once).

    Runs `pip download --no-deps musicnn==0.1.0` (the package itself cannot be installed here: it pins
    numpy < 1.17), checks the wheel's SHA-256, reads each TF1 checkpoint with TensorFlow and writes its
    weights as an .npz keyed `<Keras layer>/<weight>` in build_musicnn's shapes, atomically. Converts
    only the networks whose file is missing, and downloads nothing when none is. musicnn is by Jordi
    Pons, ISC licence (free use with the copyright notice). Returns the weights' paths. Raises
    CacheError when the download, the check or the conversion fails, or a file cannot be written.

    Writes
    ------
    `<folder>/<network>_musicnn.npz` (3.2 MB each), and nothing else: the wheel lives in a temporary folder.
    """
    import hashlib
    import subprocess
    import tempfile
    import zipfile

    paths = {network: Path(folder) / musicnn_weights(network).name for network in MUSICNN_NETWORKS}
    missing = [network for network, path in paths.items() if not path.is_file()]
    if not missing:
        return list(paths.values())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", MUSICNN_PACKAGE, "--dest", str(tmp)],
            capture_output=True,
            text=True,
        )
        wheels = sorted(tmp.glob("musicnn-*.whl"))
        if done.returncode or not wheels:
            raise CacheError(
                f"pip download {MUSICNN_PACKAGE} failed ({(done.stderr.strip() or 'no wheel')[-300:]}); "
                "the musicnn weights need PyPI once"
            )
        digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
        if digest != MUSICNN_WHEEL_SHA256:
            raise CacheError(
                f"{wheels[0].name}: SHA-256 {digest}, expected {MUSICNN_WHEEL_SHA256}; not the "
                "musicnn release these weights were checked against"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            for network in missing:
                checkpoint = MUSICNN_NETWORKS[network]
                for suffix in (".index", ".data-00000-of-00001"):  # the checkpoint's prefix is empty: name it
                    (tmp / f"{checkpoint}{suffix}").write_bytes(wheel.read(f"musicnn/{checkpoint}/{suffix}"))
                arrays = _converted_musicnn_checkpoint(tmp / checkpoint)
                with _writing_to(paths[network].parent, CacheError, "the weights folder"):
                    paths[network].parent.mkdir(parents=True, exist_ok=True)
                    with _atomic_path(paths[network]) as partial:
                        with open(partial, "wb") as file:
                            np.savez(file, **arrays)
    return list(paths.values())


def _converted_musicnn_checkpoint(prefix: Path) -> dict[str, np.ndarray]:
    """The weights of musicnn's TF1 checkpoint `prefix`, keyed and shaped for build_musicnn."""
    with _silenced_stderr():
        import tensorflow as tf  # set-up code: reads the original's checkpoint format

    reader = tf.train.load_checkpoint(str(prefix))
    arrays = {}
    for scope, layer in _MUSICNN_CHECKPOINT_LAYERS.items():
        names = ("gamma", "beta", "moving_mean", "moving_variance") if "batch_norm" in scope else ("kernel", "bias")
        for name in names:
            arrays[f"{layer}/{name}"] = reader.get_tensor(f"{scope}/{name}").astype(np.float32)
    for layer in ("midend_conv1", "midend_conv2", "midend_conv3"):  # a conv2d spanning all features = Conv1D
        kernel = arrays[f"{layer}/kernel"]
        arrays[f"{layer}/kernel"] = kernel.reshape(kernel.shape[0], kernel.shape[1], kernel.shape[3])
    # The original flattens (753 features, [max, mean]) interleaved; build_musicnn concatenates all maxima,
    # then all means: reorder what reads that vector
    order = np.arange(2 * 753).reshape(753, 2).T.reshape(-1)
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        arrays[f"backend_pool_norm/{name}"] = arrays[f"backend_pool_norm/{name}"][order]
    arrays["backend_dense/kernel"] = arrays["backend_dense/kernel"][order]
    return arrays


def musicnn_outputs(patches: np.ndarray, model, batch_size: int = 32) -> dict[str, np.ndarray]:
    """The network's MUSICNN_LAYERS outputs for log-mel `patches` (n, 187, 96): float32 (n, size) each.

    Computed by the model's compiled predict function: on a CPU 2x as fast as calling the model
    eagerly for a 10 s clip (3 patches), 1.3x for a 30 s one (benchmarks/embeddings.py)."""
    outputs = {name: [] for name in MUSICNN_LAYERS}
    for start in range(0, len(patches), batch_size):
        batch = model.predict_on_batch(np.asarray(patches[start : start + batch_size], dtype=np.float32))
        for name in MUSICNN_LAYERS:
            outputs[name].append(np.asarray(batch[name], dtype=np.float32))
    return {name: np.concatenate(arrays) for name, arrays in outputs.items()}


def musicnn_tags(y: np.ndarray, model) -> pd.DataFrame:
    """What the frozen MSD network hears in a clip `y` (mono float32 at 16 kHz): the tag probabilities
    of each 3 s patch, one row per patch (indexed by its start in seconds), one column per MSD tag."""
    taggram = musicnn_outputs(musicnn_patches(y), model)["taggram"]
    starts = np.arange(len(taggram)) * MUSICNN_PATCH_FRAMES * MUSICNN_HOP / MUSICNN_SAMPLE_RATE
    return pd.DataFrame(taggram, index=pd.Index(starts, name="start_s"), columns=list(MUSICNN_TAGS))


def musicnn_embedding(y: np.ndarray, model) -> np.ndarray:
    """One clip's pooled embedding: mean and max over its 3 s patches of every MUSICNN_LAYERS output,
    float32, in the order of `_embedding_columns()` (3,512 values)."""
    outputs = musicnn_outputs(musicnn_patches(y), model)
    return np.concatenate(
        [pooled for name in MUSICNN_LAYERS for pooled in (outputs[name].mean(axis=0), outputs[name].max(axis=0))]
    )


@functools.cache
def _embedding_columns(network: str = "msd") -> tuple[str, ...]:
    """Names of musicnn_embedding's values: `<layer>_<mean|max>_<unit>` for the MSD network, the same
    prefixed by `<network>_` for another, so that the embeddings of several networks can be joined."""
    sizes = {"penultimate": 200, "mean_pool": 753, "max_pool": 753, "taggram": len(MUSICNN_TAGS)}
    prefix = "" if network == "msd" else f"{network}_"
    return tuple(
        f"{prefix}{name}_{pool}_{unit:03d}"
        for name in MUSICNN_LAYERS
        for pool in ("mean", "max")
        for unit in range(sizes[name])
    )


def _fusion_columns() -> tuple[str, ...]:
    """The embedding values a fused CNN takes (cfg.musicnn_input): pretrained_embeddings' default layer."""
    return tuple(column for column in _embedding_columns() if column.startswith("penultimate_"))


def pretrained_embeddings(
    tracks: pd.DataFrame,
    cfg: Config,
    layers=("penultimate",),
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    network: str = "msd",
) -> pd.DataFrame:
    """musicnn embeddings of every track, computed once into
    `<cache_dir>/musicnn-embeddings-v<N>-<network>-<key>.npz`.

    Parameters
    ----------
    tracks : pd.DataFrame
        As for `extract_features` (track_id index; genre, split, path columns).
    cfg : Config
        cfg.clip_seconds of each file are used (cropped or zero-padded as in `load_audio`), resampled
        to 16 kHz; cfg.cache_dir is the default cache_dir; the cache key is `features_key`'s.
    layers : tuple of str
        Which MUSICNN_LAYERS to return, each pooled over the clip's 3 s patches by mean and max.
        The default, the penultimate layer, transfers best to genre on the real-music set.
    cache_dir : path, optional
        As for `extract_features`.
    workers : int, optional
        Processes; default 1, this one, whose network already computes on every core. More processes
        each build their own network on one thread: worth it only on many cores (on two cores, two
        processes ran at 0.7x the speed of one, see benchmarks/embeddings.py).
    network : str
        Which MUSICNN_NETWORKS network embeds the clips (its weights from `make musicnn`): "msd" (the
        default) or "mtt". Its name is part of the cache's, so one network's numbers are never read
        back as another's.

    Returns
    -------
    pd.DataFrame
        float32, indexed by track_id (sorted), columns `<layer>_<mean|max>_<unit>` (prefixed by
        `<network>_` for networks other than "msd", see `_embedding_columns`); tracks whose audio
        cannot be decoded are left out, with a warning.

    Writes
    ------
    Each finished clip at once into `musicnn-embeddings-v<N>-<network>-<key>.partial/` (an interrupted
    run resumes from there), then the whole table atomically into the .npz, and the partial folder is
    removed; `musicnn-embeddings-v<N>-<network>-<key>.lock` is held meanwhile, so a second process
    waits and reads the result.

    Raises
    ------
    CacheError
        When the weights are missing (naming `make musicnn`) or the cache cannot be written.
    DataError
        For a malformed track table, or when no file at all can be decoded.
    """
    unknown = sorted(set(layers) - set(MUSICNN_LAYERS))
    if unknown or not layers:
        raise ConfigError(f"musicnn layers {unknown or '()'}: choose from {', '.join(MUSICNN_LAYERS)}")
    weights = musicnn_weights(network)
    if not weights.is_file():
        load_musicnn(weights)  # raises the error that says how to get them
    table = _checked_tracks(tracks, cfg)
    key = _features_key(table, cfg)
    cache_dir = Path(cache_dir if cache_dir is not None else cfg.cache_dir)
    path = cache_dir / f"musicnn-embeddings-v{EMBEDDINGS_FORMAT}-{network}-{key}.npz"
    if not path.is_file():
        with _writing_to(cache_dir, CacheError, "cfg.cache_dir"):
            cache_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive(path.with_suffix(".lock")):  # one builder at a time, as for the features
            if not path.is_file():
                _build_embeddings(table, key, path, cfg, workers, weights)
    with np.load(path) as cached:
        frame = pd.DataFrame(
            cached["values"],
            index=pd.Index(cached["track_id"], name="track_id"),
            columns=list(_embedding_columns(network)),
        )
    layer_of = [name.rsplit("_", 2)[0] for name in _embedding_columns()]  # the same for every network
    return frame[[column for column, layer in zip(frame.columns, layer_of) if layer in layers]]


def _build_embeddings(
    table: pd.DataFrame, key: str, path: Path, cfg: Config, workers: int | None, weights: str | os.PathLike
) -> None:
    """Embed every track of `table` into the .npz `path`, clip by clip through its .partial folder (resumed)."""
    from tqdm.auto import tqdm

    cache_dir = path.parent
    partial = path.with_suffix(".partial")
    with _writing_to(cache_dir, CacheError, "cfg.cache_dir"):
        partial.mkdir(parents=True, exist_ok=True)
    jobs = [
        (int(track_id), str(audio))
        for track_id, audio in table["path"].items()
        if not (partial / f"{track_id}.npy").is_file()
    ]
    reasons = []
    progress = tqdm(
        total=len(table),
        initial=len(table) - len(jobs),
        desc=f"musicnn embeddings {key}",
        unit="clip",
        mininterval=1,
    )
    with progress:
        for track_id, (embedding, reason) in _feature_results(
            jobs, _EmbeddingJob(cfg.clip_seconds, str(weights)), workers or 1, _musicnn_embedding_of_file
        ):
            if reason is None:
                with (
                    _writing_to(cache_dir, CacheError, "cfg.cache_dir"),
                    _atomic_path(partial / f"{track_id}.npy") as tmp,
                    open(tmp, "wb") as file,
                ):
                    np.save(file, embedding)
            else:
                reasons.append(f"{_shown(table.at[track_id, 'path'])}: {reason}")
            progress.update()
    done = sorted(int(file.stem) for file in partial.glob("*.npy") if int(file.stem) in table.index)
    if not done:
        raise DataError(f"none of the {len(table)} audio files could be decoded ({'; '.join(reasons[:3])})")
    if reasons:
        _warn(
            f"{_shown(path)}: skipped {len(reasons)} of {len(table)} audio files ({'; '.join(reasons[:3])}"
            f"{' ...' * (len(reasons) > 3)})"
        )
    values = np.stack([np.load(partial / f"{track_id}.npy") for track_id in done])
    with _writing_to(cache_dir, CacheError, "cfg.cache_dir"), _atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez(file, track_id=np.array(done), values=values)
    shutil.rmtree(partial, ignore_errors=True)


@dataclass(frozen=True)
class _EmbeddingJob:
    """What a worker needs to embed a file (stands in for the Config that _feature_results passes)."""

    clip_seconds: float
    weights: str


@functools.cache
def _worker_musicnn(weights: str):
    """The network of these weights in this process, built once; a worker process computes on one thread."""
    import multiprocessing

    if multiprocessing.parent_process() is not None:  # the worker processes already fill the cores
        for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
            os.environ.setdefault(name, "1")
    return load_musicnn(weights)


def _musicnn_embedding_of_file(path: str, job: _EmbeddingJob) -> tuple[np.ndarray | None, str | None]:
    """(musicnn_embedding, None) of one audio file, or (None, reason) if it is unusable."""
    try:
        y = load_audio(path, MUSICNN_SAMPLE_RATE, job.clip_seconds)
    except AudioError as exc:
        return None, str(exc).removeprefix(f"{_shown(path)}: ")
    return musicnn_embedding(y, _worker_musicnn(job.weights)), None


def embedding_classifier(kind: str = "logistic", seed: int = 42):
    """An unfitted scikit-learn Pipeline for pooled embeddings: StandardScaler, then a classifier.

    kind "logistic": multinomial logistic regression (a linear probe) whose L2 strength is chosen
    among EMBEDDING_LOGISTIC_CS by 3-fold cross-validation on the training clips; "svm": RBF-kernel
    SVC whose scores become probabilities by Platt scaling fitted on 3-fold cross-validated scores; "mlp": one
    hidden layer of 256 ReLU units with L2 penalty. `seed` fixes their randomness. Raises ConfigError
    for an unknown kind.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    classifiers = {
        "logistic": lambda: LogisticRegressionCV(
            Cs=EMBEDDING_LOGISTIC_CS,
            cv=3,
            l1_ratios=(0.0,),
            scoring="accuracy",
            use_legacy_attributes=False,
            max_iter=1000,
            random_state=seed,
        ),
        "svm": lambda: CalibratedClassifierCV(SVC(kernel="rbf", C=1.0, random_state=seed), cv=3, ensemble=False),
        "mlp": lambda: MLPClassifier(hidden_layer_sizes=(256,), alpha=1e-2, max_iter=1000, random_state=seed),
    }
    if kind not in classifiers:
        raise ConfigError(f"embedding classifier kind {kind!r}: choose one of {', '.join(EMBEDDING_KINDS)}")
    return make_pipeline(StandardScaler(), classifiers[kind]())


EMBEDDING_RUN_FILES = ("config.json", "versions.json", "classifier.json", "classifier.skops")
# The types an embedding run's classifier.skops may hold beyond those skops trusts by itself (numpy arrays,
# scikit-learn's scalers, linear models, SVMs, MLPs and pipelines): the inner parts of a calibrated SVM and
# of an MLP. skops refuses any other type, so loading a run folder someone sent you never runs their code.
_CLASSIFIER_TYPES = (
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
)


def train_embedding_classifier(
    embeddings: pd.DataFrame, labels, cfg: Config, run_dir: str | os.PathLike, kind: str = "logistic", seed: int = 42
):
    """Fit `embedding_classifier(kind, seed)` on every clip of `embeddings` and save it as a run folder.

    embeddings: `pretrained_embeddings` output (indexed by track_id), possibly joined with another
    network's and with the clips' `extract_clip_statistics` (a predict run then computes them all);
    labels: genre per track_id (a Series, or a tracks table with a genre column); clips without a label
    are left out. cfg: the settings the embeddings were made with (its clip_seconds is the window
    `predict` cuts files into).
    Returns the fitted Pipeline. Raises DataError when no clip has both an embedding and a label.

    Writes
    ------
    Into `run_dir`: config.json (cfg), versions.json, classifier.json (kind, seed, musicnn networks and
    layers, embedding columns, clips, the `data_source` of cfg.data_root) and classifier.skops (the
    Pipeline in skops' format: data, never code), each atomically; `genre_utils.py predict --run run_dir`
    then predicts with it.
    """

    genres = _label_series(labels).reindex(embeddings.index).dropna()
    if genres.empty:
        raise DataError("no clip has both an embedding and a genre label")
    pipeline = embedding_classifier(kind, seed)
    pipeline.fit(embeddings.loc[genres.index].to_numpy(), genres.to_numpy())
    run_dir = Path(run_dir)
    networks = [network for network in MUSICNN_NETWORKS if set(_embedding_columns(network)) & set(embeddings.columns)]
    layers = sorted(
        {
            name.rsplit("_", 2)[0]
            for network in networks
            for name, column in zip(_embedding_columns(), _embedding_columns(network))
            if column in embeddings.columns
        },
        key=MUSICNN_LAYERS.index,
    )
    with _writing_to(run_dir, ConfigError, "the run folder"):
        _describe_run(
            run_dir,
            cfg,
            "classifier.json",
            {
                "embedding": f"musicnn {' + '.join(MUSICNN_NETWORKS[n] for n in networks)} "
                "(musicnn==0.1.0, Pons & Serra 2019)",
                "networks": networks,
                "kind": kind,
                "seed": seed,
                "layers": layers,
                "columns": list(embeddings.columns),
                "clips": len(genres),
                "source": data_source(cfg.data_root),
            },
        )
        _write_classifier(run_dir / "classifier.skops", pipeline)
    return pipeline


def _write_classifier(path: Path, pipeline) -> None:
    """Save a fitted Pipeline atomically in skops' format, which `load_embedding_run` reads without running code."""
    import skops.io

    with _atomic_path(path) as tmp:
        skops.io.dump(pipeline, tmp)


def _describe_run(run_dir: Path, cfg: Config, name: str, description: dict) -> None:
    """Create the run folder `run_dir` and write config.json (cfg), versions.json and `name` (the
    run's own description), each atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / "config.json", cfg.to_dict())
    _write_json(run_dir / "versions.json", {"run_format": RUN_FORMAT, **_versions()})
    _write_json(run_dir / name, description)


def load_embedding_run(run_dir: str | os.PathLike):
    """(fitted Pipeline, Config, classifier.json dict) of a run folder written by `train_embedding_classifier`.

    The classifier is read with skops, which builds only the scikit-learn types such a run holds and
    never runs code from the file. Raises DataError naming the file when one is missing, is not what
    this code writes (malformed, truncated, another type), comes from a newer version of this code, or
    is an old pickled classifier.joblib (retrain, or convert your own: `genre_utils.py convert-run`).
    """
    import skops.io

    run_dir = Path(run_dir)
    if (run_dir / "classifier.joblib").is_file() and not (run_dir / "classifier.skops").is_file():
        raise DataError(
            f"{run_dir / 'classifier.joblib'}: a pickle, which can run code when loaded, so it is not read; "
            f"train the classifier into {run_dir} again (notebook 07), or, for a run you made yourself, "
            f"`python genre_utils.py convert-run {run_dir} --trust-pickle`"
        )
    for name in EMBEDDING_RUN_FILES:
        if not (run_dir / name).is_file():
            raise DataError(
                f"{run_dir / name}: not found; train an embedding classifier into {run_dir} first "
                "(train_embedding_classifier, notebook 07)"
            )
    _check_run_format(run_dir)
    cfg = _config_from_dict(_read_json(run_dir / "config.json"), run_dir / "config.json")
    path = run_dir / "classifier.skops"
    try:
        untrusted = set(skops.io.get_untrusted_types(file=path)) - set(_CLASSIFIER_TYPES)
        if untrusted:
            raise DataError(f"{path}: holds types this code never writes ({', '.join(sorted(untrusted))}); not loaded")
        classifier = skops.io.load(path, trusted=list(_CLASSIFIER_TYPES))
    except DataError:
        raise
    except Exception as exc:  # a truncated or foreign file fails somewhere inside skops or zipfile
        raise DataError(f"{path}: not a classifier saved by this code ({_first_line(exc)})") from None
    if not hasattr(classifier, "predict_proba"):
        raise DataError(f"{path}: holds a {type(classifier).__name__}, not a classifier; not loaded")
    return classifier, cfg, _read_json(run_dir / "classifier.json")


def predict_file_embeddings(
    path: str | os.PathLike, classifier, cfg: Config, info: dict, model, progress: bool = False
) -> pd.DataFrame:
    """Genre probabilities of one audio file with an embedding classifier, in `predict_file`'s format.

    The file is decoded at 16 kHz as a stream and cut into windows of cfg.clip_seconds as `predict_file`
    does; each window's musicnn embedding (`model`: `load_musicnn()`, the MSD network; the other
    networks the run was fitted on are loaded once per process), and its `clip_statistics` where the
    classifier was fitted on them too, go through `classifier` (columns as recorded in `info`, from
    `load_embedding_run`). Returns one row per window indexed by start_s, one column per genre of
    cfg.genres. `progress` shows a bar for files over 3 minutes. Raises AudioError naming the file when
    it cannot be decoded.
    """
    stream = _AudioStream(path, MUSICNN_SAMPLE_RATE, progress)
    window = int(round(MUSICNN_SAMPLE_RATE * cfg.clip_seconds))
    models = {
        network: model if network == "msd" else _worker_musicnn(str(musicnn_weights(network)))
        for network in info.get("networks", ["msd"])  # runs written before the MTT network: MSD only
    }
    statistics = _AudioStream(path, cfg.sample_rate) if set(info["columns"]) - set(_embedding_columns()) else None

    def predict(starts: np.ndarray, windows: np.ndarray) -> pd.DataFrame:
        inputs = pd.concat(
            [
                pd.DataFrame(
                    [musicnn_embedding(y, network_model) for y in windows], columns=list(_embedding_columns(network))
                )
                for network, network_model in models.items()
            ],
            axis=1,
        )
        if statistics is not None:  # a classifier of embeddings and clip statistics
            offsets = np.round(starts / MUSICNN_SAMPLE_RATE * cfg.sample_rate).astype(int)
            inputs = inputs.join(
                pd.DataFrame([clip_statistics(statistics.window(at, cfg.n_samples)[1], cfg) for at in offsets])
            )
        proba = pd.DataFrame(
            classifier.predict_proba(inputs[info["columns"]].to_numpy()), columns=list(classifier.classes_)
        )
        proba = proba.reindex(columns=list(cfg.genres), fill_value=0.0)
        proba.index = pd.Index(starts / MUSICNN_SAMPLE_RATE, name="start_s")
        return proba

    proba = _streamed_predictions(_window_batches(stream.windows(window)), predict)
    return _with_audio_facts(proba, stream, cfg.clip_seconds)


# Zero-shot genres: the MSD tags that name a genre, each under the FMA-small genre nearest to it. The
# genres FMA-small lacks go to the one whose music sounds closest (jazz and easy listening are mostly
# instrumental, blues is guitar band music, rnb sits by hip-hop, soul and funk by pop); FMA files
# ambient and chill-out under Electronic. Tags that name no genre (eras, moods, voices, guitar) feed
# none, nor do "alternative" and "indie", scenes that Pop and Rock share. No tag names International.
# Chosen on the 200 Emotify recordings of the README's results, so optimistic there (0.68 with the `max` rule).
ZERO_SHOT_GENRES = {
    "Hip-Hop": ("Hip-Hop", "rnb"),
    "Pop": ("pop", "indie pop", "catchy", "soul", "funk"),
    "Folk": ("folk", "acoustic", "country"),
    "Rock": (
        "rock",
        "alternative rock",
        "indie rock",
        "classic rock",
        "hard rock",
        "metal",
        "heavy metal",
        "punk",
        "Progressive rock",
        "blues",
    ),
    "Experimental": ("experimental",),
    "Electronic": ("electronic", "electronica", "electro", "House", "dance", "ambient", "chillout"),
    "Instrumental": ("instrumental", "jazz", "easy listening"),
}


def zero_shot_genres(tags: pd.DataFrame) -> pd.DataFrame:
    """Genre shares from musicnn's MSD tag probabilities, with no training: rows of `tags` (as from
    `musicnn_tags`: one column per MSD tag) in, one row of shares of the ZERO_SHOT_GENRES out.

    Each genre scores the highest probability among its tags (a genre is there when any of its names
    is heard; averaging, or summing, the tags instead scored 0.05-0.08 lower on the real recordings),
    and the scores are divided by their sum, so each row sums to 1: shares of the tag evidence, not
    calibrated probabilities. Genres no tag covers (International) are absent, not zero.

    >>> tags = pd.DataFrame([dict.fromkeys(MUSICNN_TAGS, 0.0) | {"rock": 0.6, "pop": 0.2}])
    >>> zero_shot_genres(tags).iloc[0].round(2).to_dict()["Rock"]
    0.75
    """
    missing = sorted({tag for group in ZERO_SHOT_GENRES.values() for tag in group} - set(tags.columns))
    if missing:
        raise DataError(f"tag probabilities lack the MSD tags {', '.join(missing)}; pass musicnn_tags output")
    scores = pd.DataFrame({genre: tags[list(group)].max(axis=1) for genre, group in ZERO_SHOT_GENRES.items()})
    return scores.div(scores.sum(axis=1).clip(lower=1e-12), axis=0)


def predict_file_zero_shot(path: str | os.PathLike, model, progress: bool = False) -> pd.DataFrame:
    """Zero-shot genre shares of one audio file, in `predict_file`'s format: one row per 3 s patch
    (indexed by start_s), one column per genre of ZERO_SHOT_GENRES (`zero_shot_genres` of the patch's
    tags). attrs["tags"] holds the file's MSD tag probabilities averaged over its patches, what drove
    the genres, and attrs["genres"] the file's shares: `zero_shot_genres` of those averaged tags (the
    rule measured on the real recordings). `model`: `load_musicnn()`. The file is decoded as a stream
    (memory does not grow with its length); `progress` shows a bar for files over 3 minutes.
    Raises AudioError naming the file when it cannot be decoded."""
    stream = _AudioStream(path, MUSICNN_SAMPLE_RATE, progress)

    def predict(starts: np.ndarray, patches: np.ndarray) -> pd.DataFrame:
        taggram = musicnn_outputs(patches, model)["taggram"]
        return pd.DataFrame(taggram, index=pd.Index(starts, name="start_s"), columns=list(MUSICNN_TAGS))

    tags = _streamed_predictions(_streamed_musicnn_patches(stream), predict)
    windows = zero_shot_genres(tags)
    windows.attrs["tags"] = tags.mean().sort_values(ascending=False)
    windows.attrs["genres"] = zero_shot_genres(tags.mean().to_frame().T).iloc[0]
    return _with_audio_facts(windows, stream, _PATCH_SAMPLES / MUSICNN_SAMPLE_RATE)


def embedding_method(embeddings: pd.DataFrame, labels, cfg: Config, kind: str = "logistic", seed: int = 42):
    """A cross-validation method (`method(split, run_dir) -> MethodResult`) over pooled musicnn embeddings.

    Per fold, `train_embedding_classifier` fits the fold's training and validation clips together (a
    scikit-learn classifier has no checkpoint to choose) into run_dir, which is then a run folder that
    `predict` can use, and the fitted classifier gives the test clips' genre probabilities.
    Raises ConfigError for an unknown kind.
    """
    embedding_classifier(kind, seed)  # checks the kind now
    genres = _label_series(labels)

    def method(split: pd.Series, run_dir: Path) -> MethodResult:
        fit = split.index[split.isin(["training", "validation"])].intersection(embeddings.index)
        test = split.index[split == "test"].intersection(embeddings.index)
        if fit.empty or test.empty:
            raise DataError("no clips with embeddings in the fold's training or test split")
        start = time.perf_counter()
        pipeline = train_embedding_classifier(embeddings.loc[fit], genres, cfg, run_dir, kind, seed)
        seconds = time.perf_counter() - start
        proba = pd.DataFrame(
            pipeline.predict_proba(embeddings.loc[test].to_numpy()), index=test, columns=list(pipeline.classes_)
        )
        return MethodResult(proba, _fitted_numbers(pipeline[-1]), seconds)

    method.settings = {
        "method": "musicnn embeddings",
        "kind": kind,
        "seed": seed,
        "columns": list(embeddings.columns),
        "data": _fingerprint(embeddings),
    }
    return method


def _fitted_numbers(classifier) -> int:
    """Numbers a fitted scikit-learn classifier stores (weights, support vectors, coefficients)."""
    if hasattr(classifier, "calibrated_classifiers_"):  # the SVC and its sigmoid per class
        calibrated = classifier.calibrated_classifiers_[0]
        return _fitted_numbers(calibrated.estimator) + 2 * len(calibrated.calibrators)
    names = ("coef_", "intercept_", "support_vectors_", "dual_coef_", "coefs_", "intercepts_")
    arrays = [getattr(classifier, name) for name in names if hasattr(classifier, name)]
    return int(sum(np.size(a) for array in arrays for a in (array if isinstance(array, list) else [array])))


def _label_series(labels) -> pd.Series:
    """Genre per track_id from a Series or a tracks table with a genre column."""
    if isinstance(labels, pd.DataFrame):
        if "genre" not in labels.columns:
            raise DataError("the tracks table has no genre column; pass load_tracks output or a Series of genres")
        labels = labels["genre"]
    return pd.Series(labels)


# Fine-tuning: musicnn with a new genre head, trained on the target labels. The front-end is 92 % of the
# network's forward computation (37 patches/s on two CPU cores; the rest 12x faster): on a CPU it stays
# frozen and its outputs are computed once, so an epoch costs the mid- and back-end only;
# unfreeze="frontend" trains the whole network (a GPU's job).

MUSICNN_PARTS = ("frontend", "midend", "backend", "head")  # input to output; `unfreeze` names the first that trains
FINETUNE_SETTINGS = {  # the recipe's defaults; each run records the settings it used in finetune.json
    "head_epochs": 3,  # stage 1: the new head alone, the pretrained body frozen
    "head_lr": 1e-3,  # Adam
    "body_epochs": 8,  # stage 2: the head and the parts from `unfreeze` on
    "body_lr": 1e-4,  # AdamW with cosine decay to 0: small, so the pretrained weights move little
    "weight_decay": 1e-4,
    "unfreeze": "midend",
    "batch_size": 32,  # patches
    "label_smoothing": 0.1,
}
FINETUNE_RUN_FILES = ("config.json", "versions.json", "finetune.json", "model.keras")


def musicnn_clip_patches(tracks: pd.DataFrame, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """The `musicnn_patches` of every track (cfg.clip_seconds of it, as `load_audio` crops or pads, at
    16 kHz): float16 (patches, 187, 96) and the track_id of each patch, tracks in track_id order.
    Held in memory, 0.36 MB per 30 s clip. Files that cannot be decoded are left out, with a warning;
    DataError if none can."""
    from tqdm.auto import tqdm

    table = _checked_tracks(tracks, cfg)
    patches, clips, reasons = [], [], []
    for track_id, path in tqdm(
        table["path"].items(), total=len(table), desc="musicnn patches", unit="clip", mininterval=1
    ):
        try:
            clip = musicnn_patches(load_audio(path, MUSICNN_SAMPLE_RATE, cfg.clip_seconds))
        except AudioError as exc:
            reasons.append(str(exc))
            continue
        patches.append(clip)
        clips.append(np.full(len(clip), track_id))
    if not patches:
        raise DataError(f"none of the {len(table)} audio files could be decoded ({'; '.join(reasons[:3])})")
    if reasons:
        _warn(f"skipped {len(reasons)} of {len(table)} audio files ({'; '.join(reasons[:3])})")
    return np.concatenate(patches), np.concatenate(clips)


def build_musicnn_classifier(genres, weights: str | os.PathLike = MUSICNN_WEIGHTS):
    """musicnn with a new genre head, for fine-tuning: the MSD network up to its penultimate layer
    (weights from `weights`), dropout 0.5, and a softmax Dense "genre_head" with one unit per genre.

    Two nested models, so that a frozen front-end's outputs can be computed once: "musicnn_frontend"
    (log-mel patches (batch, 187, 96) -> features (batch, 187, 561)) and "musicnn_body" (features ->
    genre probabilities). Returns the Model "musicnn_genres" (patches -> probabilities, (batch,
    len(genres))) with only the head trainable (`unfreeze_musicnn`). Raises CacheError as `load_musicnn`.
    """
    keras = import_keras()
    layers = keras.layers
    if not Path(weights).is_file():
        load_musicnn(weights)  # raises the error that says how to get them
    with _silenced_stderr():
        patches = keras.Input((MUSICNN_PATCH_FRAMES, MUSICNN_MELS), name="log_mel")
        frontend = keras.Model(patches, _musicnn_frontend(patches), name="musicnn_frontend")
        features = keras.Input(frontend.output.shape[1:], name="frontend_features")
        dropped = layers.Dropout(0.5, name="backend_dropout")(_musicnn_backend(features)["penultimate"])
        head = layers.Dense(len(genres), activation="softmax", name="genre_head")(dropped)
        body = keras.Model(features, head, name="musicnn_body")
        model = keras.Model(patches, body(frontend(patches)), name="musicnn_genres")
    _set_musicnn_weights(
        [layer for layer in frontend.layers + body.layers if layer.name != "genre_head"], Path(weights)
    )
    unfreeze_musicnn(model, "head")
    return model


def _musicnn_part(layer_name: str) -> str:
    """Which of MUSICNN_PARTS a layer of `build_musicnn_classifier` belongs to."""
    if layer_name == "genre_head":
        return "head"
    if layer_name.startswith("midend"):
        return "midend"
    if layer_name.startswith(("backend", "max_pool", "mean_pool", "penultimate")):
        return "backend"
    return "frontend"


def unfreeze_musicnn(model, unfreeze: str = "head") -> None:
    """Make the parts of a `build_musicnn_classifier` model from `unfreeze` (one of MUSICNN_PARTS) to the
    head trainable and freeze the others. Batch norms stay frozen, in inference mode: their moving
    statistics come from 200,000 songs, better than a few hundred clips' batches. Recompile afterwards."""
    if unfreeze not in MUSICNN_PARTS:
        raise ConfigError(f"unfreeze {unfreeze!r}: choose one of {', '.join(MUSICNN_PARTS)}")
    keras = import_keras()
    first = MUSICNN_PARTS.index(unfreeze)
    for part_model in (model.get_layer("musicnn_frontend"), model.get_layer("musicnn_body")):
        part_model.trainable = True
        for layer in part_model.layers:
            trains = MUSICNN_PARTS.index(_musicnn_part(layer.name)) >= first
            layer.trainable = trains and not isinstance(layer, keras.layers.BatchNormalization)


def finetune_musicnn(
    patches: np.ndarray, clips, labels, cfg: Config, run_dir: str | os.PathLike, frontend_features=None, **settings
):
    """Fine-tune `build_musicnn_classifier(cfg.genres)` on labelled 3 s patches; save it as a run folder.

    Stage 1 trains the new head alone (Adam, head_lr, head_epochs), stage 2 the head and the parts
    from `unfreeze` on (AdamW, body_lr decaying to 0 along a cosine, body_epochs), each patch labelled
    with its clip's genre (label smoothing). Settings: FINETUNE_SETTINGS, overridden by `settings`.
    Each stage prints how long it should take after its first steps.

    Parameters
    ----------
    patches : np.ndarray
        Log-mel patches (n, 187, 96), as from `musicnn_clip_patches`.
    clips : array-like
        The track_id of each patch; patches of tracks without a label are left out.
    labels : pd.Series or pd.DataFrame
        Genre per track_id (or a tracks table with a genre column), genres from cfg.genres.
    cfg : Config
        cfg.genres, cfg.seed (weights, dropout, batch order), cfg.data_root (recorded).
    run_dir : path
        Where the run folder goes.
    frontend_features : np.ndarray, optional
        The frozen front-end's outputs for `patches`, when already computed (cross-validation
        computes them once for every fold); ignored with unfreeze="frontend".

    Returns the fine-tuned Model (patches -> genre probabilities). Raises ConfigError for an unknown
    setting, DataError when no patch has a label or a label is not in cfg.genres.

    Writes
    ------
    Into `run_dir`, each atomically: model.keras, config.json (cfg), versions.json and finetune.json
    (settings, genres, clips, patches, trainable parameters, seconds, per-epoch loss and accuracy,
    the `data_source`); `genre_utils.py predict --run run_dir` then predicts with it.
    """
    keras = import_keras()
    settings = _finetune_settings(settings)
    genres = _label_series(labels)
    patch_genres = genres.reindex(np.asarray(clips)).to_numpy()
    keep = pd.notna(patch_genres)
    if not keep.any():
        raise DataError("no patch belongs to a clip with a genre label")
    unknown = sorted(set(patch_genres[keep]) - set(cfg.genres), key=str)
    if unknown:
        raise DataError(f"genre label(s) {unknown} not in cfg.genres {list(cfg.genres)}")
    y = np.eye(len(cfg.genres), dtype=np.float32)[[cfg.genres.index(genre) for genre in patch_genres[keep]]]

    keras.utils.set_random_seed(cfg.seed)
    model = build_musicnn_classifier(cfg.genres)
    start = time.perf_counter()
    if settings["unfreeze"] == "frontend":
        trainer, x = model, np.asarray(patches)[keep]
    elif frontend_features is None:
        trainer = model.get_layer("musicnn_body")
        x = model.get_layer("musicnn_frontend").predict(np.asarray(patches)[keep].astype(np.float32), verbose=0)
    else:
        trainer, x = model.get_layer("musicnn_body"), np.asarray(frontend_features)[keep]
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=settings["label_smoothing"])
    history, trained = [], 0
    stages = (("head", settings["head_epochs"]), (settings["unfreeze"], settings["body_epochs"]))
    for stage, (unfreeze, epochs) in enumerate(stages, start=1):
        if epochs <= 0:
            continue
        unfreeze_musicnn(model, unfreeze)
        trained = int(sum(np.prod(w.shape) for w in model.trainable_weights))  # batch norms excepted
        if stage == 1:
            optimizer = keras.optimizers.Adam(settings["head_lr"])
        else:
            steps = epochs * int(np.ceil(len(x) / settings["batch_size"]))
            schedule = keras.optimizers.schedules.CosineDecay(settings["body_lr"], steps)
            optimizer = keras.optimizers.AdamW(schedule, weight_decay=settings["weight_decay"])
        trainer.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
        timer = _expected_duration_class()(f"fine-tuning musicnn, stage {stage} ({unfreeze})")
        fitted = trainer.fit(
            x, y, batch_size=settings["batch_size"], epochs=epochs, shuffle=True, verbose=0, callbacks=[timer]
        )
        history += [
            {"stage": stage, "unfreeze": unfreeze, "epoch": epoch + 1, "loss": float(loss_), "accuracy": float(acc)}
            for epoch, (loss_, acc) in enumerate(zip(fitted.history["loss"], fitted.history["accuracy"]))
        ]
    seconds = time.perf_counter() - start
    run_dir = Path(run_dir)
    with _writing_to(run_dir, ConfigError, "the run folder"):
        _describe_run(
            run_dir,
            cfg,
            "finetune.json",
            {
                "network": "musicnn MSD_musicnn (musicnn==0.1.0, Pons & Serra 2019) with a new genre head",
                "settings": settings,
                "genres": list(cfg.genres),
                "clips": int(pd.unique(np.asarray(clips)[keep]).size),
                "patches": int(keep.sum()),
                "trained_parameters": trained,
                "train_seconds": seconds,
                "history": history,
                "source": data_source(cfg.data_root),
            },
        )
        partial = run_dir / f".model.{os.getpid()}.keras"  # Keras saves only to a .keras name; renamed last
        model.save(partial)
        os.replace(partial, run_dir / "model.keras")
    return model


def _finetune_settings(changes: dict) -> dict:
    """FINETUNE_SETTINGS with `changes`; ConfigError for an unknown setting or part, before any work."""
    unknown = sorted(set(changes) - set(FINETUNE_SETTINGS))
    if unknown:
        raise ConfigError(f"fine-tuning setting(s) {', '.join(unknown)}: choose from {', '.join(FINETUNE_SETTINGS)}")
    settings = FINETUNE_SETTINGS | changes
    if settings["unfreeze"] not in MUSICNN_PARTS:
        raise ConfigError(f"unfreeze {settings['unfreeze']!r}: choose one of {', '.join(MUSICNN_PARTS)}")
    return settings


def _load_finetuned_run(run_dir: Path):
    """`load_run` of a run folder written by `finetune_musicnn`: (model, Config, history from finetune.json)."""
    for name in FINETUNE_RUN_FILES:
        if not (run_dir / name).is_file():
            raise DataError(f"{run_dir / name}: not found; fine-tune musicnn into {run_dir} first (notebook 08)")
    _check_run_format(run_dir)
    cfg = _config_from_dict(_read_json(run_dir / "config.json"), run_dir / "config.json")
    model = load_model(run_dir / "model.keras")
    return model, cfg, pd.DataFrame(_read_json(run_dir / "finetune.json").get("history", []))


def musicnn_clip_proba(model, patches: np.ndarray, clips, genres) -> pd.DataFrame:
    """Clip genre probabilities of a fine-tuned model: the mean of its patches' softmax outputs, one
    row per clip (track_id, in first-seen order), one column per genre. `model` takes the patches
    (the whole network) or, for front-end features, its "musicnn_body"."""
    proba = pd.DataFrame(np.asarray(model.predict(np.asarray(patches, np.float32), verbose=0)), columns=list(genres))
    return proba.groupby(np.asarray(clips), sort=False).mean().rename_axis("track_id")


def _predict_file_finetuned(path: str | os.PathLike, model, cfg: Config, progress: bool = False) -> pd.DataFrame:
    """`predict_file` with a fine-tuned musicnn (`finetune_musicnn`): one row per 3 s patch of the whole
    file (indexed by start_s), one column per genre of cfg.genres, the file decoded as a stream.
    Raises AudioError naming the file when it cannot be decoded."""
    stream = _AudioStream(path, MUSICNN_SAMPLE_RATE, progress)

    def predict(starts: np.ndarray, patches: np.ndarray) -> pd.DataFrame:
        proba = np.asarray(model.predict(patches.astype(np.float32), verbose=0))
        return pd.DataFrame(proba, index=pd.Index(starts, name="start_s"), columns=list(cfg.genres))

    windows = _streamed_predictions(_streamed_musicnn_patches(stream), predict)
    return _with_audio_facts(windows, stream, _PATCH_SAMPLES / MUSICNN_SAMPLE_RATE)


def finetune_method(patches: np.ndarray, clips, labels, cfg: Config, **settings):
    """A cross-validation method (`method(split, run_dir) -> MethodResult`) fine-tuning musicnn per fold.

    Each fold fine-tunes on the patches of its training and validation clips (a fixed budget: no
    checkpoint to choose) into run_dir and predicts its test clips by `musicnn_clip_proba`. The frozen
    front-end's outputs are computed once, at the first fold, for every fold (unless unfreeze="frontend").
    """
    settings = _finetune_settings(settings)
    clips = np.asarray(clips)
    frontend = {}  # the frozen front-end's outputs for every patch, float16, computed at the first fold

    def method(split: pd.Series, run_dir: Path) -> MethodResult:
        fit = np.isin(clips, split.index[split.isin(["training", "validation"])])
        test = np.isin(clips, split.index[split == "test"])
        if not fit.any() or not test.any():
            raise DataError("no patches in the fold's training or test split")
        if settings["unfreeze"] == "frontend":
            model = finetune_musicnn(patches[fit], clips[fit], labels, cfg, run_dir, **settings)
            proba = musicnn_clip_proba(model, patches[test], clips[test], cfg.genres)
        else:
            if not frontend:
                network = build_musicnn_classifier(cfg.genres).get_layer("musicnn_frontend")
                frontend["all"] = network.predict(np.asarray(patches, np.float32), verbose=0).astype(np.float16)
            features = frontend["all"]
            model = finetune_musicnn(patches[fit], clips[fit], labels, cfg, run_dir, features[fit], **settings)
            proba = musicnn_clip_proba(model.get_layer("musicnn_body"), features[test], clips[test], cfg.genres)
        info = json.loads((Path(run_dir) / "finetune.json").read_text())
        return MethodResult(proba, info["trained_parameters"], info["train_seconds"])

    method.settings = {"method": "musicnn fine-tuned", **settings, "data": _fingerprint(patches)}
    return method


# ── Devices and batches: where Keras runs, and normalised batches of whole clips or excerpts ──


@functools.cache
def gpu_devices() -> tuple[tuple[str, int], ...]:
    """(name, CUDA compute capability major) of each GPU the Keras backend sees."""
    keras = import_keras()

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf  # device query only; model code stays backend-neutral

        with _silenced_stderr():  # a machine without CUDA drivers logs a failed cuInit here
            gpus = tf.config.list_physical_devices("GPU")
        details = [tf.config.experimental.get_device_details(d) for d in gpus]
        return tuple((d.get("device_name", "GPU"), d.get("compute_capability", (0, 0))[0]) for d in details)
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        return tuple((d.device_kind, int(str(getattr(d, "compute_capability", "0")).split(".")[0])) for d in gpus)
    if backend == "torch":
        import torch

        return tuple(
            (torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i)[0])
            for i in range(torch.cuda.device_count())
        )
    return ()


@functools.cache
def configure_devices() -> str:
    """Set Keras up for the hardware once per process; returns the mixed-precision policy name.

    On GPUs: "mixed_bfloat16" (Ampere and newer, compute capability >= 8) or "mixed_float16"
    (older; Keras scales the loss), with the output layer kept in float32. Several GPUs: data
    parallel over all of them (keras.distribution.DataParallel on JAX, MirroredStrategy on
    TensorFlow; the torch backend uses one GPU). CPU: float32, nothing changes.
    """
    keras = import_keras()

    gpus = gpu_devices()
    if not gpus:
        return "float32"
    policy = "mixed_bfloat16" if min(cap for _, cap in gpus) >= 8 else "mixed_float16"
    keras.mixed_precision.set_global_policy(policy)
    if len(gpus) > 1 and keras.backend.backend() == "jax":
        keras.distribution.set_distribution(keras.distribution.DataParallel())
    return policy


@functools.cache
def _mirrored_strategy():
    import tensorflow as tf  # the one TensorFlow-specific piece: multi-GPU data parallelism

    return tf.distribute.MirroredStrategy()


def _strategy_scope():
    """Context in which models are built and compiled: MirroredStrategy on several GPUs under
    TensorFlow, else nothing (JAX distributes through keras.distribution)."""
    keras = import_keras()

    if len(gpu_devices()) > 1 and keras.backend.backend() == "tensorflow":
        return _mirrored_strategy().scope()
    return contextlib.nullcontext()


def describe_devices() -> str:
    """One line saying what training runs on: Keras backend and version, GPUs or CPU cores,
    precision policy and data parallelism."""
    keras = import_keras()

    policy = configure_devices()
    backend = keras.backend.backend()
    gpus = gpu_devices()
    if not gpus:
        where = f"CPU ({os.cpu_count()} cores), no GPU found"
    else:
        names = ", ".join(name for name, _ in gpus)
        parallel = " data-parallel" if len(gpus) > 1 and backend != "torch" else ""
        where = f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''}{parallel} ({names})"
    return f"Keras {keras.__version__} on {backend} {_backend_version(backend)}: {where}; precision {policy}"


def _backend_version(backend: str) -> str:
    return getattr(importlib.import_module(backend), "__version__", "?")


def device_memory() -> dict:
    """Memory of the device Keras trains on: {"device": name, "total": bytes, "peak": bytes}.

    "total" is what the device holds for the backend and "peak" the most this process has used of it
    so far. On a GPU (the first), from the backend: JAX's `memory_stats()` (its allocator's limit,
    75 % of the card unless XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise, and peak_bytes_in_use),
    torch's total_memory and max_memory_allocated, TensorFlow's get_memory_info peak (no total).
    Without a GPU, the machine's RAM and this process's peak RSS. What a backend does not report is None.
    """
    keras = import_keras()

    gpus = gpu_devices()
    name, total, peak = (gpus[0][0] if gpus else "CPU"), None, None
    with contextlib.suppress(Exception):  # a backend or platform that reports less is no error
        backend = keras.backend.backend()
        if not gpus:
            import resource

            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        elif backend == "jax":
            import jax

            stats = next(d for d in jax.devices() if d.platform == "gpu").memory_stats() or {}
            total, peak = stats.get("bytes_limit"), stats.get("peak_bytes_in_use")
        elif backend == "torch":
            import torch

            total, peak = torch.cuda.get_device_properties(0).total_memory, torch.cuda.max_memory_allocated(0)
        elif backend == "tensorflow":
            import tensorflow as tf

            peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
    return {"device": name, "total": total, "peak": peak}


def _is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from, is a backend's out-of-memory error: TensorFlow's
    ResourceExhaustedError, JAX's XlaRuntimeError (alias JaxRuntimeError) saying RESOURCE_EXHAUSTED or
    out of memory, torch's OutOfMemoryError. Matched by class name and module, so no backend is imported."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for cls in type(exc).__mro__:
            package, name = cls.__module__.split(".")[0], cls.__name__
            if package == "tensorflow" and name == "ResourceExhaustedError":
                return True
            if package == "torch" and name == "OutOfMemoryError":
                return True
            if package in ("jax", "jaxlib") and name in ("XlaRuntimeError", "JaxRuntimeError"):
                text = str(exc)
                if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
                    return True
        exc = exc.__cause__ or exc.__context__
    return False


TRAIN_MODES = ("full", "chunked")


def _train_mode(cfg: Config) -> str:
    """cfg.train_mode, checked; ConfigError for an unknown one."""
    if cfg.train_mode not in TRAIN_MODES:
        raise ConfigError(f"train_mode {cfg.train_mode!r}: choose one of {', '.join(TRAIN_MODES)}")
    return cfg.train_mode


EXCERPT_HOP = 0.5  # prediction excerpts overlap: each starts this share of an excerpt after the previous one


def chunk_frames(cfg: Config, n_frames: int | None = None) -> int:
    """Frames of one excerpt of chunked training: cfg.chunk_seconds of audio (1 + samples // hop,
    as for whole clips). `n_frames`: the clips' length in frames (default cfg.n_frames); raises
    ConfigError when chunk_seconds is not positive or the excerpt is longer than the clips.

    >>> chunk_frames(Config(chunk_seconds=3.0))  # 22,050 Hz, hop 512: 1 + 66,150 // 512
    130
    >>> chunk_frames(Config(chunk_seconds=40.0))
    Traceback (most recent call last):
        ...
    genre_utils.ConfigError: chunk_seconds=40: excerpts must be longer than 0 s and fit in the clips (1292 frames, 30 s)
    """
    n_frames = cfg.n_frames if n_frames is None else n_frames
    frames = 1 + int(round(cfg.sample_rate * cfg.chunk_seconds)) // cfg.hop_length
    if cfg.chunk_seconds <= 0 or frames > n_frames:
        raise ConfigError(
            f"chunk_seconds={cfg.chunk_seconds:g}: excerpts must be longer than 0 s and fit in "
            f"the clips ({n_frames} frames, {cfg.clip_seconds:g} s)"
        )
    return frames


def excerpt_starts(total: int, length: int, hop: int | None = None) -> np.ndarray:
    """Start positions (int64) of excerpts `length` long that cover 0..`total` (frames or samples).

    Excerpts start every `hop` (default EXCERPT_HOP of an excerpt, at least 1); the last one ends
    with `total`, so every position lies in at least one excerpt. A `total` no longer than `length`
    gives the single start 0.

    >>> excerpt_starts(10, 4)  # hop: half an excerpt
    array([0, 2, 4, 6])
    >>> excerpt_starts(11, 4)  # the last excerpt ends with the total
    array([0, 2, 4, 6, 7])
    >>> excerpt_starts(3, 4)
    array([0])
    """
    hop = max(1, int(length * EXCERPT_HOP)) if hop is None else hop
    if total <= length:
        return np.zeros(1, np.int64)
    starts = np.arange(0, total - length + 1, hop, dtype=np.int64)
    return starts if starts[-1] == total - length else np.append(starts, total - length)


def micro_batch_size(cfg: Config) -> int:
    """Clips of one micro-batch: cfg.batch_size // cfg.accumulation_steps (gradient accumulation; the
    batch itself when accumulation_steps is 1). Raises ConfigError unless the batch splits evenly.

    >>> micro_batch_size(Config(batch_size=32, accumulation_steps=4))
    8
    >>> micro_batch_size(Config(batch_size=32, accumulation_steps=3))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    genre_utils.ConfigError: accumulation_steps=3: batch_size 32 does not split into 3 equal micro-batches; ...
    """
    steps, batch = cfg.accumulation_steps, cfg.batch_size
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch_size={batch!r}: needs a whole number of clips, at least 1")
    if not isinstance(steps, int) or steps < 1 or batch % steps:
        divisors = ", ".join(str(d) for d in range(1, batch + 1) if batch % d == 0)
        raise ConfigError(
            f"accumulation_steps={steps!r}: batch_size {batch} does not split into {steps} equal "
            f"micro-batches; choose one of {divisors}"
        )
    return batch // steps


def _check_features(data: Features, cfg: Config, inputs) -> None:
    """Raise DataError when the feature arrays do not fit the config or the model inputs."""
    where = data.path or "in-memory features"
    heights = {"mel": cfg.n_mels, "cqt": cfg.cqt_bins}
    for name in inputs:
        array = getattr(data, name)
        if name == "embedding":
            expected = (len(data.index), len(_fusion_columns()))
            if array is None or array.shape != expected:
                raise DataError(
                    f"{where}: the model takes musicnn embeddings {expected} but the features hold "
                    f"{'none' if array is None else array.shape}; join them with Features.with_embeddings"
                )
            continue
        if array.ndim != 3 or array.shape[0] != len(data.index) or array.shape[1] != heights[name]:
            raise DataError(
                f"{where}: {name} array has shape {array.shape}, expected ({len(data.index)}, {heights[name]}, "
                f"frames); extract features with the same config ({cfg.profile!r}) as the model"
            )
    labels = data.index["label"].to_numpy()
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= len(cfg.genres):
        raise DataError(f"{where}: labels outside 0..{len(cfg.genres) - 1}")


# Classes whose base class comes from Keras (PyDataset, Callback) are built by cached factories on first
# use (_feature_batches_class, _epoch_timer_class, _clip_validation_class), so that `import genre_utils`
# stays free of Keras (tests/test_model.py checks it)
@functools.cache
def _feature_batches_class():
    """keras.utils.PyDataset subclass, created on first use so keras is not imported with the module."""
    keras = import_keras()

    class FeatureBatches(keras.utils.PyDataset):
        """Batches ({input: float16 (batch, bins, frames, 1)}, labels (batch,)) read from memory maps
        (an "embedding" input: float32 (batch, values), the same for every excerpt of a clip)."""

        def __init__(self, data, rows, inputs, batch_size, shuffle, excerpt_frames, seed, starts=None, micro_batches=1):
            super().__init__()
            self.data, self.inputs, self.batch_size = data, tuple(inputs), batch_size
            self.micro_batches = micro_batches  # each batch is given as this many micro-batches
            self.rows = np.asarray(rows, dtype=np.int64)
            self.shuffle, self.excerpt_frames = shuffle, excerpt_frames
            self.labels = data.index["label"].to_numpy(np.int32)
            self.checked = {name: np.zeros(len(data.index), bool) for name in self.inputs}  # rows found finite
            self.seed, self.fixed_starts = seed, starts is not None
            self.order = self.rows
            self.starts = np.zeros(len(self.rows), np.int64) if starts is None else np.asarray(starts, np.int64)
            self.set_epoch(0)

        def set_epoch(self, epoch):
            """Draw the clip order and excerpt starts of `epoch` from a generator seeded by (seed, epoch)
            alone: an epoch draws the same whatever epochs came before (a resumed run's too)."""
            self.epoch = epoch
            rng = np.random.default_rng([self.seed, epoch])
            if self.shuffle:
                self.order = rng.permutation(self.rows)
            if self.excerpt_frames and not self.fixed_starts:
                n_frames = self.data.mel.shape[2]  # the mel and CQT frames are the same
                self.starts = rng.integers(0, n_frames - self.excerpt_frames + 1, len(self.rows))

        def __len__(self):
            return -(-len(self.rows) // self.batch_size) * self.micro_batches

        def __getitem__(self, index):
            batch, micro = divmod(index, self.micro_batches)
            first = batch * self.batch_size
            size = min(self.batch_size, len(self.rows) - first)
            # micro-batch `micro` of the batch: equal parts of a full one; a last, short batch is cut as
            # evenly as it goes, its clips repeated when it holds fewer clips than micro-batches
            part = first + np.array_split(np.arange(max(size, self.micro_batches)) % size, self.micro_batches)[micro]
            rows, starts = self.order[part], self.starts[part]
            if self.shuffle:  # ascending rows read the memory maps sequentially
                sort = np.argsort(rows)
                rows, starts = rows[sort], starts[sort]
            x = {}
            for name in self.inputs:
                array = getattr(self.data, name)
                self._check_finite(name, array, rows)
                if array.ndim == 2:  # the embedding: one vector per clip
                    x[name] = array[rows]
                    continue
                if self.excerpt_frames:
                    clips = np.empty((len(rows), array.shape[1], self.excerpt_frames), array.dtype)
                    for i, (row, start) in enumerate(zip(rows, starts)):
                        clips[i] = array[row, :, start : start + self.excerpt_frames]
                else:
                    clips = array[rows]
                x[name] = clips[..., np.newaxis]  # as cached (float16 dB): the model normalises
            return x, self.labels[rows]

        def _check_finite(self, name, array, rows):
            """Raise DataError if a row not checked before holds NaN or inf: a corrupt cache row must
            never reach the model. Each row is checked once (its first batch), on the float16 bits."""
            new = rows[~self.checked[name][rows]]
            if len(new) == 0:
                return
            block = array[new]
            if block.dtype == np.float16:  # all exponent bits set: inf or NaN; faster than isfinite
                bad = ((block.view(np.uint16) & 0x7C00) == 0x7C00).any(axis=(1, 2))
            else:
                bad = ~np.isfinite(block).all(axis=tuple(range(1, block.ndim)))
            if bad.any():
                track_id = self.data.index.index[new[np.argmax(bad)]]
                if name == "embedding":
                    where, remedy = "musicnn embeddings", "delete their .npz and run pretrained_embeddings again"
                else:
                    where = self.data.path / f"{name}.npy" if self.data.path else f"in-memory {name} features"
                    remedy = "delete the cache folder and run extract_features again"
                raise DataError(f"{where}: track {track_id} holds NaN or infinite values (corrupt cache); {remedy}")
            self.checked[name][new] = True

        def on_epoch_end(self):
            self.set_epoch(self.epoch + 1)

    return FeatureBatches


def feature_batches(
    data: Features,
    rows,
    cfg: Config,
    inputs=("mel", "cqt"),
    shuffle: bool = False,
    excerpt_frames: int | None = None,
    starts=None,
):
    """A keras.utils.PyDataset over `rows` of `data`, reading one batch at a time from the caches.

    Each batch is ({name: float16 (batch, bins, frames, 1)} for name in `inputs`, int32 labels): the
    cached dB values as they are (the model normalises them, see `build_model`). `shuffle` reorders clips every
    epoch with a generator seeded by cfg.seed and the epoch (`set_epoch`; `on_epoch_end` moves to the
    next); `excerpt_frames` crops a random excerpt of that many frames from every clip, anew each
    epoch (chunked training); `starts` (one frame number per row,
    with `excerpt_frames`) fixes the excerpts instead (prediction). With cfg.accumulation_steps > 1
    every batch is a micro-batch of `micro_batch_size(cfg)` clips; shuffled (training) batches come in
    groups of accumulation_steps that split one batch of cfg.batch_size, so that an epoch has as many
    optimiser steps as without accumulation (a last, short batch is cut as evenly as it goes, its clips
    repeated when it holds fewer clips than micro-batches). Raises DataError when arrays or labels do
    not fit `cfg`, ConfigError for an excerpt longer than the clips, starts that do not fit them or
    a batch that does not split into accumulation_steps; DataError, when a batch is read, for a row
    holding NaN or inf.
    """
    micro = micro_batch_size(cfg)
    _check_features(data, cfg, inputs)
    n_frames = data.mel.shape[2]
    if excerpt_frames is not None and not 1 <= excerpt_frames <= n_frames:
        raise ConfigError(f"excerpt_frames={excerpt_frames}: must be between 1 and the clips' {n_frames} frames")
    if starts is not None:
        starts = np.asarray(starts, dtype=np.int64)
        if (
            excerpt_frames is None
            or starts.shape != (len(rows),)
            or starts.min(initial=0) < 0
            or starts.max(initial=0) > n_frames - excerpt_frames
        ):
            raise ConfigError(f"starts: need one start in 0..{n_frames} - excerpt_frames per row, with excerpt_frames")
    batches = _feature_batches_class()
    if shuffle:  # training: each batch of cfg.batch_size as accumulation_steps micro-batches
        steps = cfg.accumulation_steps
        return batches(data, rows, inputs, cfg.batch_size, shuffle, excerpt_frames, cfg.seed, starts, steps)
    return batches(data, rows, inputs, micro, shuffle, excerpt_frames, cfg.seed, starts)


def _model_inputs(model, cfg: Config) -> list[str]:
    """Names of the model's inputs; raises ConfigError when their heights do not match `cfg`."""
    heights = {
        "mel": cfg.n_mels,
        "cqt": cfg.cqt_bins,
        "embedding": len(_fusion_columns()) if cfg.musicnn_input else None,
    }
    for tensor in model.inputs:
        if heights.get(tensor.name) != tensor.shape[1]:
            raise ConfigError(
                f"model {model.name}: input {tensor.name!r} is {tensor.shape[1]} bins high but the config "
                f"({cfg.profile!r}) gives {heights.get(tensor.name)}; build the model with the same config"
            )
    return [tensor.name for tensor in model.inputs]


# ── Training: Keras fit with checkpoints, logs and resume, one folder per run, read back by load_run ──

RUN_FILES = ("config.json", "versions.json", "history.csv", "best.keras", "last.keras")
# versions.json's run_format. 2: a CNN normalises its inputs (1 needed stats.npz); an embedding run holds
# its classifier as skops data (1: a pickle)
RUN_FORMAT = 2


def _versions() -> dict:
    keras = import_keras()
    import librosa

    backend = keras.backend.backend()
    return {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": backend,
        "backend_version": _backend_version(backend),
        "numpy": np.__version__,
        "librosa": librosa.__version__,
        "platform": platform.platform(),
        "devices": describe_devices(),
    }


def _training_data(data: Features, cfg: Config) -> dict:
    """What data.json of a run records: the features a model was trained on, their splits, and what
    kind of music they came from (`data_source` of cfg.data_root)."""
    clips = {split: len(data.rows(split)) for split in SPLITS}
    return {
        "features": str(data.path) if data.path else "in memory",
        "source": data_source(cfg.data_root),
        "clips": clips,
        "fingerprint": data.fingerprint(),
    }


def _read_history(path: Path) -> pd.DataFrame:
    """history.csv with each epoch once (in runs from before checkpoints were committed whole, a kill
    between logging and backing up an epoch repeated it; the later row wins)."""
    history = pd.read_csv(path)
    return history.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def adapt_normalization(model, data: Features, rows) -> None:
    """Adapt the per-band Normalization layers of a `build_model` model to `rows` of `data`.

    Each input's layer gets the mean and variance of every band over the given clips and all their
    frames, accumulated in float64 a chunk of rows at a time, so a memory-mapped cache is never
    loaded whole (a musicnn embedding input: of every value over the clips). The statistics are
    layer weights: the saved model carries them. Raises DataError
    when `rows` is empty or the statistics are not finite (a corrupt cache).
    """
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    where = data.path or "in-memory features"
    if len(rows) == 0:
        raise DataError(f"{where}: no clips to adapt the input normalisation to")
    for tensor in model.inputs:
        if tensor.name == "embedding":  # one vector per clip: a mean and a variance per value
            values = data.embedding[rows].astype(np.float64)
            mean, std = values.mean(axis=0), values.std(axis=0)
        else:
            mean, std = _band_stats(getattr(data, tensor.name), rows)
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise DataError(
                f"{where}: the {tensor.name} features of the training clips hold NaN or infinite "
                "values (corrupt cache); delete the cache folder and run extract_features again"
            )
        layer = model.get_layer(f"{tensor.name}_normalization")
        layer.adapt_mean.assign(mean)
        layer.adapt_variance.assign(np.square(std))
        layer.finalize_state()


@functools.cache
def _epoch_timer_class():
    """keras Callback adding epoch_seconds to each epoch's logs (created on first use, see above)."""
    keras = import_keras()

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs["epoch_seconds"] = time.perf_counter() - self.start

    return EpochTimer


_TIME_LEFT_EVERY = 60.0  # seconds between the "time left" lines a training prints, so short epochs do not flood


@functools.cache
def _expected_duration_class():
    """keras Callback printing how long fit should take, measured on its first steps after the first
    (which traces the graph; with fewer than 3 steps an epoch, on the first epoch), then the time
    left after an epoch, at most every _TIME_LEFT_EVERY seconds (created on first use, see above)."""
    keras = import_keras()

    class ExpectedDuration(keras.callbacks.Callback):
        def __init__(self, what: str):
            super().__init__()
            self.what = what

        def on_train_begin(self, logs=None):
            self.expected, self.epochs_done, self.said, self.last_said = None, 0, False, time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            if self.expected is None:
                epochs_left = self.params["epochs"] - epoch
                self.expected = _ExpectedDuration(self.what, epochs_left, "epoch", write=print)

        def on_train_batch_end(self, batch, logs=None):
            steps = self.params.get("steps") or 0
            if self.said or steps < 3:
                return
            if batch == 0:
                self.traced = time.perf_counter()
            elif batch == min(5, steps - 1):
                per_step = (time.perf_counter() - self.traced) / batch
                basis = f"steps 2-{batch + 1} of {steps} an epoch, validation not counted"
                self.expected.say(per_step * steps * self.expected.total, basis)
                self.said, self.last_said = True, time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epochs_done += 1
            elapsed = time.perf_counter() - self.expected.start
            left = self.params["epochs"] - epoch - 1
            if not self.said:  # nothing to say when the first epoch was the last
                if left:
                    self.expected.say(elapsed * self.expected.total, "its first epoch, tracing included")
                self.said, self.last_said = True, time.perf_counter()
            elif left and time.perf_counter() - self.last_said >= _TIME_LEFT_EVERY:
                self.last_said = time.perf_counter()
                print(
                    f"{self.what}: epoch {epoch + 1} of {self.params['epochs']}, about "
                    f"{_duration_text(elapsed / self.epochs_done * left)} left"
                )

    return ExpectedDuration


@functools.cache
def _clip_validation_class():
    """keras Callback that validates clip by clip with `predict_proba` (chunked training)."""
    keras = import_keras()

    class ClipValidation(keras.callbacks.Callback):
        """Adds val_loss (cross-entropy) and val_accuracy of the averaged excerpt predictions."""

        def __init__(self, data, rows, cfg):
            super().__init__()
            self.data, self.rows, self.cfg = data, rows, cfg
            self.labels = data.index["label"].to_numpy()[rows]

        def on_epoch_end(self, epoch, logs=None):
            proba = predict_proba(self.model, self.data, self.rows, self.cfg)
            true_class = proba[np.arange(len(self.rows)), self.labels]
            logs["val_loss"] = float(-np.log(np.clip(true_class, 1e-7, 1.0)).mean())
            logs["val_accuracy"] = float((proba.argmax(axis=1) == self.labels).mean())

    return ClipValidation


def train(
    model, data: Features, cfg: Config, run_dir: str | os.PathLike, *, callbacks=(), verbose="auto"
) -> pd.DataFrame:
    """Fit `model` on the training split of `data`, validating on the validation split: notebook 04's
    recipe (`step_decay`, Adam, cross-entropy, `compile`, `fit`) with checkpoints, logs and resume.

    cfg.epochs epochs of cfg.batch_size clips, seeded by cfg.seed. The recipe fields of `Config`
    (mixup, gain, label smoothing, weight decay, cosine schedule with warm-up, early stopping, the
    checkpoint's cfg.monitor, weight averaging) change the recipe when set (`RECIPE_SETTINGS`).
    cfg.train_mode "full" trains on whole clips; "chunked" on one random cfg.chunk_seconds excerpt per
    clip and epoch (`chunk_frames`), validated clip by clip as `predict_proba` predicts. With
    cfg.accumulation_steps > 1 every optimiser step averages the gradients of that many micro-batches
    (the same steps in a fraction of the memory; batch norm and mixup work per micro-batch). If
    `run_dir` holds backup/ (a killed run), training resumes after its last finished epoch, exactly:
    every epoch draws its batches, excerpts and augmentations from (cfg.seed, epoch) and the checkpoint
    holds the rest, so on the same machine it ends as a run never killed. Otherwise it starts afresh,
    replacing earlier results. It prints how long it should take after its first steps, then the time
    left as epochs finish.

    Parameters
    ----------
    model : keras.Model
        From `build_model` with the same `cfg`; compiled here.
    data : Features
        From `extract_features` or `open_features` with the same `cfg` (with cfg.musicnn_input,
        `Features.with_embeddings` of them).
    cfg : Config
        The training settings.
    run_dir : str or os.PathLike
        The run folder, created if needed.
    callbacks, verbose
        Extra Keras callbacks, and `model.fit`'s verbose ("auto", 0, 1 or 2).

    Returns
    -------
    pd.DataFrame
        The history, one row per epoch (from 0): epoch, accuracy, loss, val_accuracy, val_loss,
        epoch_seconds (wall time of the epoch and its validation).

    Writes
    ------
    `run_dir/`
        config.json, data.json (`Features.fingerprint` of the features and splits), versions.json (with
        RUN_FORMAT), history.csv, best.keras (best cfg.monitor; never averaged), last.keras (the final
        weights, or with cfg.use_ema their moving average), tensorboard/ (with TensorFlow) and, while
        running, backup/ (`_commit_checkpoint`). The models hold their input normalisation, so they predict
        from cached features alone; cfg.checkpoint names the one that predicts; `load_run` reads them back.

    Raises
    ------
    ConfigError
        When resuming a run started with other settings or data, for a model built with another config,
        a batch that does not split into cfg.accumulation_steps micro-batches, or a `run_dir` that cannot
        be written (naming it and why).
    DataError
        For an empty split, or features that do not fit `cfg` or hold NaN/inf values.
    DeviceMemoryError
        When a training step does not fit the device's memory, naming the device, the batch, the
        precision and the settings that need less; backup/ is kept.
    """
    keras = import_keras()

    configure_devices()
    inputs = _model_inputs(model, cfg)  # check everything before touching the run folder
    splits = {split: data.rows(split) for split in ("training", "validation")}
    for split, rows in splits.items():
        if len(rows) == 0:
            raise DataError(f"{data.path or 'in-memory features'}: no clips in the {split} split")
    chunked = _train_mode(cfg) == "chunked"
    keras.utils.set_random_seed(cfg.seed)
    train_batches = feature_batches(
        data,
        splits["training"],
        cfg,
        inputs,
        shuffle=True,
        excerpt_frames=chunk_frames(cfg, data.mel.shape[2]) if chunked else None,
    )
    val_batches = None if chunked else feature_batches(data, splits["validation"], cfg, inputs)
    train_batches, val_batches, loss = _recipe_batches(train_batches, val_batches, cfg)

    run_dir = Path(run_dir)
    checkpoint, state = _open_run(run_dir, data, cfg)
    adapt_normalization(model, data, splits["training"])  # a resumed run restores the same values

    with _strategy_scope():
        steps_per_epoch = len(train_batches) // cfg.accumulation_steps  # optimiser steps
        model.compile(optimizer=_optimizer(cfg, steps_per_epoch), loss=loss, metrics=["accuracy"])
        # the optimiser's and the metrics' variables are made now, as Keras makes them under a
        # distribution strategy: made inside the first step, they make TensorFlow trace it twice
        # (a quarter of a short run's time)
        one_hot = not isinstance(loss, str)
        labels = keras.KerasTensor((None, len(cfg.genres)) if one_hot else (None,), "float32" if one_hot else "int32")
        model._symbolic_build(data_batch=({tensor.name: tensor for tensor in model.inputs}, labels, None))
    if checkpoint is not None:
        _restore_checkpoint(model, checkpoint, state)
    stopping = [keras.callbacks.EarlyStopping("val_loss", patience=cfg.early_stopping)] if cfg.early_stopping else []
    # the first callbacks complete the epoch's logs, which the checkpoint then commits with its row
    logging = [
        *([_clip_validation_class()(data, splits["validation"], cfg)] if chunked else []),
        _epoch_timer_class()(),  # after the clip validation, so the time includes it
        _expected_duration_class()(f"training {run_dir.name}"),
        *stopping,
        _epoch_checkpoint_class()(run_dir, train_batches, state, cfg.monitor, *stopping),
        # Keras writes TensorBoard logs through TensorFlow, whatever the backend
        *([keras.callbacks.TensorBoard(run_dir / "tensorboard")] if importlib.util.find_spec("tensorflow") else []),
    ]
    out_of_memory = None
    try:
        model.fit(
            train_batches,
            validation_data=val_batches,
            epochs=cfg.epochs,
            verbose=verbose,
            callbacks=[*logging, *callbacks],
            initial_epoch=cfg.epochs if state["stopped"] else len(state["history"]),
            shuffle=False,  # the batches shuffle themselves, by epoch (Keras' own order would not resume)
        )
    except Exception as exc:
        if not _is_out_of_memory(exc):
            raise
        # raised below, outside this block, so that the backend's traceback (whose frames hold device
        # memory) is released; backup/ stays, as after any interrupted epoch
        out_of_memory = _first_line(exc)
    if out_of_memory is not None:
        raise _out_of_memory_error(cfg, run_dir, out_of_memory)
    model.save(run_dir / "backup" / "last.keras")  # complete before it takes its name, and before backup/ goes
    os.replace(run_dir / "backup" / "last.keras", run_dir / "last.keras")
    shutil.rmtree(run_dir / "backup")
    return _read_history(run_dir / "history.csv")


def _open_run(run_dir: Path, data: Features, cfg: Config) -> tuple[Path | None, dict]:
    """(last checkpoint or None, training state) of `run_dir`, ready to train into: a killed run with the
    same settings and data resumes from its checkpoint, anything else starts afresh; config.json,
    data.json and versions.json written. ConfigError when a killed run used other settings or data."""
    config_path = run_dir / "config.json"
    settings = json.loads(json.dumps(cfg.to_dict()))  # as it reads back from JSON
    checkpoint = _last_checkpoint(run_dir / "backup")
    resuming = checkpoint is not None
    if resuming and config_path.is_file() and json.loads(config_path.read_text()) != settings:
        raise ConfigError(
            f"{config_path}: the interrupted run in {run_dir} used other settings; resume it with the "
            "same config or train into a new run folder"
        )
    trained_on = _training_data(data, cfg)
    if resuming and (run_dir / "data.json").is_file():
        earlier = json.loads((run_dir / "data.json").read_text())
        if earlier.get("fingerprint") != trained_on["fingerprint"]:
            raise ConfigError(
                f"{run_dir / 'data.json'}: the interrupted run in {run_dir} was trained on other data "
                f"({earlier.get('features')}, {earlier.get('clips')}; now {trained_on['features']}, "
                f"{trained_on['clips']}); resume it with the same features and splits or train into a new run folder"
            )
    with _writing_to(run_dir, ConfigError, "the run folder (cfg.runs_dir)"):
        run_dir.mkdir(parents=True, exist_ok=True)
        state = {"history": [], "best": float("inf" if cfg.monitor == "val_loss" else "-inf"), "stopped": False}
        if resuming:  # history.csv loses any row logged after the checkpoint
            state = _publish_checkpoint(checkpoint, run_dir)
        else:
            for name in ("history.csv", "best.keras", "last.keras"):
                (run_dir / name).unlink(missing_ok=True)
            for name in ("tensorboard", "backup"):
                shutil.rmtree(run_dir / name, ignore_errors=True)
        _write_json(config_path, settings)
        _write_json(run_dir / "data.json", trained_on)
        _write_json(run_dir / "versions.json", {"run_format": RUN_FORMAT, **_versions()})
    return checkpoint, state


_CHECKPOINT_WEIGHTS = "state.weights.h5"  # in each checkpoint: the model's and the optimiser's variables


@functools.cache
def _epoch_checkpoint_class():
    """keras Callback that makes a run resumable exactly (created on first use, see above)."""
    keras = import_keras()

    class EpochCheckpoint(keras.callbacks.Callback):
        """Sets the training batches to each epoch (their randomness derives from it, see
        `feature_batches`) and commits each finished epoch (`_commit_checkpoint`) with its row of the
        history and the best `monitor` so far: an epoch strictly better saves best.keras, as Keras'
        ModelCheckpoint does. `stopping` (an EarlyStopping) resumes its count from the history."""

        def __init__(self, run_dir, batches, state, monitor, stopping=None):
            super().__init__()
            self.run_dir, self.batches, self.state = run_dir, batches, state
            self.monitor, self.stopping = monitor, stopping

        def on_train_begin(self, logs=None):
            for row in self.state["history"] if self.stopping else ():  # after its own on_train_begin
                self.stopping.on_epoch_end(row["epoch"], row)

        def on_epoch_begin(self, epoch, logs=None):
            self.batches.set_epoch(epoch)

        def on_epoch_end(self, epoch, logs=None):
            value, best = float(logs[self.monitor]), self.state["best"]
            improved = value < best if self.monitor == "val_loss" else value > best
            row = {"epoch": epoch, **{key: float(logs[key]) for key in sorted(logs)}}  # CSVLogger's columns
            self.state = {
                "history": [*self.state["history"], row],
                "best": value if improved else best,
                "stopped": bool(self.model.stop_training),
                "seeds": [keras.ops.convert_to_numpy(state).tolist() for state in _seed_states(self.model)],
            }
            _commit_checkpoint(self.model, self.run_dir, self.state, improved)

    return EpochCheckpoint


def _seed_states(model) -> list:
    """The states of the model's random seed generators (dropout, SpecAugment masks): variables that are
    not weights, so that saved weights lack them."""
    weights = {id(weight) for weight in model.weights}
    return [variable for variable in model.variables if id(variable) not in weights]


def _last_checkpoint(backup_dir: Path) -> Path | None:
    """The last committed checkpoint of a run, backup/epoch-<epochs done>/, or None."""
    folders = [path for path in backup_dir.glob("epoch-*") if path.name[6:].isdigit()]
    return max(folders, key=lambda path: int(path.name[6:]), default=None)


def _commit_checkpoint(model, run_dir: Path, state: dict, improved: bool) -> None:
    """Commit a finished epoch as backup/epoch-<epochs done>/: the model's and the optimiser's variables
    (the moving average of the weights included), `state` (the history, the best cfg.monitor, whether
    training stopped, the seed generators' states) and best.keras (this epoch's model if `improved`,
    else the previous checkpoint's). They are written into a hidden folder renamed into place: a kill
    at any instant leaves the previous checkpoint or this one, whole. `_publish_checkpoint` follows."""
    backup_dir = run_dir / "backup"
    previous = _last_checkpoint(backup_dir)
    folder = backup_dir / f"epoch-{len(state['history']):04d}"
    partial = backup_dir / f".{folder.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_weights(partial / _CHECKPOINT_WEIGHTS)
    if improved:
        model.save(partial / "best.keras")
    elif previous is not None and (previous / "best.keras").is_file():
        _link_or_copy(previous / "best.keras", partial / "best.keras")
    (partial / "state.json").write_text(json.dumps(state))
    os.replace(partial, folder)
    _publish_checkpoint(folder, run_dir)


def _publish_checkpoint(folder: Path, run_dir: Path) -> dict:
    """Make the run folder agree with the committed checkpoint `folder`, and return its state: the rest of
    backup/ (older or half-written checkpoints) removed, history.csv rewritten from its history (any
    row logged after it goes) and best.keras its best model."""
    for other in folder.parent.iterdir():
        if other != folder:
            shutil.rmtree(other) if other.is_dir() else other.unlink()
    state = json.loads((folder / "state.json").read_text())
    with _atomic_path(run_dir / "history.csv") as tmp:
        pd.DataFrame(state["history"]).to_csv(tmp, index=False)
    if (folder / "best.keras").is_file():
        with _atomic_path(run_dir / "best.keras") as tmp:
            _link_or_copy(folder / "best.keras", tmp)
    else:
        (run_dir / "best.keras").unlink(missing_ok=True)
    return state


def _restore_checkpoint(model, folder: Path, state: dict) -> None:
    """Load a checkpoint's variables and seed states into `model`, compiled and built."""
    model.load_weights(folder / _CHECKPOINT_WEIGHTS)
    for variable, value in zip(_seed_states(model), state["seeds"], strict=True):
        variable.assign(np.asarray(value, dtype=variable.dtype))


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `target` to `source` (files never rewritten in place), or copy it where links fail."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _out_of_memory_error(cfg: Config, run_dir: Path, detail: str) -> DeviceMemoryError:
    """The DeviceMemoryError of a training step that did not fit its device: the device and its memory,
    the batch and precision, the settings that need less memory, and how the run folder resumes."""
    keras = import_keras()

    gib = 2**30
    memory = device_memory()
    total = f"{memory['total'] / gib:.1f} GiB" if memory["total"] else "size not reported"
    peak = f", at most {memory['peak'] / gib:.1f} GiB of it used by this process" if memory["peak"] else ""
    if keras.backend.backend() == "jax" and gpu_devices():
        peak += " (JAX's share of the card: XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 before importing Keras gives it more)"
    batch, steps = cfg.batch_size, cfg.accumulation_steps
    micro = batch // steps
    chunked = cfg.train_mode == "chunked"
    if chunked:
        inputs = f"random {cfg.chunk_seconds:g} s excerpts ({chunk_frames(cfg)} frames)"
    else:
        inputs = f"whole {cfg.clip_seconds:g} s clips ({cfg.n_frames} frames)"
    step = f"batch {batch}" + (f" as {steps} micro-batches of {micro}" if steps > 1 else "")
    ways = []
    larger = [d for d in range(steps + 1, batch + 1) if batch % d == 0][:2]
    if larger:
        options = " or ".join(f"{d} (micro-batches of {batch // d}: 1/{d // steps} of the activations)" for d in larger)
        ways.append(
            f"accumulation_steps={options}: the same {batch} clips and optimiser steps, the gradients of "
            "the micro-batches averaged (batch-norm statistics per micro-batch)"
        )
    if not chunked:
        with contextlib.suppress(ConfigError):
            frames = chunk_frames(cfg)
            ways.append(
                f'train_mode="chunked": random {cfg.chunk_seconds:g} s excerpts ({frames} of {cfg.n_frames} frames, '
                f"about {frames / cfg.n_frames:.0%} of the activations), predictions averaged over a clip's "
                "excerpts (not the report's recipe)"
            )
    else:
        ways.append(f"chunk_seconds={cfg.chunk_seconds / 2:g}: excerpts half as long (half the activations)")
    if batch > 1:
        smaller = batch // 2
        kept = steps if smaller % steps == 0 else 1
        accumulation = f", accumulation_steps={kept}" if kept != steps else ""
        ways.append(
            f"batch_size={smaller}{accumulation}: half the clips per optimiser step (micro-batches of "
            f"{smaller // kept}; not the report's recipe: twice the steps, noisier gradients)"
        )
    history = run_dir / "history.csv"
    epochs = len(_read_history(history)) if history.is_file() and (run_dir / "backup").is_dir() else 0
    if epochs:
        resume = (
            f"{run_dir / 'backup'} keeps the {epochs} finished epoch(s): with the same settings, once the memory "
            f"is free (another process or notebook kernel may hold it), training into {run_dir} resumes after "
            "them; with other settings, train into a new run folder"
        )
    else:
        resume = "No epoch had finished: train again with other settings (into the same folder: it starts afresh)"
    lines = "".join(f"\n  - {way}" for way in ways)
    return DeviceMemoryError(
        f"{run_dir}: training ran out of memory on {memory['device']} ({total}{peak}) at {step} of {inputs} "
        f"[{describe_devices()}]. Settings that need less memory (get_config(..., setting=value)):{lines}\n"
        f"{resume}. The backend said: {detail[:300]}"
    )


LR_SCHEDULES = ("step", "cosine")
MONITORS = ("val_accuracy", "val_loss")
CHECKPOINTS = ("best", "last")  # cfg.checkpoint: the saved model (best.keras or last.keras) that predicts


def step_decay(cfg, steps_per_epoch):
    """The report's learning rate: cfg.learning_rate times cfg.lr_decay_rate every cfg.lr_decay_epochs
    epochs, smoothly step by step (notebook 04 writes it out: a #@save cell)."""
    from keras import optimizers

    return optimizers.schedules.ExponentialDecay(
        cfg.learning_rate, decay_steps=cfg.lr_decay_epochs * steps_per_epoch, decay_rate=cfg.lr_decay_rate
    )


def _optimizer(cfg: Config, steps_per_epoch: int):
    """Adam (AdamW with cfg.weight_decay) with cfg's learning-rate schedule; ConfigError for unknown settings.

    "step": cfg.learning_rate x cfg.lr_decay_rate every cfg.lr_decay_epochs epochs (the report's);
    "cosine": a linear warm-up from 0 over cfg.warmup_epochs, then cosine decay to 0 at cfg.epochs
    (Loshchilov & Hutter 2017, SGDR; Goyal et al. 2017 for the warm-up). With cfg.use_ema the
    optimizer also keeps an exponential moving average of the weights (cfg.ema_momentum per step;
    Polyak & Juditsky 1992), which Keras swaps into the model when `fit` ends. `steps_per_epoch`
    counts optimiser steps; with cfg.accumulation_steps > 1 each step averages the gradients of that
    many micro-batches (Keras' gradient_accumulation_steps), and schedule and average count steps.
    """
    keras = import_keras()
    schedules = keras.optimizers.schedules

    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule {cfg.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}")
    if cfg.monitor not in MONITORS:
        raise ConfigError(f"monitor {cfg.monitor!r}: choose one of {', '.join(MONITORS)}")
    if cfg.checkpoint not in CHECKPOINTS:
        raise ConfigError(f"checkpoint {cfg.checkpoint!r}: choose one of {', '.join(CHECKPOINTS)}")
    if cfg.use_ema and not 0.0 <= cfg.ema_momentum < 1.0:
        raise ConfigError(f"ema_momentum {cfg.ema_momentum!r}: needs 0 <= ema_momentum < 1")
    if cfg.lr_schedule == "step":
        if cfg.warmup_epochs:
            raise ConfigError("warmup_epochs needs lr_schedule='cosine'")
        schedule = step_decay(cfg, steps_per_epoch)
    else:
        warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
        decay = max(1, cfg.epochs * steps_per_epoch - warmup)
        schedule = schedules.CosineDecay(
            0.0 if warmup else cfg.learning_rate,
            decay,
            warmup_steps=warmup,
            warmup_target=cfg.learning_rate if warmup else None,
        )
    ema = {"use_ema": True, "ema_momentum": cfg.ema_momentum} if cfg.use_ema else {}
    if cfg.accumulation_steps > 1:  # passed with the weight-averaging options
        # Keras evaluates a learning-rate schedule at its count of micro-batches and moves the weight
        # average after every micro-batch: both are made to count optimiser steps
        schedule = _optimizer_step_schedule_class()(schedule, cfg.accumulation_steps)
        ema = {**ema, "gradient_accumulation_steps": cfg.accumulation_steps}
        if cfg.use_ema:
            ema["ema_momentum"] = cfg.ema_momentum ** (1 / cfg.accumulation_steps)
    if cfg.weight_decay:
        return keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay, **ema)
    return keras.optimizers.Adam(schedule, **ema)


@functools.cache
def _optimizer_step_schedule_class():
    """LearningRateSchedule class that counts optimiser steps under gradient accumulation (created on
    first use; registered, so saved models holding it load again)."""
    keras = import_keras()
    schedules = keras.optimizers.schedules

    @keras.saving.register_keras_serializable(package="genre_utils")
    class OptimizerStepSchedule(schedules.LearningRateSchedule):
        """`schedule` at micro-batch // accumulation_steps: Keras calls a learning-rate schedule with its
        count of micro-batches (the optimizer's _iterations), while `optimizer.iterations`, Adam's bias
        correction and the step the weights change at count optimiser steps."""

        def __init__(self, schedule, accumulation_steps):
            self.schedule, self.accumulation_steps = schedule, int(accumulation_steps)

        def __call__(self, step):
            return self.schedule(keras.ops.floor_divide(step, self.accumulation_steps))

        def get_config(self):
            return {"schedule": schedules.serialize(self.schedule), "accumulation_steps": self.accumulation_steps}

        @classmethod
        def from_config(cls, config):
            return cls(schedules.deserialize(config["schedule"]), config["accumulation_steps"])

    return OptimizerStepSchedule


def _recipe_batches(train_batches, val_batches, cfg: Config):
    """(training batches, validation batches, loss) for cfg's recipe.

    The report's recipe keeps integer labels and sparse cross-entropy. Mixup or label smoothing need
    one-hot targets: the batches are wrapped to give them (training batches mixed and level-shifted as
    cfg says), and the loss is categorical cross-entropy with cfg.label_smoothing.
    """
    keras = import_keras()

    if not (cfg.mixup_alpha or cfg.label_smoothing or cfg.gain_db):
        return train_batches, val_batches, "sparse_categorical_crossentropy"
    one_hot = bool(cfg.mixup_alpha or cfg.label_smoothing)
    classes = len(cfg.genres)
    train_batches = _augmented_batches_class()(train_batches, classes, one_hot, cfg.mixup_alpha, cfg.gain_db, cfg.seed)
    if val_batches is not None and one_hot:
        val_batches = _augmented_batches_class()(val_batches, classes, one_hot, 0.0, 0.0, cfg.seed)
    loss = (
        keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
        if one_hot
        else "sparse_categorical_crossentropy"
    )
    return train_batches, val_batches, loss


@functools.cache
def _augmented_batches_class():
    """keras.utils.PyDataset wrapping `feature_batches`: one-hot labels, mixup, random gain (created on first use)."""
    keras = import_keras()

    class AugmentedBatches(keras.utils.PyDataset):
        """The batches of `inner` (dB features) with one-hot labels (if `one_hot`), each example shifted by a
        random gain (uniform in +-gain_db dB) and blended with another of its batch by mixup:
        x = l x_i + (1 - l) x_j, y = l y_i + (1 - l) y_j with l ~ Beta(alpha, alpha) per example
        (Zhang et al. 2018, mixup: beyond empirical risk minimization)."""

        def __init__(self, inner, classes, one_hot, mixup_alpha, gain_db, seed):
            super().__init__()
            self.inner, self.classes, self.one_hot = inner, classes, one_hot
            self.mixup_alpha, self.gain_db, self.seed = mixup_alpha, gain_db, seed

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, index):
            x, labels = self.inner[index]
            y = np.eye(self.classes, dtype=np.float32)[labels] if self.one_hot else labels
            n = len(labels)
            # each batch's own generator: the same draws in whatever order and epoch batches are read
            rng = np.random.default_rng([self.seed, 2018, self.inner.epoch, index])
            if self.gain_db:  # a level in dB shifts the spectrograms, not the embedding
                gain = rng.uniform(-self.gain_db, self.gain_db, (n, 1, 1, 1)).astype(np.float32)
                x = {name: array.astype(np.float32) + gain if array.ndim == 4 else array for name, array in x.items()}
            if self.mixup_alpha:
                share = rng.beta(self.mixup_alpha, self.mixup_alpha, n).astype(np.float32)
                partner = rng.permutation(n)
                mixed = {}
                for name, array in x.items():  # spectrograms (n, bins, frames, 1) and embeddings (n, values)
                    weight = share.reshape(-1, *[1] * (array.ndim - 1))
                    mixed[name] = weight * array + (1 - weight) * array[partner]
                x = mixed
                y = share[:, None] * y + (1 - share[:, None]) * y[partner]
            return x, y

        def set_epoch(self, epoch):
            self.inner.set_epoch(epoch)

        def on_epoch_end(self):
            self.inner.on_epoch_end()

    return AugmentedBatches


def _config_from_dict(settings: dict, source: Path) -> Config:
    """Config from `cfg.to_dict()` output read back from JSON (paths and tuples restored)."""
    defaults = Config()
    settings = {_RENAMED_SETTINGS.get(name, name): value for name, value in settings.items()}
    unknown = set(settings) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(sorted(unknown))}")
    typed = {}
    for name, value in settings.items():
        default = getattr(defaults, name)
        if isinstance(default, Path):
            value = Path(value)
        elif isinstance(default, tuple):
            value = tuple(value)
        typed[name] = value
    return Config(**typed)


def load_run(run_dir: str | os.PathLike):
    """(model, Config, history DataFrame) of a finished run folder written by `train`: the model the
    run's cfg.checkpoint names (best.keras, or last.keras for "last"), the one that predicts. A run
    of `finetune_musicnn` gives its model.keras and the history of its two stages.

    Raises DataError naming the missing file when the folder holds no finished run.
    """
    run_dir = Path(run_dir)
    if (run_dir / "finetune.json").is_file():
        return _load_finetuned_run(run_dir)
    for name in RUN_FILES:
        if not (run_dir / name).is_file():
            raise DataError(f"{run_dir / name}: not found; train into {run_dir} first (notebook 04)")
    _check_run_format(run_dir, oldest=2, retrain="its model expects normalised input; train into it again")
    configure_devices()  # after the checks: a missing run fails at once, without loading Keras
    cfg = _config_from_dict(_read_json(run_dir / "config.json"), run_dir / "config.json")
    model = load_model(run_dir / f"{cfg.checkpoint}.keras")
    return model, cfg, _read_history(run_dir / "history.csv")


def training_cost(cfg: Config) -> str:
    """What one training of cfg.epochs epochs should cost here, from the epoch times of notebook 04's run of
    this preset (cfg.runs_dir/<profile>-full/history.csv; the first epoch, which also traces, left out of the
    mean): what the extra notebooks say before they start. Each training also says its own cost (`train`)."""
    history = cfg.runs_dir / f"{cfg.profile}-full" / "history.csv"
    try:
        times = _read_history(history)["epoch_seconds"]
    except (OSError, KeyError, ValueError):
        return f"not measured yet (no {history}: notebook 04 trains it); each training says its cost as it starts"
    seconds = float(times.iloc[1:].mean() if len(times) > 1 else times.mean())
    return (
        f"about {_duration_text(seconds * cfg.epochs)} a training of {cfg.epochs} epochs ({seconds:.0f} s an epoch on "
        f"average, {times.min():.0f}-{times.max():.0f} s, in notebook 04's run here; smaller networks take less)"
    )


def _run_format(run_dir: Path) -> int | None:
    """RUN_FORMAT recorded in a run's versions.json (1 for runs from before it was recorded)."""
    try:
        return json.loads((run_dir / "versions.json").read_text()).get("run_format", 1)
    except (OSError, ValueError, AttributeError):
        return None


def _check_run_format(run_dir: Path, oldest: int = 1, retrain: str = "") -> None:
    """Raise DataError unless the run's versions.json is readable and its run_format lies in oldest..RUN_FORMAT."""
    run_format = _run_format(run_dir)
    if not isinstance(run_format, int):
        raise DataError(f"{run_dir / 'versions.json'}: not the JSON this code writes (a run_format number expected)")
    if run_format > RUN_FORMAT:
        raise DataError(
            f"{run_dir}: written by a newer version of genre-cnn (run format {run_format}; this code reads up to "
            f"{RUN_FORMAT}); update genre-cnn (git pull) to use it"
        )
    if run_format < oldest:
        raise DataError(f"{run_dir}: written by an older version of genre-cnn (run format {run_format}); {retrain}")


def _read_json(path: Path) -> dict:
    """A JSON object written by this code, or DataError naming the file when it is missing or malformed."""
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not the JSON this code writes ({_first_line(exc)})") from None
    if not isinstance(content, dict):
        raise DataError(f"{path}: not the JSON this code writes (an object expected)")
    return content


# ── Prediction: genre probabilities of cached clips and of audio files of any length, with their caveats ──


def predict_proba(model, data: Features, rows, cfg: Config) -> np.ndarray:
    """Genre probabilities, float32 (len(rows), len(cfg.genres)), for `rows` of `data`, normalised
    exactly as in training. A model trained on whole clips (cfg.train_mode "full") sees each clip
    whole; a chunked one sees the excerpts of cfg.chunk_seconds that cover the clip (`excerpt_starts`,
    each half an excerpt after the previous) and the clip gets the mean of their softmax outputs.
    Raises DataError when the features, ConfigError when the model or the mode, do not fit `cfg`."""
    inputs = _model_inputs(model, cfg)
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return np.zeros((0, len(cfg.genres)), np.float32)
    if _train_mode(cfg) == "full":
        batches = feature_batches(data, rows, cfg, inputs)
        return np.asarray(model.predict(batches, verbose=0), dtype=np.float32)
    length = chunk_frames(cfg, data.mel.shape[2])
    starts = excerpt_starts(data.mel.shape[2], length)
    batches = feature_batches(
        data, np.repeat(rows, len(starts)), cfg, inputs, excerpt_frames=length, starts=np.tile(starts, len(rows))
    )
    proba = np.asarray(model.predict(batches, verbose=0), dtype=np.float32)
    return proba.reshape(len(rows), len(starts), -1).mean(axis=1)


def predict_file(path: str | os.PathLike, model, cfg: Config, progress: bool = False) -> pd.DataFrame:
    """Genre probabilities of one audio file of any length, in any format `load_audio` reads.

    The file is decoded at cfg.sample_rate as a stream, so memory does not grow with its length (a
    two-hour recording needs no more than a song), and cut into windows as long as the training clips
    (cfg.clip_seconds), each starting half a window after the previous (`excerpt_starts`), the last
    ending with the file; a shorter file is zero-padded to one window, as in training. Each window gets
    the training features and `predict_proba`'s prediction (a chunked model averages its excerpts); a
    fused CNN (cfg.musicnn_input) also gets each window's musicnn embedding.
    A fine-tuned musicnn (`finetune_musicnn`) predicts each 3 s patch of the file at 16 kHz instead.

    Parameters
    ----------
    path : str or os.PathLike
        The audio file.
    model : keras.Model
        A trained model, e.g. from `load_run`.
    cfg : Config
        The run's settings.
    progress : bool
        Show a progress bar for files longer than 3 minutes (the command line does on a terminal).

    Returns
    -------
    pd.DataFrame
        One row per window, indexed by its start in seconds (start_s), one column of probabilities per
        genre; its `.mean()` is the file's prediction.

    Raises
    ------
    AudioError
        Naming the file when it cannot be decoded or decodes to corrupt samples (as `load_audio`).
    """
    if model.name == "musicnn_genres":  # a fine-tuned musicnn hears its own 3 s patches at 16 kHz
        return _predict_file_finetuned(path, model, cfg, progress)
    stream = _AudioStream(path, cfg.sample_rate, progress)
    fused = "embedding" in _model_inputs(model, cfg)  # a fused CNN also hears each window through musicnn
    musicnn_stream = _AudioStream(path, MUSICNN_SAMPLE_RATE) if fused else None

    def predict(starts: np.ndarray, windows: np.ndarray) -> pd.DataFrame:
        index = pd.DataFrame(
            {"genre": cfg.genres[0], "split": "prediction", "label": 0},  # labels unused
            index=pd.Index(starts / cfg.sample_rate, name="start_s"),
        )
        features = Features(
            index=index,
            mel=np.stack([mel_spectrogram(window, cfg) for window in windows]).astype(np.float16),
            cqt=np.stack([cqt(window, cfg) for window in windows]).astype(np.float16),
        )
        if fused:
            features = features.with_embeddings(_window_embeddings(musicnn_stream, index.index, cfg))
        proba = predict_proba(model, features, np.arange(len(windows)), cfg)
        return pd.DataFrame(proba, index=index.index, columns=list(cfg.genres))

    windows = _streamed_predictions(_window_batches(stream.windows(cfg.n_samples)), predict)
    return _with_audio_facts(windows, stream, cfg.clip_seconds)


def _window_embeddings(stream: _AudioStream, starts_s: pd.Index, cfg: Config) -> pd.DataFrame:
    """musicnn embeddings (the fused CNN's input) of the cfg.clip_seconds windows of an audio stream at
    16 kHz starting at `starts_s` seconds (in order), zero-padded as `pretrained_embeddings` reads a clip,
    the last moved back to end with the file."""
    length = int(round(MUSICNN_SAMPLE_RATE * cfg.clip_seconds))
    model, keep = load_musicnn(), np.isin(_embedding_columns(), _fusion_columns())
    rows = [
        musicnn_embedding(stream.window(int(round(start * MUSICNN_SAMPLE_RATE)), length, clip=True)[1], model)[keep]
        for start in starts_s
    ]
    return pd.DataFrame(np.stack(rows), index=starts_s, columns=list(_fusion_columns()))


SILENCE_DB = -60.0  # dBFS: a file whose RMS level lies below this holds nothing to classify (digital silence: -inf)
SHORT_SHARE = 0.5  # a file shorter than this share of the model's window is mostly padding: flagged


def _with_audio_facts(windows: pd.DataFrame, stream: _AudioStream, window_seconds: float) -> pd.DataFrame:
    """`windows` with what `predict` reports about the audio of a finished stream in attrs: seconds (its
    real length, before any padding), level_db (its RMS level in dBFS, -inf for digital silence) and
    window_s (the model's window)."""
    windows.attrs.update(
        seconds=stream.total / stream.sr, level_db=float(stream.level_db), window_s=float(window_seconds)
    )
    return windows


def audio_warnings(windows: pd.DataFrame) -> list[str]:
    """What makes a prediction meaningless, from the attrs of a `predict_file` (or embedding, or
    zero-shot) result: audio below SILENCE_DB (silent or near-silent) and audio shorter than
    SHORT_SHARE of the model's window (mostly padding), each naming the measured value and what the
    model expects. An empty list when neither applies."""
    facts = windows.attrs
    found = []
    if facts["level_db"] < SILENCE_DB:
        level = "digital silence" if np.isneginf(facts["level_db"]) else f"RMS level {facts['level_db']:.0f} dBFS"
        found.append(
            f"silent ({level}; music is louder than {SILENCE_DB:g} dBFS): nothing to classify, no genres given"
        )
    if facts["seconds"] < SHORT_SHARE * facts["window_s"]:
        found.append(
            f"only {facts['seconds']:.1f} s of audio; the model hears {facts['window_s']:.3g} s windows, so "
            f"{1 - facts['seconds'] / facts['window_s']:.0%} of its input is padding: the genres are unreliable"
        )
    return found


# ── Evaluation: accuracy, per-genre scores, confusion matrix, the comparison with the report, cross-validation ──

REPORT_VAL_ACCURACY = 0.555  # the report's validation accuracy on FMA-small (800 clips, 8 genres)
REPORT_VAL_CLIPS = 800  # size of FMA-small's validation split


@dataclass
class Scores:
    """How well predictions match the true genres of one split.

    accuracy: share of clips whose most probable genre is the true one. per_genre: DataFrame indexed
    by genre with columns precision, recall, f1 (0-1) and support (clips). confusion: counts, rows =
    true genre, columns = predicted genre; confusion_normalized: the same divided by each row's total
    (a row sums to 1, or 0 for a genre without clips). predictions: one row per clip (track_id, genre,
    predicted, confidence, correct) when built by `evaluate`, else None.
    """

    accuracy: float
    per_genre: pd.DataFrame
    confusion: pd.DataFrame
    confusion_normalized: pd.DataFrame
    predictions: pd.DataFrame | None = None

    @property
    def macro_f1(self) -> float:
        """Unweighted mean of the per-genre F1 scores."""
        return float(self.per_genre["f1"].mean())

    @property
    def n_clips(self) -> int:
        """Number of clips scored."""
        return int(self.per_genre["support"].sum())


def classification_scores(y_true, proba, genres=GENRES) -> Scores:
    """Accuracy, per-genre precision/recall/F1 and confusion matrix of predicted probabilities.

    y_true: (n,) integer labels, positions in `genres`; proba: (n, len(genres)) class probabilities
    (or any scores; the arg-max is the prediction). Returns a `Scores` without per-clip predictions.
    Raises GenreError for mismatched shapes, labels out of range or non-finite probabilities.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    genres = list(genres)
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] != len(genres):
        raise GenreError(
            f"probabilities have shape {proba.shape}; expected (n_clips, {len(genres)}) for {len(genres)} genres"
        )
    if y_true.ndim != 1 or len(y_true) != len(proba):
        raise GenreError(f"{y_true.shape} labels for {len(proba)} rows of probabilities; expected one label per row")
    if len(y_true) == 0:
        raise GenreError("no clips to score (empty labels and probabilities)")
    if not np.issubdtype(y_true.dtype, np.integer) or y_true.min() < 0 or y_true.max() >= len(genres):
        raise GenreError(
            f"labels must be integers in 0..{len(genres) - 1} (positions in genres); got {np.unique(y_true)[:10]}"
        )
    if not np.all(np.isfinite(proba)):
        raise GenreError("probabilities contain NaN or infinite values")

    y_pred = proba.argmax(axis=1)
    labels = np.arange(len(genres))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_genre = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support},
        index=pd.Index(genres, name="genre"),
    )
    axes = {"index": pd.Index(genres, name="true"), "columns": pd.Index(genres, name="predicted")}
    return Scores(
        accuracy=float(accuracy_score(y_true, y_pred)),
        per_genre=per_genre,
        confusion=pd.DataFrame(confusion_matrix(y_true, y_pred, labels=labels), **axes),
        confusion_normalized=pd.DataFrame(confusion_matrix(y_true, y_pred, labels=labels, normalize="true"), **axes),
    )


def evaluate(model, features: Features, cfg: Config, split: str = "validation") -> Scores:
    """Scores of `model` on one `split` (one of SPLITS) of `features`: notebook 05's scikit-learn calls
    (`classification_scores`) on `predict_proba`'s predictions, the clips predicted as cfg (the run's
    settings) says, with their input normalised as in training.

    Returns a `Scores`: accuracy, per-genre scores, confusion matrices, and `Scores.predictions`, one row
    per clip with track_id, genre (true), predicted, confidence (probability of the predicted genre, 0-1)
    and correct. Raises GenreError for an unknown split, DataError when the split has no clips.
    """
    if split not in SPLITS:
        raise GenreError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    rows = features.rows(split)
    if len(rows) == 0:
        where = features.path or "the features in memory"
        raise DataError(f"{where}: no clips in the {split!r} split to evaluate")
    proba = np.asarray(predict_proba(model, features, rows, cfg))
    index = features.index.iloc[rows]
    scores = classification_scores(index["label"].to_numpy(), proba, cfg.genres)
    predicted = proba.argmax(axis=1)
    scores.predictions = pd.DataFrame(
        {
            "track_id": index.index.to_numpy(),
            "genre": index["genre"].to_numpy(),
            "predicted": np.asarray(cfg.genres)[predicted],
            "confidence": proba[np.arange(len(rows)), predicted],
        }
    )
    scores.predictions["correct"] = scores.predictions["genre"] == scores.predictions["predicted"]
    return scores


def most_confused_pairs(confusion, genres=None, k: int = 5) -> pd.DataFrame:
    """The `k` most frequent mistakes: which true genre was most often predicted as which other.

    confusion: (n_genres, n_genres) counts, rows = true genre, columns = predicted (an array, or the
    DataFrame of `Scores.confusion`, whose index supplies `genres` when not given). Pairs are
    directed (Rock predicted as Pop is not Pop predicted as Rock). Returns a DataFrame with columns
    true, predicted, clips and share (of the true genre's clips), most clips first; pairs never
    confused are left out. Raises GenreError for a non-square matrix or wrong number of genres.
    """
    if genres is None:
        if not isinstance(confusion, pd.DataFrame):
            raise GenreError("most_confused_pairs needs `genres` when the confusion matrix is a plain array")
        genres = confusion.index
    counts = np.asarray(confusion)
    genres = list(genres)
    if counts.ndim != 2 or counts.shape != (len(genres), len(genres)):
        raise GenreError(
            f"confusion matrix has shape {counts.shape}; expected ({len(genres)}, {len(genres)}) "
            f"for {len(genres)} genres"
        )
    pairs = (
        pd.DataFrame(counts, index=pd.Index(genres, name="true"), columns=pd.Index(genres, name="predicted"))
        .stack()
        .rename("clips")
        .reset_index()
    )
    row_totals = pairs.groupby("true")["clips"].transform("sum")
    pairs["share"] = pairs["clips"] / row_totals.where(row_totals > 0)
    mistakes = pairs[(pairs["true"] != pairs["predicted"]) & (pairs["clips"] > 0)]
    return mistakes.sort_values(["clips", "share"], ascending=False, kind="stable").head(k).reset_index(drop=True)


def describe_dataset(cfg: Config) -> str:
    """One line saying which data a run with `cfg` used, to label results honestly.

    The synthetic demo (the `demo` preset's data root) is named as such and "not FMA"; a root with
    fma_metadata/ is FMA of cfg.subset; anything else is a folder-per-genre dataset named by its folder.
    """
    root = Path(cfg.data_root).resolve()
    if root == PRESETS["demo"].data_root.resolve():
        return f"synthetic demo set ({cfg.clip_seconds:g} s clips), not FMA"
    if (root / "fma_metadata").is_dir():
        return f"FMA-{cfg.subset} ({cfg.clip_seconds:g} s clips)"
    return f"folder-per-genre dataset '{root.name}' ({cfg.clip_seconds:g} s clips)"


def compare_with_report(scores: dict[str, Scores], cfg: Config, run_name: str) -> pd.DataFrame:
    """A table putting a run's results next to the report's 0.555 validation accuracy.

    scores: Scores per split name (e.g. {"validation": ..., "test": ...}); cfg: the run's Config (for
    the dataset description). Returns a DataFrame indexed by a readable label with columns run,
    dataset, split, clips, accuracy and macro_f1 (NaN where the report gives none); first row = report.
    """
    rows = [
        {
            "result": "report (validation)",
            "run": "report",
            "dataset": "FMA-small (30 s clips)",
            "split": "validation",
            "clips": REPORT_VAL_CLIPS,
            "accuracy": REPORT_VAL_ACCURACY,
            "macro_f1": np.nan,
        }
    ]
    for split, split_scores in scores.items():
        rows.append(
            {
                "result": f"{run_name} ({split})",
                "run": run_name,
                "dataset": describe_dataset(cfg),
                "split": split,
                "clips": split_scores.n_clips,
                "accuracy": split_scores.accuracy,
                "macro_f1": split_scores.macro_f1,
            }
        )
    return pd.DataFrame(rows).set_index("result")


# Cross-validation: every method on the same stratified folds, through one small interface

CV_COLUMNS = ("method", "accuracy_mean", "accuracy_se", "accuracy_min", "macro_f1", "train_seconds", "parameters")
CV_FORMAT = 2  # version of the fold records cross_validate writes; bump it to invalidate old ones (2: data keys)


@dataclass
class MethodResult:
    """What one method returns for one fold."""

    proba: pd.DataFrame  # genre probabilities, index: the fold's test track_ids, columns: cfg.genres
    parameters: int  # numbers the fitted method stores (weights, support vectors, ...)
    train_seconds: float  # wall time of fitting (not of feature extraction)


@dataclass
class CrossValidation:
    """The result of `cross_validate`.

    summary: one row per method (in the order given) with CV_COLUMNS: accuracy_mean, its standard
    error over all folds of all repeats (accuracy_se), the worst fold (accuracy_min), macro_f1 (mean
    over folds), train_seconds (mean per fold) and parameters (mean per fold). folds: one row per
    method, repeat and fold (method, repeat, fold, clips, accuracy, macro_f1, train_seconds,
    parameters). proba: per method, the test probabilities of every fold of the first repeat together
    (each clip once), indexed by track_id. assignment: `cross_validation_folds` output of each repeat,
    columns (repeat, fold).
    """

    summary: pd.DataFrame
    folds: pd.DataFrame
    proba: dict[str, pd.DataFrame]
    assignment: pd.DataFrame


def _genre_labels(labels) -> pd.Series:
    """Genre per track_id from a Series or a tracks table with a genre column; GenreError otherwise."""
    if isinstance(labels, pd.DataFrame):
        if "genre" not in labels.columns:
            raise GenreError("the tracks table has no genre column; pass load_tracks output or a Series of genres")
        labels = labels["genre"]
    labels = pd.Series(labels)
    if labels.index.has_duplicates:
        duplicates = labels.index[labels.index.duplicated()][:5].tolist()
        raise GenreError(f"duplicate track ids in the labels, e.g. {duplicates}")
    if labels.isna().any():
        raise GenreError(f"{int(labels.isna().sum())} track(s) without a genre")
    return labels


def cross_validation_folds(labels, folds: int = 5, seed: int = 42, validation: float = 0.1) -> pd.DataFrame:
    """Stratified k-fold assignment of clips: which are training, validation and test in each fold.

    labels: genre per clip (a Series indexed by track_id, or a tracks table with a genre column).
    scikit-learn's StratifiedKFold (shuffled, seeded by `seed`) makes `folds` disjoint test sets
    covering every clip once with the genres' proportions; from each fold's other clips a stratified
    `validation` share of all clips (at least one per genre) becomes the validation split, for
    checkpoint choice and early stopping; the rest is training. Same labels and seed, same folds.
    Returns a DataFrame indexed by track_id with one column per fold (0 .. folds-1) of
    'training'/'validation'/'test'. Raises GenreError when a genre has fewer clips than `folds`, or
    `folds`/`validation` are out of range.
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split

    labels = _genre_labels(labels)
    if not isinstance(folds, (int, np.integer)) or folds < 2:
        raise GenreError(f"folds={folds!r}: need an integer of at least 2")
    if not 0 < validation < 1 - 1 / folds:
        raise GenreError(f"validation={validation!r}: need a share of the clips between 0 and {1 - 1 / folds:.2f}")
    counts = labels.value_counts()
    if counts.min() < folds:
        raise GenreError(
            f"folds={folds}: every genre needs at least {folds} clips, but {counts.idxmin()!r} has "
            f"{counts.min()}; use fewer folds"
        )
    y = labels.to_numpy().astype(str)
    n_validation = max(len(counts), int(round(validation * len(labels))))
    assignment = pd.DataFrame(index=labels.index, columns=pd.RangeIndex(folds, name="fold"), dtype=object)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (rest, test) in enumerate(splitter.split(np.zeros(len(y)), y)):
        fit, held = train_test_split(rest, test_size=n_validation, stratify=y[rest], random_state=seed + fold)
        column = np.empty(len(y), dtype=object)
        column[fit], column[held], column[test] = "training", "validation", "test"
        assignment[fold] = column
    return assignment


def cross_validate(
    methods: dict,
    labels,
    cfg: Config,
    folds: int = 5,
    seed: int = 42,
    out_dir: str | os.PathLike | None = None,
    validation: float = 0.1,
    progress: bool = True,
    max_folds: int | None = None,
    repeats: int = 1,
) -> CrossValidation:
    """Run every method on every fold of `cross_validation_folds(labels, folds, seed + r, validation)`, r < repeats.

    After each method's first fold it prints how long all its folds should take.

    Parameters
    ----------
    methods : dict[str, callable]
        name -> method, where a method is `method(split, run_dir) -> MethodResult`: `split` is a Series
        indexed by track_id (every clip of `labels`) of 'training'/'validation'/'test', `run_dir` a
        folder for its files. Build them with `cnn_method`, `baseline_method`, `embedding_method`, or
        write your own; a method's `settings` attribute (a dict) says what it was built from, its data
        included, and keys its saved folds.
    labels : pd.Series or pd.DataFrame
        Genre per track_id (names in cfg.genres), or a tracks table with a genre column.
    cfg : Config
        Gives the genres (columns of the probabilities) and names the dataset (cfg.data_root).
    folds, seed, validation
        As for `cross_validation_folds`.
    out_dir : path, optional
        Where each fold's result is kept (default cfg.runs_dir / "cross-validation").
    progress : bool
        Show a progress bar.
    max_folds : int, optional
        Run only the first `max_folds` folds of each `folds`-fold split (quick screening, scored on
        those folds only); default all.
    repeats : int
        Repeated cross-validation: the whole k-fold split is drawn `repeats` times, with fold seeds
        seed, seed + 1, ...; every method runs on every fold of every repeat. More repeats make the
        mean and the worst fold less a matter of one split of one small set.

    Returns
    -------
    CrossValidation
        summary (one row per method, CV_COLUMNS), folds (per repeat and fold), pooled test
        probabilities (first repeat), assignment.

    Writes
    ------
    `out_dir/folds.csv` (the assignment), `out_dir/run.json` (settings, the dataset, package
    versions), and per method, repeat and fold `out_dir/<method>/repeat-<r>/fold-<k>/` (the method's
    own files, proba.csv and result.json, written atomically). A fold is read back instead of rerun
    only when its result.json records the same CV_FORMAT, method settings (data keys included), labels
    and split, so an interrupted cross-validation resumes and anything changed reruns. While a fold
    runs, its process holds `fold-<k>.lock`: a second process given the same out_dir runs the other
    folds meanwhile and reads that one back, so two processes share the work (the CNN's training
    keeps about 1.4 of two cores busy, so a second process fills the rest).

    Raises
    ------
    GenreError
        For labels outside cfg.genres, bad folds or repeats, an `out_dir` holding another dataset's
        results (naming both), or a method whose probabilities miss test clips, have other columns or
        hold NaN; and whatever a method raises.
    """
    from importlib.metadata import version

    from sklearn.metrics import f1_score
    from tqdm.auto import tqdm

    labels = _genre_labels(labels)
    unknown = sorted(set(labels) - set(cfg.genres), key=str)
    if unknown:
        raise GenreError(f"genre(s) {unknown} not in cfg.genres {list(cfg.genres)}")
    if not methods:
        raise GenreError("no methods to cross-validate")
    if not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise GenreError(f"repeats={repeats!r}: need an integer of at least 1")
    assignment = pd.concat(
        {r: cross_validation_folds(labels, folds, seed + r, validation) for r in range(repeats)},
        axis=1,
        names=["repeat", "fold"],
    )
    out_dir = Path(out_dir if out_dir is not None else Path(cfg.runs_dir) / "cross-validation")
    dataset = {"data_root": str(cfg.data_root), "clips": len(labels), "labels": _fingerprint(labels.sort_index())}
    _check_same_dataset(out_dir, dataset)
    with _writing_to(out_dir, GenreError, "out_dir"):
        out_dir.mkdir(parents=True, exist_ok=True)
        with _atomic_path(out_dir / "folds.csv") as tmp:
            assignment.to_csv(tmp)
        packages = ("numpy", "pandas", "scikit-learn", "librosa", "keras")
        _write_json(
            out_dir / "run.json",
            {
                "dataset": dataset,
                "config": cfg.to_dict(),
                "folds": folds,
                "repeats": repeats,
                "seed": seed,
                "validation": validation,
                "methods": {name: getattr(method, "settings", None) for name, method in methods.items()},
                "python": platform.python_version(),
                "versions": {name: version(name) for name in packages},
            },
        )
    codes = {genre: k for k, genre in enumerate(cfg.genres)}
    n_run = folds if max_folds is None else max(1, min(folds, int(max_folds)))
    tasks = list(itertools.product(methods, range(repeats), range(n_run)))
    results, expected = {}, {}  # expected: each method's duration, said after its first fold
    bar = tqdm(total=len(tasks), desc="cross-validation", unit="fold", disable=not progress)
    with bar:
        # first every fold no other process is running (each fold holds a lock while it runs, so two
        # identical commands on one out_dir share the folds), then wait for those others ran
        for wait in (False, True):
            for name, repeat, fold in (task for task in tasks if task not in results):
                bar.set_postfix_str(f"{name}, repeat {repeat + 1}/{repeats}, fold {fold + 1}/{n_run}")
                fold_dir = out_dir / _safe_name(name) / f"repeat-{repeat}" / f"fold-{fold}"
                with _writing_to(out_dir, GenreError, "out_dir"):
                    fold_dir.parent.mkdir(parents=True, exist_ok=True)
                with _exclusive(fold_dir.with_suffix(".lock"), wait=wait) as mine:
                    if mine:
                        what = f"cross-validation of {name}"
                        estimate = expected.setdefault(
                            name, _ExpectedDuration(what, repeats * n_run, "fold", 1, bar.write)
                        )
                        split = assignment[(repeat, fold)].rename("split")
                        results[name, repeat, fold] = _fold_result(name, methods[name], split, labels, fold_dir, cfg)
                        bar.update()
                        estimate.update()
    rows = []
    for name, repeat, fold in tasks:
        result = results[name, repeat, fold]
        y_true = labels[result.proba.index].map(codes).to_numpy()
        y_pred = result.proba.to_numpy().argmax(axis=1)
        rows.append(
            {
                "method": name,
                "repeat": repeat,
                "fold": fold,
                "clips": len(y_true),
                "accuracy": float((y_true == y_pred).mean()),
                "macro_f1": float(
                    f1_score(y_true, y_pred, labels=range(len(cfg.genres)), average="macro", zero_division=0)
                ),
                "train_seconds": result.train_seconds,
                "parameters": result.parameters,
            }
        )
    pooled = {name: pd.concat([results[name, 0, fold].proba for fold in range(n_run)]).sort_index() for name in methods}
    per_fold = pd.DataFrame(rows)
    summary = (
        per_fold.groupby("method", sort=False)
        .agg(
            accuracy_mean=("accuracy", "mean"),
            accuracy_se=("accuracy", lambda a: a.std(ddof=1) / np.sqrt(len(a))),
            accuracy_min=("accuracy", "min"),
            macro_f1=("macro_f1", "mean"),
            train_seconds=("train_seconds", "mean"),
            parameters=("parameters", "mean"),
        )
        .reset_index()
    )
    summary["parameters"] = summary["parameters"].round().astype(int)
    return CrossValidation(summary[list(CV_COLUMNS)], per_fold, pooled, assignment)


def _check_same_dataset(out_dir: Path, dataset: dict) -> None:
    """GenreError when `out_dir` already holds the cross-validation of another dataset (its run.json
    names another data root): its folds must never pass for this dataset's. Within one dataset,
    changed files or labels rerun the folds they touch (see `_fold_result`)."""
    try:
        earlier = json.loads((out_dir / "run.json").read_text()).get("dataset") or {}
    except (OSError, ValueError):
        return  # nothing there yet (or no readable record): every fold is checked on its own
    if earlier.get("data_root", dataset["data_root"]) != dataset["data_root"]:
        raise GenreError(
            f"{out_dir}: holds the cross-validation of another dataset ({earlier['data_root']}, "
            f"{earlier.get('clips')} clips); this one is {dataset['data_root']} ({dataset['clips']} clips). "
            f"Use another out_dir for it, or delete {out_dir}"
        )


def _safe_name(name: str) -> str:
    """A method name as a folder name: letters, digits, '-', '_' and '.' kept, the rest '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def _fold_result(name: str, method, split: pd.Series, labels: pd.Series, fold_dir: Path, cfg: Config) -> MethodResult:
    """One method on one fold: read back from `fold_dir` when finished there from the same inputs, else run.

    The record keys the result on everything that produced it: the record format, the method's
    settings (which name its data: `Features.fingerprint`, or the hash of its statistics or
    embeddings), the labels and the whole split of the fold.
    """
    test_ids = sorted(int(t) for t in split.index[split == "test"])
    record = {
        "format": CV_FORMAT,
        "settings": json.loads(json.dumps(getattr(method, "settings", None), default=str)),
        "labels": _fingerprint(labels.sort_index()),
        "split": _fingerprint(split.sort_index()),
        "test": test_ids,
    }
    done = fold_dir / "result.json"
    if done.is_file() and (fold_dir / "proba.csv").is_file():
        saved = json.loads(done.read_text())
        if {key: saved.get(key) for key in record} == record:
            proba = pd.read_csv(fold_dir / "proba.csv", index_col="track_id")
            return MethodResult(proba, int(saved["parameters"]), float(saved["train_seconds"]))
    with _writing_to(fold_dir, GenreError, "out_dir"):
        fold_dir.mkdir(parents=True, exist_ok=True)
    result = method(split, fold_dir)
    if not isinstance(result, MethodResult):
        raise GenreError(f"method {name!r} returned {type(result).__name__}, expected a MethodResult")
    proba = result.proba
    missing = sorted(set(test_ids) - set(proba.index))
    if missing or len(proba) != len(test_ids):
        raise GenreError(
            f"method {name!r}: probabilities for {len(proba)} clips, but the fold's test split has "
            f"{len(test_ids)} (missing e.g. {missing[:5]}); return one row per test clip"
        )
    if sorted(map(str, proba.columns)) != sorted(cfg.genres):
        raise GenreError(
            f"method {name!r}: probability columns {list(proba.columns)}, expected cfg.genres {list(cfg.genres)}"
        )
    proba = proba.loc[test_ids, list(cfg.genres)].astype(np.float64)
    proba.index.name = "track_id"
    if not np.all(np.isfinite(proba.to_numpy())):
        raise GenreError(f"method {name!r}: probabilities hold NaN or infinite values")
    with _writing_to(fold_dir, GenreError, "out_dir"):
        with _atomic_path(fold_dir / "proba.csv") as tmp:
            proba.to_csv(tmp)
        _write_json(
            done, {**record, "parameters": int(result.parameters), "train_seconds": float(result.train_seconds)}
        )
    # as later runs will read it back, to the last digit
    proba = pd.read_csv(fold_dir / "proba.csv", index_col="track_id")
    return MethodResult(proba, int(result.parameters), float(result.train_seconds))


# ── Interpretation: what the trained CNN attends to (Grad-CAM, occlusion) and how its clips cluster ──

OCCLUSION_KINDS = ("mel", "cqt", "time")  # what `occlusion` masks: mel bands, CQT octaves, or seconds of both
MEL_BANDS = 8  # bands of equal width on the mel axis that `occlusion` masks in the mel input, one at a time


def _model_branches(model) -> list[str]:
    """The branches (MODEL_BLOCKS order) a `build_model` model has."""
    names = {layer.name for layer in model.layers}
    return [branch for branch in MODEL_BLOCKS if f"{branch}_global_pool" in names]


def last_block(model, branch: str) -> str:
    """Name of the layer `grad_cam` looks at in `branch` of a `build_model` model: the ReLU of its last
    convolution block (e.g. "cqt_block7_relu"), whose rectified feature maps are what Grad-CAM weighs.
    Raises ConfigError naming the model's branches for a branch it does not have."""
    blocks = [
        int(match.group(1))
        for layer in model.layers
        if (match := re.fullmatch(rf"{re.escape(branch)}_block(\d+)_relu", layer.name))
    ]
    if branch not in _model_branches(model) or not blocks:
        raise ConfigError(
            f"model {model.name}: no branch {branch!r}; it has {', '.join(_model_branches(model)) or 'none'} "
            f"(of {', '.join(MODEL_BLOCKS)})"
        )
    return f"{branch}_block{max(blocks)}_relu"


def _block_strides(model, name: str) -> tuple[int, int]:
    """(bins, frames) of the input that one position of layer `name` (`<branch>_block<b>_<role>`) covers:
    the product of the pools of the blocks before block b."""
    branch, block = re.fullmatch(r"(.+)_block(\d+)_\w+", name).groups()
    strides = np.ones(2, dtype=np.int64)
    for layer in model.layers:
        match = re.fullmatch(rf"{re.escape(branch)}_block(\d+)_pool", layer.name)
        if match and int(match.group(1)) < int(block):
            strides *= np.asarray(layer.pool_size, dtype=np.int64)
    return int(strides[0]), int(strides[1])


def _upsampling_matrix(size: int, cells: int, stride: int) -> np.ndarray:
    """(size, cells) weights of linear interpolation from `cells` grid cells, each covering `stride`
    input positions (the last one cut short by "same" pooling), onto the `size` input positions; each
    row is non-negative and sums to 1.

    >>> _upsampling_matrix(5, 2, 4).round(2).tolist()
    [[1.0, 0.0], [1.0, 0.0], [0.8, 0.2], [0.4, 0.6], [0.0, 1.0]]
    """
    starts = np.arange(cells) * stride
    centres = (starts + np.minimum(starts + stride, size) - 1) / 2
    return np.stack([np.interp(np.arange(size), centres, column) for column in np.eye(cells)], axis=1)


def _class_score_gradients(head, kernel, bias, activations, classes: np.ndarray, fixed=()) -> list[np.ndarray]:
    """Gradient of each clip's score of its class (the logit of classes[i], before the softmax) with respect
    to each of `activations` (the first inputs of `head`; its other inputs, `fixed`, are held constant),
    with the autodiff of the Keras backend in use."""
    keras = import_keras()
    ops = keras.ops
    one_hot = np.eye(kernel.shape[1], dtype=np.float32)[classes]

    def score(*tensors):  # clips do not interact at inference, so the gradient of the sum is each clip's own
        hidden = ops.cast(head([*tensors, *fixed], training=False), "float32")
        return ops.sum((ops.matmul(hidden, kernel) + bias) * one_hot)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.convert_to_tensor(a) for a in activations]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = score(*tensors)
        gradients = tape.gradient(value, tensors)
    elif backend == "jax":  # written for completeness, not run by the tests (their environment has no JAX)
        import jax

        gradients = jax.grad(score, argnums=tuple(range(len(activations))))(*activations)
    elif backend == "torch":  # written for completeness, not run by the tests (their environment has no torch)
        import torch

        tensors = [a.detach().requires_grad_(True) for a in activations]
        gradients = torch.autograd.grad(score(*tensors), tensors)
    else:
        raise ConfigError(
            f"grad_cam: the Keras backend {backend!r} has no gradients here; use tensorflow, jax or torch"
        )
    return [np.asarray(ops.convert_to_numpy(g), dtype=np.float32) for g in gradients]


def grad_cam(model, data: Features, rows, cfg: Config, classes=None, branches=None) -> dict[str, np.ndarray]:
    """Grad-CAM saliency of each branch's last convolution block, at the scale of the input it reads.

    A branch's map for clip i is ReLU(sum_k w_k A_k): A_k is channel k of the rectified output of the
    block's convolution (`last_block`), w_k the mean over its positions of the gradient of the score of
    class classes[i] (its logit, before the softmax) with respect to A_k. The map is then interpolated
    linearly from the block's coarse grid (each cell covers the bins and frames its pools merged) onto
    the input's bins and frames, so it can be drawn over the mel-spectrogram or the CQT. The gradients
    come from the backend in use (TensorFlow's GradientTape, jax.grad or torch.autograd). Clips are read
    whole, a batch at a time (`feature_batches`).

    Parameters
    ----------
    model : keras.Model
        A `build_model` model, e.g. from `load_run`.
    data : Features
        Features extracted with `cfg`.
    rows : array of int
        Rows of `data` to explain.
    cfg : Config
        The run's settings.
    classes : array of int, optional
        The class to explain per row (positions in cfg.genres), default the true genres; pass the
        predicted ones to see what made the network choose.
    branches : sequence of str, optional
        Default all of the model's branches.

    Returns
    -------
    dict of str to np.ndarray
        {branch: float32 (len(rows), bins, frames)}, non-negative; bins are those of the branch's input.

    Raises
    ------
    ConfigError
        For a branch the model lacks, or a model that does not fit `cfg`.
    GenreError
        For classes that are not one class per row in 0..len(cfg.genres) - 1.

    References
    ----------
    R. R. Selvaraju, M. Cogswell, A. Das, R. Vedantam, D. Parikh and D. Batra, "Grad-CAM: visual explanations
    from deep networks via gradient-based localization", ICCV 2017.
    """
    keras = import_keras()
    rows = np.asarray(rows, dtype=np.int64)
    branches = list(_model_branches(model) if branches is None else branches)
    names = [last_block(model, branch) for branch in branches]  # raises for unknown branches
    classes = data.index["label"].to_numpy()[rows] if classes is None else np.asarray(classes)
    if classes.shape != rows.shape or not np.issubdtype(classes.dtype, np.integer):
        raise GenreError(f"grad_cam: classes must be one integer per row ({len(rows)}); got shape {classes.shape}")
    if len(classes) and (classes.min() < 0 or classes.max() >= len(cfg.genres)):
        raise GenreError(f"grad_cam: classes must lie in 0..{len(cfg.genres) - 1} (positions in cfg.genres)")
    blocks = [model.get_layer(name).output for name in names]
    body = keras.Model(model.inputs, blocks)
    # the layers between the blocks and the softmax; a fused model's dense head reads its embedding input too
    fused = [tensor for tensor in model.inputs if tensor.name == "embedding"]
    head = keras.Model([*blocks, *fused], model.get_layer("genre").input)
    genre = model.get_layer("genre")
    kernel, bias = (keras.ops.cast(w, "float32") for w in (genre.kernel, genre.bias))
    inputs = _model_inputs(model, cfg)
    maps = {branch: [] for branch in branches}
    batches, done = feature_batches(data, rows, cfg, inputs), 0
    for i in range(len(batches)):
        x, _ = batches[i]
        batch_classes = classes[done : done + len(x[inputs[0]])]
        done += len(batch_classes)
        activations = body(x, training=False)
        activations = activations if isinstance(activations, (list, tuple)) else [activations]
        fixed = [keras.ops.convert_to_tensor(x["embedding"])] if fused else []
        gradients = _class_score_gradients(head, kernel, bias, activations, batch_classes, fixed)
        for branch, activation, gradient in zip(branches, activations, gradients):
            activation = np.asarray(keras.ops.convert_to_numpy(activation), dtype=np.float32)
            weights = gradient.mean(axis=(1, 2))  # (clips, channels)
            cam = np.maximum(np.einsum("nhwc,nc->nhw", activation, weights), 0.0)
            source = x[BRANCH_INPUTS[branch]]
            stride_bins, stride_frames = _block_strides(model, last_block(model, branch))
            up_bins = _upsampling_matrix(source.shape[1], cam.shape[1], stride_bins)
            up_frames = _upsampling_matrix(source.shape[2], cam.shape[2], stride_frames)
            maps[branch].append(np.einsum("bh,nhw,fw->nbf", up_bins, cam, up_frames).astype(np.float32))
    return {
        branch: np.concatenate(parts) if parts else np.zeros((0, 0, 0), np.float32) for branch, parts in maps.items()
    }


def occlusion_regions(cfg: Config, kind: str = "mel") -> pd.DataFrame:
    """The regions `occlusion` masks one at a time, indexed by label.

    kind "mel": MEL_BANDS bands of equal width on the mel axis (as many mel bins each, so as much of the
    input is masked; their edges in Hz lie halfway between bin centres); "cqt": the CQT's octaves (e.g.
    "C1-B1"); "time": one-second spans of a clip (the last one shorter when the clip is). Columns start and stop
    (bins, or frames for "time"; stop excluded), low and high (Hz, or s). Raises ConfigError for an
    unknown kind.

    >>> occlusion_regions(get_config("demo"), "cqt").index.tolist()
    ['C1-B1', 'C2-B2', 'C3-B3', 'C4-B4', 'C5-B5', 'C6-B6', 'C7-B7']
    """
    import librosa

    rows = []
    if kind == "mel":
        centres = librosa.mel_frequencies(n_mels=cfg.n_mels + 2, fmax=cfg.sample_rate / 2)[1:-1]
        edges = np.concatenate([[0.0], (centres[1:] + centres[:-1]) / 2, [cfg.sample_rate / 2]])  # Hz between bins
        bounds = np.unique(np.round(np.linspace(0, cfg.n_mels, min(MEL_BANDS, cfg.n_mels) + 1)).astype(int))
        for start, stop in itertools.pairwise(bounds):
            low, high = edges[start], edges[stop]
            label = f"{low:.0f}-{high:.0f} Hz" if high < 1000 else f"{low / 1000:.1f}-{high / 1000:.1f} kHz"
            rows.append((label, start, stop, low, high))
    elif kind == "cqt":
        per_octave = cfg.cqt_bins_per_octave
        for start in range(0, cfg.cqt_bins, per_octave):
            stop = min(start + per_octave, cfg.cqt_bins)
            low, high = (cfg.cqt_fmin * 2 ** (b / per_octave) for b in (start, stop))
            notes = librosa.hz_to_note([low, cfg.cqt_fmin * 2 ** ((stop - 1) / per_octave)], unicode=False)
            rows.append(("-".join(notes), start, stop, low, high))
    elif kind == "time":
        frames_per_second = cfg.sample_rate / cfg.hop_length
        seconds = int(np.ceil(cfg.clip_seconds))
        for second in range(seconds):
            start, stop = round(second * frames_per_second), round((second + 1) * frames_per_second)
            stop = cfg.n_frames if second == seconds - 1 else stop  # the last frame (librosa centres frames)
            end = min(second + 1, cfg.clip_seconds)
            rows.append((f"{second:g}-{end:g} s", start, stop, float(second), float(end)))
    else:
        raise ConfigError(f"occlusion kind {kind!r}: choose one of {', '.join(OCCLUSION_KINDS)}")
    table = pd.DataFrame(rows, columns=["region", "start", "stop", "low", "high"]).set_index("region")
    return table.astype({"start": np.int64, "stop": np.int64})


def occlusion(model, data: Features, rows, cfg: Config, kind: str = "mel", classes=None) -> pd.DataFrame:
    """How much each clip's probability of its class drops when one region of its input is masked.

    Every region of `occlusion_regions(cfg, kind)` is masked in turn: a band of the mel input ("mel"), an
    octave of the CQT ("cqt"), or one second of every input ("time"). Masked bins get the band's
    training mean (the model's `<input>_normalization` statistics), so the network sees 0 there after
    normalisation, as SpecAugment masks. A large drop means the network needs that region to hear the genre.

    Parameters
    ----------
    model, data, rows, cfg
        As for `grad_cam`.
    kind : str
        One of OCCLUSION_KINDS.
    classes : array of int, optional
        The class whose probability is watched per row, default the true genres.

    Returns
    -------
    pd.DataFrame
        Indexed by track_id, one column per region: the probability of the class on the whole clip minus
        that with the region masked (in -1..1); attrs["probability"] holds the unmasked probabilities.

    Raises
    ------
    ConfigError
        For an unknown kind, or "mel" / "cqt" for a model without that input.
    """
    keras = import_keras()
    regions = occlusion_regions(cfg, kind)
    inputs = _model_inputs(model, cfg)
    masked_inputs = inputs if kind == "time" else [kind]
    if kind != "time" and kind not in inputs:
        raise ConfigError(f"model {model.name}: no {kind!r} input to occlude; it reads {', '.join(inputs)}")
    means = {
        name: keras.ops.convert_to_numpy(model.get_layer(f"{name}_normalization").adapt_mean).astype(np.float16)
        for name in masked_inputs
    }
    rows = np.asarray(rows, dtype=np.int64)
    classes = data.index["label"].to_numpy()[rows] if classes is None else np.asarray(classes)
    batches, done, drops, base = feature_batches(data, rows, cfg, inputs), 0, [], []
    size = micro_batch_size(cfg)
    for i in range(len(batches)):
        x, _ = batches[i]
        n = len(x[inputs[0]])
        variants = {name: [x[name]] for name in inputs}
        for start, stop in regions[["start", "stop"]].itertuples(index=False):
            for name in inputs:
                version = x[name].copy()
                if name in masked_inputs and kind == "time":
                    version[:, :, start:stop, 0] = means[name][None, :, None]
                elif name in masked_inputs:
                    version[:, start:stop, :, 0] = means[name][None, start:stop, None]
                variants[name].append(version)
        stacked = {name: np.concatenate(versions) for name, versions in variants.items()}
        proba = np.concatenate(  # called eagerly: `predict` sets up more than these few batches take
            [
                keras.ops.convert_to_numpy(model({k: v[at : at + size] for k, v in stacked.items()}, training=False))
                for at in range(0, len(stacked[inputs[0]]), size)
            ]
        ).astype(np.float32)
        proba = proba.reshape(len(regions) + 1, n, -1)[:, np.arange(n), classes[done : done + n]]  # (1 + R, n)
        done += n
        base.append(proba[0])
        drops.append((proba[0] - proba[1:]).T)
    index = data.index.index[rows]
    table = pd.DataFrame(
        np.concatenate(drops) if drops else np.zeros((0, len(regions))), index=index, columns=regions.index
    )
    table.attrs["probability"] = pd.Series(np.concatenate(base) if base else [], index=index, dtype=np.float32)
    return table


def region_saliency(maps: dict[str, np.ndarray], cfg: Config, kind: str = "mel", index=None) -> pd.DataFrame:
    """Mean Grad-CAM saliency of each clip in each region of `occlusion_regions(cfg, kind)`, so that it
    can be set against `occlusion`: for "mel" the maps of the branches that read the mel input, for "cqt"
    the CQT branch's, for "time" every branch's, each scaled to a maximum of 1 per clip before they are
    averaged. `maps` is `grad_cam`'s result; `index` names the clips (default 0..n-1). Raises ConfigError
    when `maps` holds no branch that reads the input of `kind`."""
    regions = occlusion_regions(cfg, kind)
    chosen = [b for b in maps if kind == "time" or BRANCH_INPUTS.get(b) == kind]
    if not chosen:
        raise ConfigError(f"region_saliency: no map of a branch reading the {kind!r} input among {', '.join(maps)}")
    scaled = []
    for branch in chosen:
        peak = maps[branch].max(axis=(1, 2), keepdims=True)
        scaled.append(maps[branch] / np.where(peak > 0, peak, 1.0))
    axis = 2 if kind == "time" else 1  # the axis the regions cut: frames or bins
    means = [
        np.mean([s.take(np.arange(start, stop), axis=axis).mean(axis=(1, 2)) for s in scaled], axis=0)
        for start, stop in regions[["start", "stop"]].itertuples(index=False)
    ]
    return pd.DataFrame(np.stack(means, axis=1), index=index, columns=regions.index)


def saliency_profile(maps: dict[str, np.ndarray], cfg: Config) -> pd.DataFrame:
    """What each branch attends to, over the clips of `grad_cam`'s `maps`, one row per branch.

    Columns: input (mel or cqt); share, the branch's part of all branches' saliency (the maps share one
    unit, a contribution to the class score, so the shares say which branch the decision leans on);
    top band, the `occlusion_regions` band of its input with the most saliency ("none (flat)" when the
    map is flat in frequency), and top band share, that band's part of the branch's band profile (1 /
    bands when flat); top second share, the part of a clip's saliency in its most salient second,
    averaged over clips (1 / seconds for a map flat in time).
    """
    totals = {branch: float(m.mean(axis=(1, 2)).sum()) for branch, m in maps.items()}
    rows = {}
    for branch, m in maps.items():
        source = BRANCH_INPUTS[branch]
        bands = region_saliency({branch: m}, cfg, source).mean()
        flat = np.isclose(bands.max(), bands.min(), rtol=1e-3)  # a last block one row high: no band stands out
        seconds = region_saliency({branch: m}, cfg, "time").to_numpy()
        seconds = seconds / np.where(seconds.sum(axis=1, keepdims=True) > 0, seconds.sum(axis=1, keepdims=True), 1.0)
        rows[branch] = {
            "input": source,
            "share": totals[branch] / (sum(totals.values()) or 1.0),
            "top band": "none (flat)" if flat else bands.idxmax(),
            "top band share": float(bands.max() / (bands.sum() or 1.0)),
            "top second share": float(seconds.max(axis=1).mean()),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("branch")


def cnn_features(model, data: Features, rows, cfg: Config) -> pd.DataFrame:
    """The CNN's representation of each clip just before its dense layer: every branch's last block
    averaged over bins and frames (its global pooling), concatenated. float32 DataFrame indexed by
    track_id, columns `<branch>_<channel>`; clips are read whole (`feature_batches`)."""
    keras = import_keras()
    branches = _model_branches(model)
    pools = [model.get_layer(f"{branch}_global_pool").output for branch in branches]
    extractor = keras.Model(model.inputs, pools)
    rows = np.asarray(rows, dtype=np.int64)
    outputs = extractor.predict(feature_batches(data, rows, cfg, _model_inputs(model, cfg)), verbose=0)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    columns = [f"{branch}_{k:03d}" for branch, pool in zip(branches, pools) for k in range(pool.shape[-1])]
    return pd.DataFrame(
        np.concatenate([np.asarray(o, np.float32) for o in outputs], axis=1),
        index=data.index.index[rows],
        columns=columns,
    )


def _standardised(table: pd.DataFrame) -> np.ndarray:
    """The values of `table` with every column scaled to mean 0 and variance 1 (constant columns to 0)."""
    from sklearn.preprocessing import StandardScaler

    values = np.asarray(table, dtype=np.float64)
    if values.ndim != 2 or len(values) < 2 or not np.isfinite(values).all():
        raise GenreError(f"need a finite table of at least 2 clips (rows) x features; got shape {values.shape}")
    return StandardScaler().fit_transform(values)


def embedding_map(table: pd.DataFrame, seed: int = 42, perplexity: float = 30.0) -> pd.DataFrame:
    """A 2-D map of clips (rows of `table`, one feature per column) by t-SNE, which keeps near neighbours
    near: columns standardised, PCA initialisation and `seed` so the map is reproducible, perplexity
    capped at a third of the clips. Returns columns x, y with `table`'s index. Raises GenreError for
    fewer than 2 clips or values that are not finite.

    References: L. van der Maaten and G. Hinton, "Visualizing data using t-SNE", JMLR 9, 2008.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    values = _standardised(table)
    tsne = TSNE(2, perplexity=min(perplexity, (len(values) - 1) / 3), init="pca", random_state=seed)
    # one thread: 0.8 s for 96 clips, where OpenMP's threads spun for 32 s on a busy 2-core machine
    with threadpool_limits(1):
        coordinates = tsne.fit_transform(values)
    return pd.DataFrame(coordinates, index=table.index, columns=["x", "y"])


def neighbour_purity(table: pd.DataFrame, genres, k: int = 10) -> pd.DataFrame:
    """How much the clips of a genre gather in a representation: for each clip (row of `table`), the
    share of its k nearest other clips (Euclidean, standardised columns) with its genre.

    `genres`: one genre per row (a Series aligned by index, or a sequence). Returns a DataFrame indexed like
    `table` with columns genre, purity (0-1) and chance: the purity k clips drawn at random from the others
    would have on average, (clips of the genre - 1) / (clips - 1). Raises GenreError when k is not below
    the number of clips or the genres do not match the rows.
    """
    from sklearn.neighbors import NearestNeighbors

    values = _standardised(table)
    genres = pd.Series(genres.reindex(table.index) if isinstance(genres, pd.Series) else list(genres))
    if len(genres) != len(values) or genres.isna().any():
        raise GenreError(
            f"neighbour_purity: need one genre per clip ({len(values)}); got {len(genres)} or missing ones"
        )
    if not 1 <= k < len(values):
        raise GenreError(f"neighbour_purity: k={k} neighbours; need 1 <= k < the {len(values)} clips")
    _, neighbours = NearestNeighbors(n_neighbors=k + 1).fit(values).kneighbors(values)
    labels = genres.to_numpy()
    others = np.array([row[row != i][:k] for i, row in enumerate(neighbours)])  # drop the clip itself
    counts = genres.map(genres.value_counts()).to_numpy()
    result = pd.DataFrame(
        {
            "genre": labels,
            "purity": (labels[others] == labels[:, None]).mean(axis=1),
            "chance": (counts - 1) / (len(labels) - 1),
        },
        index=table.index,
    )
    result.attrs["k"] = k
    return result


def _frequency_ticks(cfg: Config, source: str) -> tuple[np.ndarray, list[str]]:
    """(positions in bins, labels) for the frequency axis of a mel ("mel": 500 Hz, 1k, 2k, 4k ... below
    the top band) or CQT ("cqt": the C of every octave) image drawn one bin per unit."""
    import librosa

    if source == "mel":
        centres = librosa.mel_frequencies(n_mels=cfg.n_mels + 2, fmax=cfg.sample_rate / 2)[1:-1]
        hz = np.array([500.0 * 2**k for k in range(10) if 500 * 2**k < centres[-1]])
        return np.interp(hz, centres, np.arange(cfg.n_mels)) + 0.5, [
            f"{h / 1000:g}k" if h >= 1000 else "500" for h in hz
        ]
    starts = np.arange(0, cfg.cqt_bins, cfg.cqt_bins_per_octave)
    notes = librosa.hz_to_note(cfg.cqt_fmin * 2.0 ** (starts / cfg.cqt_bins_per_octave), unicode=False)
    return starts + 0.5, list(notes)


_IMAGE = dict(origin="lower", aspect="auto", interpolation="none")  # a spectrogram as an image: low bins at the bottom


def plot_saliency(data: Features, rows, maps: dict[str, np.ndarray], cfg: Config, titles=None):
    """Each clip's Grad-CAM maps (`grad_cam`), one column per branch of `maps`, as contours over the
    input the branch reads (mel-spectrogram or CQT, grey, at its scale: Hz or notes against seconds):
    dashed orange encloses the top half of each map, solid red its top fifth (each map scaled to its own
    maximum). `titles`: one label per row (default the clips' genres). Text width, 1.1 in per clip:
    at most 7 clips. Returns the Figure."""
    import matplotlib.pyplot as plt

    rows = np.asarray(rows, dtype=np.int64)
    titles = list(data.index["genre"].to_numpy()[rows] if titles is None else titles)
    branches = [b for b in MODEL_BLOCKS if b in maps]
    ticks = {source: _frequency_ticks(cfg, source) for source in ("mel", "cqt")}
    with _plot_style():
        fig = plt.figure(figsize=(FIGURE_WIDTHS["text"], 0.75 + 1.1 * len(rows)))
        heights = [1.0] * (len(rows) - 1) + [1.3]  # the last row also holds the time axis
        strips = fig.subfigures(len(rows), 1, squeeze=False, height_ratios=heights)[:, 0]  # one per clip
        for i, (row, title, panels) in enumerate(zip(rows, titles, strips)):
            panels.suptitle(title, x=0.01, ha="left", fontsize=plt.rcParams["axes.titlesize"])  # the clip, over its row
            for branch, ax in zip(branches, panels.subplots(1, len(branches), squeeze=False)[0]):
                source = BRANCH_INPUTS[branch]
                spectrogram = np.asarray(getattr(data, source)[row], dtype=np.float32)
                extent = (0, spectrogram.shape[1] * cfg.hop_length / cfg.sample_rate, 0, len(spectrogram))
                ax.imshow(spectrogram, cmap="gray_r", extent=extent, **_IMAGE)
                saliency = maps[branch][i] / max(float(maps[branch][i].max()), 1e-12)
                ax.contour(saliency, levels=[0.5, 0.8], colors=["C1", "C3"], linestyles=["--", "-"], extent=extent)
                ax.set_yticks(*ticks[source])
                ax.set(xlabel="time (s)" if i == len(rows) - 1 else "", ylabel="Hz" if source == "mel" else "note")
                ax.set_title(branch if i == 0 else "")
                ax.tick_params(axis="x", labelbottom=i == len(rows) - 1)
                ax.grid(False)
    return fig


def plot_occlusion(tables: dict[str, pd.DataFrame]):
    """Heat maps, one panel per table, of how much masking a region (columns) lowers the probability of
    the true genre (rows), in percentage points: `occlusion`'s drops averaged per genre, e.g.
    {"mel bands": ..., "CQT octaves": ...}; draw what is compared in one figure, e.g. frequencies, and
    seconds in another. One colour scale, red for a drop, blue for a gain. Text width. Returns the
    Figure; raises GenreError for no tables."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if not tables:
        raise GenreError("plot_occlusion needs at least one table of drops (genre x region)")
    limit = max(float(np.nanmax(np.abs(t.to_numpy()))) for t in tables.values()) * 100 or 1.0
    size = (FIGURE_WIDTHS["text"], 1.6 + 0.22 * max(len(t) for t in tables.values()))
    ratios = [t.shape[1] for t in tables.values()]
    style = dict(cmap="RdBu_r", vmin=-limit, vmax=limit, center=0, annot=True, fmt=".0f", linewidths=0.5)
    colour_bar = {"label": "drop of the true\ngenre's probability\n(points)"}
    with _plot_style():
        fig, axes = plt.subplots(1, len(tables), figsize=size, width_ratios=ratios, squeeze=False)
        for k, (ax, (name, table)) in enumerate(zip(axes[0], tables.items())):
            last = k == len(tables) - 1
            sns.heatmap(table * 100, ax=ax, annot_kws={"fontsize": 7}, cbar=last, cbar_kws=colour_bar, **style)
            ax.tick_params(axis="y", labelleft=k == 0)
            ax.set(title=name, xlabel="masked region", ylabel="true genre" if k == 0 else "")
            ax.tick_params(axis="x", labelrotation=60)
            plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    return fig


def plot_embedding_maps(maps: dict[str, pd.DataFrame], genres: pd.Series, wrong: pd.Series | None = None, notes=None):
    """Side-by-side 2-D maps of the same clips (`embedding_map` tables, columns x, y), one marker and
    colour per genre (`genres`, indexed by track_id), the clips in `wrong` (a boolean Series, e.g. the
    CNN's mistakes) ringed in black. `notes`: a text per map added to its title (e.g. its neighbour
    purity). Text width. Returns the Figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    names = [g for g in GENRES if g in set(genres)] + sorted(set(genres) - set(GENRES))
    colours = dict(zip(names, sns.color_palette("colorblind", len(names))))
    with _plot_style():
        fig, axes = plt.subplots(1, len(maps), figsize=(FIGURE_WIDTHS["text"], 4.2), squeeze=False)
        for ax, (name, table) in zip(axes[0], maps.items()):
            clips, points = genres.reindex(table.index), table[["x", "y"]].to_numpy().T
            for genre, marker in zip(names, itertools.cycle("os^DvPX*<>")):
                inside = (clips == genre).to_numpy()
                ax.scatter(*points[:, inside], s=14, marker=marker, color=colours[genre], label=genre)
            if wrong is not None:
                mistakes = wrong.reindex(table.index, fill_value=False).to_numpy(bool)
                ring = dict(s=50, facecolors="none", edgecolors="black", linewidths=0.8)
                ax.scatter(*points[:, mistakes], **ring, label="misclassified by the CNN")
            note = (notes or {}).get(name)
            ax.set(title=textwrap.fill(f"{name}: {note}" if note else name, 45), xticks=[], yticks=[])
            ax.grid(False)
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), frameon=False)
    return fig


def plot_neighbour_purity(purity: dict[str, pd.DataFrame]):
    """Grouped bars of the mean neighbour purity per genre and over all clips, one bar (and hatch) per
    representation (`neighbour_purity` tables), with the purity of random neighbours (chance) as a black
    tick. Text width. Returns the Figure."""
    import matplotlib.pyplot as plt

    first = next(iter(purity.values()))
    genres = [g for g in GENRES if g in set(first["genre"])] or sorted(set(first["genre"]))
    groups = [*genres, "all clips"]
    width = 0.8 / len(purity)
    with _plot_style():
        fig, ax = plt.subplots(figsize=(FIGURE_WIDTHS["text"], 3.0))
        for m, ((name, table), hatch) in enumerate(zip(purity.items(), itertools.cycle(["", "//", ".."]))):
            means = [*table.groupby("genre")["purity"].mean().reindex(genres), table["purity"].mean()]
            ax.bar(np.arange(len(groups)) + (m - (len(purity) - 1) / 2) * width, means, width, hatch=hatch, label=name)
        chance = [*first.groupby("genre")["chance"].mean().reindex(genres), first["chance"].mean()]
        ax.scatter(np.arange(len(groups)), chance, marker="_", s=300, color="black", zorder=3, label="chance")
        k = first.attrs.get("k", "k")
        ax.set(ylim=(0, 1), ylabel=f"share of the {k} nearest\nclips of the same genre", title="Neighbour purity")
        ax.set_xticks(np.arange(len(groups)), groups, rotation=30, ha="right", rotation_mode="anchor")
        fig.legend(loc="outside lower center", ncols=len(purity) + 1, frameon=False)
    return fig


# ── Experiments: one results row per CNN variant or classical baseline, and cross-validation methods of both ──

EXPERIMENT_COLUMNS = ("model", "input", "parameters", "epochs", "train_seconds", "val_accuracy", "test_accuracy")


def _finished_run(run_dir: Path, cfg: Config, data: Features) -> bool:
    """Whether `run_dir` holds a complete run trained with exactly `cfg` on exactly `data` (its
    features and splits), its epoch times logged."""
    if not all((run_dir / name).is_file() for name in (*RUN_FILES, "data.json")) or (run_dir / "backup").exists():
        return False
    if _run_format(run_dir) != RUN_FORMAT:
        return False
    if _config_from_dict(json.loads((run_dir / "config.json").read_text()), run_dir / "config.json") != cfg:
        return False
    if json.loads((run_dir / "data.json").read_text()).get("fingerprint") != data.fingerprint():
        return False
    history = _read_history(run_dir / "history.csv")
    return "epoch_seconds" in history and (len(history) == cfg.epochs or cfg.early_stopping > 0)


def cnn_experiment(name: str, cfg: Config, features: Features, run_dir: str | os.PathLike, verbose=0) -> pd.Series:
    """Train the CNN of `cfg` (branches, train_mode, epochs ...) into `run_dir` and score it: one
    row of an experiment table.

    A finished run already in `run_dir` with exactly these settings and data (e.g. notebook 04's;
    its config.json and data.json) is reused, not retrained; otherwise `train` runs with the seed
    fixed as in notebook 04. The model cfg.checkpoint names (best.keras, or last.keras for "last") is
    scored by `evaluate` on the validation and test splits. Returns a Series named `name` with
    EXPERIMENT_COLUMNS: model, input, parameters, epochs, train_seconds (sum of the logged epoch
    times), val_accuracy, test_accuracy. Raises what `train` and `evaluate` raise.
    """
    keras = import_keras()

    run_dir = Path(run_dir)
    if not _finished_run(run_dir, cfg, features):
        keras.utils.set_random_seed(cfg.seed)  # the same initial weights every run
        train(build_model(cfg), features, cfg, run_dir, verbose=verbose)
    model, run_cfg, history = load_run(run_dir)
    chunked = _train_mode(run_cfg) == "chunked"
    return pd.Series(
        {
            "model": "CNN: " + " + ".join(run_cfg.branches),
            "input": f"{run_cfg.chunk_seconds:g} s excerpts, averaged"
            if chunked
            else f"whole {run_cfg.clip_seconds:g} s clips",
            "parameters": model.count_params(),
            "epochs": len(history),
            "train_seconds": float(history["epoch_seconds"].sum()),
            "val_accuracy": evaluate(model, features, run_cfg, "validation").accuracy,
            "test_accuracy": evaluate(model, features, run_cfg, "test").accuracy,
        },
        name=name,
    )


def baseline_experiment(
    name: str, statistics: pd.DataFrame, index: pd.DataFrame, kind: str = "svm", seed: int = 42
) -> pd.Series:
    """Fit `baseline_classifier(kind, seed)` on the training clips and score it: one row of an experiment table.

    statistics: `extract_clip_statistics` output (indexed by track_id); index: a table indexed by
    track_id with split and label columns (e.g. Features.index, so the baseline uses the CNN's
    clips and splits; tracks missing from either are left out). Returns a Series named `name` with
    EXPERIMENT_COLUMNS; parameters counts the numbers the fitted classifier stores (support
    vectors and dual coefficients, or weights), epochs is 1 (one fit) and train_seconds the time
    of the fit. Raises DataError when a split has no clips.
    """
    clips = index[["split", "label"]].join(statistics, how="inner")
    x, y = {}, {}
    for split in SPLITS:
        part = clips[clips["split"] == split]
        if part.empty:
            raise DataError(f"no clips with clip statistics in the {split} split")
        x[split], y[split] = part.drop(columns=["split", "label"]).to_numpy(), part["label"].to_numpy()
    pipeline = baseline_classifier(kind, seed)
    start = time.perf_counter()
    pipeline.fit(x["training"], y["training"])
    seconds = time.perf_counter() - start
    return pd.Series(
        {
            "model": {"svm": "SVM (RBF)", "logistic": "logistic regression"}[kind],
            "input": f"{statistics.shape[1]} MFCC and spectral statistics",
            "parameters": _stored_numbers(pipeline, kind),
            "epochs": 1,
            "train_seconds": seconds,
            "val_accuracy": float((pipeline.predict(x["validation"]) == y["validation"]).mean()),
            "test_accuracy": float((pipeline.predict(x["test"]) == y["test"]).mean()),
        },
        name=name,
    )


def _fold_features(features: Features, split: pd.Series) -> Features:
    """`features` with the fold's split (clips outside `split` marked 'unused'); the arrays are shared,
    not copied, and `train` adapts the model's normalisation to the fold's training clips."""
    index = features.index.copy()
    index["split"] = split.reindex(index.index).fillna("unused").astype(str).to_numpy()
    if not (index["split"] == "training").any():
        raise DataError(f"{features.path or 'in-memory features'}: no clip of the fold's training split has features")
    return dataclasses.replace(features, index=index)


def cnn_method(features: Features, cfg: Config, verbose=0):
    """A cross-validation method (see `cross_validate`) training the CNN of `cfg` on each fold.

    Any preset, branches and train mode: the model of `build_model(cfg)` is trained by `train` (seeded
    by cfg.seed, its normalisation adapted to the fold's training clips) on a view of `features` whose
    split is the fold's, so one feature cache serves every fold. The model cfg.checkpoint names
    predicts the test clips (`predict_proba`): "best" the checkpoint of the best cfg.monitor on the
    validation clips (best.keras), "last" the model when training ends (last.keras; with cfg.use_ema
    the moving average of its weights).
    MethodResult: parameters = the model's, train_seconds = the wall time of `train`.
    """

    def method(split: pd.Series, run_dir: Path) -> MethodResult:
        keras = import_keras()

        view = _fold_features(features, split)
        keras.utils.set_random_seed(cfg.seed)  # the same initial weights in every fold
        model = build_model(cfg)
        start = time.perf_counter()
        train(model, view, cfg, run_dir, verbose=verbose)
        seconds = time.perf_counter() - start
        test = view.rows("test")
        proba = predict_proba(load_model(Path(run_dir) / f"{cfg.checkpoint}.keras"), view, test, cfg)
        return MethodResult(
            pd.DataFrame(proba, index=view.index.index[test], columns=list(cfg.genres)),
            int(model.count_params()),
            seconds,
        )

    method.settings = {"method": "cnn", "config": json.loads(json.dumps(cfg.to_dict())), "data": features.fingerprint()}
    return method


def baseline_method(statistics: pd.DataFrame, labels, kind: str = "svm", seed: int = 42):
    """A cross-validation method (see `cross_validate`) fitting `baseline_classifier(kind, seed)` per fold.

    statistics: `extract_clip_statistics` output (indexed by track_id); labels: genre per track_id (a
    Series, or a tracks table with a genre column). The classifier fits the fold's training and
    validation clips together (it has no checkpoint to choose) and predicts its test clips:
    probabilities for "logistic", 1 for the predicted genre for "svm" (an SVC gives no
    probabilities without an extra internal cross-validation). Raises ConfigError for an unknown kind.
    """
    baseline_classifier(kind, seed)  # checks the kind now
    labels = _genre_labels(labels)

    def method(split: pd.Series, run_dir: Path) -> MethodResult:
        clips = split.rename("split").to_frame().join(labels.rename("genre")).join(statistics, how="inner")
        fit = clips[clips["split"].isin(["training", "validation"])]
        test = clips[clips["split"] == "test"]
        if fit.empty or test.empty:
            raise DataError("no clips with clip statistics in the fold's training or test split")
        pipeline = baseline_classifier(kind, seed)
        start = time.perf_counter()
        pipeline.fit(fit[statistics.columns].to_numpy(), fit["genre"].to_numpy())
        seconds = time.perf_counter() - start
        x_test = test[statistics.columns].to_numpy()
        classes = list(pipeline.classes_)
        if kind == "logistic":
            proba = pipeline.predict_proba(x_test)
        else:
            proba = (pipeline.predict(x_test)[:, None] == np.asarray(classes)[None, :]).astype(np.float64)
        return MethodResult(
            pd.DataFrame(proba, index=test.index, columns=classes), _stored_numbers(pipeline, kind), seconds
        )

    method.settings = {
        "method": "baseline",
        "kind": kind,
        "seed": seed,
        "statistics": list(statistics.columns),
        "data": _fingerprint(statistics),
    }
    return method


def _stored_numbers(pipeline, kind: str) -> int:
    """Numbers a fitted baseline classifier stores: support vectors and dual coefficients, or weights."""
    classifier = pipeline[-1]
    stored = (
        [classifier.support_vectors_, classifier.dual_coef_, classifier.intercept_]
        if kind == "svm"
        else [classifier.coef_, classifier.intercept_]
    )
    return int(sum(np.size(array) for array in stored))


# ── Plots: one style and one export helper for every figure, each drawn at its printed size ──

FIGURE_DPI = 300  # PNG pixels per inch at the printed size; PDFs are vector
FIGURE_WIDTHS = {"column": 3.5, "text": 7.0}  # inches: a report's single column (8.9 cm), its text width (17.8 cm)
FIGURE_MAX_HEIGHT = 9.5  # inches: what a page holds with its caption
SMALLEST_TEXT = 7.0  # points: the smallest text a printed figure may have


def set_plot_style() -> None:
    """One look for every figure: seaborn's paper theme (text of 7-9 pt at the printed size), its
    colour-blind palette with a line style per colour."""
    import matplotlib as mpl

    mpl.rcParams.update(_style_rc())


def _style_rc() -> dict:
    import seaborn as sns
    from cycler import cycler

    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper", font_scale=0.9), "pdf.fonttype": 42}
    rc.update({"figure.constrained_layout.use": True, "errorbar.capsize": 2})  # labels fit inside the figure
    styles = cycler(linestyle=["-", "--", ":", "-."] * 2 + ["-", "--"])  # a line style per colour
    rc["axes.prop_cycle"] = cycler(color=sns.color_palette("colorblind")) + styles
    return rc


CAPTIONS_FILE = "CAPTIONS.md"  # beside the figures: each figure's caption, width and notebook, in notebook order


def save_figure(fig, name: str, figures_dir: str | os.PathLike = ROOT / "figures", *, width: str, caption: str):
    """Write `fig` as `<figures_dir>/<name>.png` (300 pixels per inch, for slides, web) and `.pdf` (fonts
    embedded, for LaTeX), at its own size: the printed one.

    `width`: "column" (3.5 in) or "text" (7 in), the figure's width, which it must have (at most 9.5 in
    tall, every text at least 7 pt). `caption`: one or two sentences, what the figure shows, on which
    data and run, and what to read from it. It becomes the PDF's Subject and the PNG's Description, and
    the figure's entry in `<figures_dir>/CAPTIONS.md` (`figure_captions`), with its width and the
    notebook that drew it (the one whose file name starts with the figure's "NN_"); entries are replaced
    by name and kept in notebook order. Returns the two paths; raises GenreError for an empty caption or
    a figure not drawn for print.
    """
    from matplotlib.text import Text

    caption = " ".join(str(caption).split())
    if not caption:
        raise GenreError(f"figure {name}: give it a caption (what it shows, on which data, what to read from it)")
    if width not in FIGURE_WIDTHS:
        raise GenreError(f"figure {name}: width {width!r}; choose {' or '.join(FIGURE_WIDTHS)}")
    inches, small = FIGURE_WIDTHS[width], [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    small = [f"{t.get_text()!r} ({t.get_fontsize():.1f} pt)" for t in small if t.get_fontsize() < SMALLEST_TEXT]
    if abs(fig.get_figwidth() - inches) > 0.01 or fig.get_figheight() > FIGURE_MAX_HEIGHT or small:
        raise GenreError(
            f"figure {name}: drawn {fig.get_figwidth():.2f} x {fig.get_figheight():.2f} in, smallest texts "
            f"{small[:3] or 'fine'}; draw it {inches:g} in wide ({width}), at most {FIGURE_MAX_HEIGHT} in tall, "
            f"with text of at least {SMALLEST_TEXT:g} pt"
        )
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths = [figures_dir / f"{name}.png", figures_dir / f"{name}.pdf"]
    fig.canvas.draw()  # lay the figure out once, for the PNG, the PDF and any later save alike
    fig.set_layout_engine("none")
    for path in paths:
        metadata = {"CreationDate": None, "Subject": caption} if path.suffix == ".pdf" else {"Description": caption}
        with _plot_style():  # fonts embedded as TrueType
            fig.savefig(path, dpi=FIGURE_DPI, metadata=metadata)
    notebooks = sorted((ROOT / "notebooks").glob(f"{name[:3]}*.ipynb")) if re.match(r"\d\d_", name) else []
    notebook = f"notebooks/{notebooks[0].name}" if notebooks else ""
    with _exclusive(figures_dir / f".{CAPTIONS_FILE}.lock"):  # notebooks run two at a time in `make test`
        captions = figure_captions(figures_dir)
        if name not in captions.index:  # a new figure goes after the last one of its notebook or an earlier one
            before = (
                captions["notebook"].where(captions["notebook"] != "", captions.index) <= (notebook or name)
            ).sum()
            captions = pd.concat([captions.iloc[:before], pd.DataFrame(index=[name]), captions.iloc[before:]])
        captions.loc[name, ["notebook", "width", "caption"]] = [notebook, width, caption]
        entries = [
            f"## {figure}\n\n{f'`{source}`: ' if source else ''}[PNG]({figure}.png), [PDF]({figure}.pdf); "
            f"{size} width ({FIGURE_WIDTHS.get(size, 0):g} in)\n\n{text}\n"
            for figure, source, size, text in captions[["notebook", "width", "caption"]].itertuples()
        ]
        with _atomic_path(figures_dir / CAPTIONS_FILE) as tmp:
            tmp.write_text(_CAPTIONS_HEADER + "\n" + "\n".join(entries), encoding="utf-8")
    return paths


_CAPTIONS_HEADER = """# Figure captions

Every figure of this folder, PNG and PDF, with its caption, its printed width and the notebook that
drew it, in notebook order. Written by `genre_utils.save_figure`; the PDFs carry the same caption as
their subject.
"""


def figure_captions(figures_dir: str | os.PathLike = ROOT / "figures") -> pd.DataFrame:
    """The captions `save_figure` wrote to `<figures_dir>/CAPTIONS.md`: one row per figure name, in the
    file's order, with columns notebook (e.g. "notebooks/02_features.ipynb", "" when none), width
    ("column", "text", "" when not given) and caption. Empty when the file does not exist."""
    path = Path(figures_dir) / CAPTIONS_FILE
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    rows = {}
    for entry in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        name, links, caption = (entry.split("\n\n", 2) + ["", ""])[:3]
        source, width = re.match(r"`([^`]*)`: ", links), re.search(r"; (\w+) width", links)
        rows[name.strip()] = {
            "notebook": source.group(1) if source else "",
            "width": width.group(1) if width else "",
            "caption": " ".join(caption.split()),
        }
    return pd.DataFrame.from_dict(rows, orient="index", columns=["notebook", "width", "caption"], dtype=object)


@contextlib.contextmanager
def _plot_style():
    """Apply `set_plot_style`'s look to the figures made inside the block only.

    rcParams are restored afterwards, except `interactive`: IPython switches it on when the first
    figure of a session starts the inline backend, and undoing that would hide every later figure.
    """
    import matplotlib as mpl

    with mpl.rc_context(_style_rc()):
        yield
        interactive = mpl.is_interactive()
    mpl.interactive(interactive)


def _require_columns(table: pd.DataFrame, columns, what: str) -> None:
    """Raise GenreError naming the missing columns of `table`."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise GenreError(
            f"{what} has no column(s) {', '.join(missing)}; it has {', '.join(map(str, table.columns)) or 'none'}"
        )


def _wilson(successes, trials, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval (95 % for z = 1.96) of a share `successes / trials`: (low, high)."""
    trials = np.maximum(np.asarray(trials, dtype=float), 1e-12)
    share = np.asarray(successes, dtype=float) / trials
    centre, spread = share + z**2 / (2 * trials), z * np.sqrt(share * (1 - share) / trials + z**2 / (4 * trials**2))
    return (centre - spread) / (1 + z**2 / trials), (centre + spread) / (1 + z**2 / trials)


def plot_mel_vs_cqt(spectrograms: dict[str, tuple[np.ndarray, np.ndarray]], cfg: Config):
    """One row per clip, its mel-spectrogram (left, Hz) and CQT (right, the C of every octave) side by
    side, on one dB colour scale. spectrograms: {title: (mel (n_mels, frames), cqt (cqt_bins, frames))}
    in dB, as `mel_spectrogram` and `cqt` give them with `cfg`; a report figure holds a few (3-4).
    Text width. Returns the Figure."""
    import matplotlib.pyplot as plt

    ticks = {source: _frequency_ticks(cfg, source) for source in ("mel", "cqt")}
    with _plot_style():
        size = (FIGURE_WIDTHS["text"], min(FIGURE_MAX_HEIGHT, 0.6 + 1.6 * len(spectrograms)))
        fig, axes = plt.subplots(len(spectrograms), 2, figsize=size, sharex=True, squeeze=False)
        for row, (title, pair) in enumerate(spectrograms.items()):
            for ax, source, spectrogram in zip(axes[row], ("mel", "cqt"), pair):
                seconds = spectrogram.shape[1] * cfg.hop_length / cfg.sample_rate
                extent = (0, seconds, 0, len(spectrogram))
                image = ax.imshow(np.float32(spectrogram), cmap="magma", vmin=-TOP_DB, vmax=0, extent=extent, **_IMAGE)
                ax.set_yticks(*ticks[source])
                ax.set(ylabel="Hz" if source == "mel" else "note", xlabel="time (s)" if row == len(axes) - 1 else "")
                ax.set_title(f"{title}: {'mel-spectrogram' if source == 'mel' else 'CQT'}", loc="left")
                ax.grid(False)
        fig.colorbar(image, ax=axes, shrink=min(0.8, 2.5 / len(axes)), label="dB below the clip's maximum")
    return fig


def plot_band_frequencies(cfg: Config):
    """The centre frequency of every mel band and CQT bin of `cfg` against its index, on a log axis:
    where each input spends its rows. Column width. Returns the Figure."""
    import librosa
    import matplotlib.pyplot as plt

    mel = librosa.mel_frequencies(n_mels=cfg.n_mels + 2, fmax=cfg.sample_rate / 2)[1:-1]
    cqt = librosa.cqt_frequencies(n_bins=cfg.cqt_bins, fmin=cfg.cqt_fmin, bins_per_octave=cfg.cqt_bins_per_octave)
    with _plot_style():
        fig, ax = plt.subplots(figsize=(FIGURE_WIDTHS["column"], 2.8))
        ax.semilogy(mel, marker=".", markersize=3, label=f"mel ({cfg.n_mels} bands)")
        cqt_label = f"CQT ({cfg.cqt_bins} bins, {cfg.cqt_bins_per_octave} an octave)"
        ax.semilogy(cqt, marker="x", markersize=3, markevery=4, label=cqt_label)
        ax.set(xlabel="band index", ylabel="centre frequency (Hz)", title="Band centre frequencies")
        fig.legend(loc="outside lower center", ncols=1, frameon=False)
    return fig


def plot_mean_spectra(means: dict[str, pd.DataFrame]):
    """Each genre's mean spectrum, one panel per input and one line (colour, style, marker) per genre.
    means: {"mel": table, "cqt": table}, each indexed by genre with one column per band named by its
    centre frequency (Hz), in dB (e.g. `band_means` averaged per genre). Text width. Returns the Figure."""
    import matplotlib.pyplot as plt

    with _plot_style():
        fig, axes = plt.subplots(1, len(means), figsize=(FIGURE_WIDTHS["text"], 3.2), sharey=True, squeeze=False)
        for ax, (name, table) in zip(axes[0], means.items()):
            for (genre, mean), marker in zip(table.iterrows(), itertools.cycle("os^DvPX*<>")):
                ax.semilogx(table.columns.astype(float), mean, marker=marker, markersize=3, markevery=0.1, label=genre)
            ax.set(xlabel="frequency (Hz)", title=f"mean {'CQT' if name == 'cqt' else name} spectrum")
        axes[0, 0].set_ylabel("dB below the clip's maximum")
        fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncols=4, frameon=False)
    return fig


def plot_band_statistics(stats):
    """The mean of every band over the training clips, ± one standard deviation, one panel per input
    (mel bands, CQT bins). stats: `Features.stats`, with mel_mean, mel_std, cqt_mean, cqt_std. The
    legend sits below the panels. Text width. Returns the Figure."""
    import matplotlib.pyplot as plt

    with _plot_style():
        fig, axes = plt.subplots(1, 2, figsize=(FIGURE_WIDTHS["text"], 2.8))
        for ax, name in zip(axes, ("mel", "cqt")):
            mean, std = np.asarray(stats[f"{name}_mean"]), np.asarray(stats[f"{name}_std"])
            ax.plot(mean, label="mean over the training clips")
            ax.fill_between(np.arange(len(mean)), mean - std, mean + std, alpha=0.3, label="± 1 standard deviation")
            bands = "mel band" if name == "mel" else "CQT bin (semitone)"
            ax.set(xlabel=bands, ylabel="dB below the clip's max.", title=f"{bands.split()[0]}: per-band statistics")
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, frameon=False)
    return fig


def plot_filter_shapes(spectrograms: dict[str, np.ndarray], kernels: dict[str, tuple[int, int]], title: str = ""):
    """The first filter of each branch drawn to scale on the input it reads: spectrograms {"mel": (bands,
    frames), "cqt": (bins, frames)} of one clip; kernels {branch: (height in bins, width in frames)}.
    Text width. Returns the Figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    with _plot_style():
        fig, axes = plt.subplots(1, len(spectrograms), figsize=(FIGURE_WIDTHS["text"], 2.9), squeeze=False)
        for ax, (source, spectrogram) in zip(axes[0], spectrograms.items()):
            ax.imshow(np.float32(spectrogram), cmap="magma", **_IMAGE)
            branches = [b for b in kernels if BRANCH_INPUTS[b] == source]
            for branch, x in zip(branches, (0.2, 0.6)):
                (height, width), colour = kernels[branch], ("cyan", "lime", "gold")[list(kernels).index(branch) % 3]
                box = Rectangle((x * spectrogram.shape[1], 4), width, height, fill=False, edgecolor=colour, lw=1.5)
                ax.add_patch(box).set_label(f"{branch}: {height} × {width}")
            ax.set(title=f"{title}{source}", xlabel="time frame", ylabel="frequency bin")
            ax.grid(False)
        boxes = [box for ax in axes[0] for box in ax.patches]
        fig.legend(boxes, [box.get_label() for box in boxes], loc="outside lower center", ncols=3, frameon=False)
    return fig


def plot_learning_curves(history: pd.DataFrame):
    """Loss and accuracy per epoch, training vs validation, in two panels; returns the Figure.

    history: one row per epoch with columns loss and accuracy, optionally val_loss, val_accuracy and
    epoch (0-based, as Keras' CSVLogger writes it; epochs are shown 1-based as Keras prints them).
    The epoch with the best validation accuracy is marked. Text width. Raises GenreError for an empty
    history or missing columns.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    _require_columns(history, ["loss", "accuracy"], "the training history")
    if len(history) == 0:
        raise GenreError("the training history is empty (no epoch finished)")
    epochs = history["epoch"].to_numpy() + 1 if "epoch" in history else np.arange(1, len(history) + 1)
    best = int(np.nanargmax(history["val_accuracy"].to_numpy())) if "val_accuracy" in history else None

    with _plot_style():
        fig, axes = plt.subplots(1, 2, figsize=(FIGURE_WIDTHS["text"], 2.8))
        for ax, metric, title in zip(axes, ["loss", "accuracy"], ["Loss (cross-entropy)", "Accuracy"]):
            ax.plot(epochs, history[metric], marker="o", markersize=3, label="training")
            if f"val_{metric}" in history:
                ax.plot(epochs, history[f"val_{metric}"], marker="s", markersize=3, label="validation")
            if best is not None:
                ax.axvline(epochs[best], color="0.4", linestyle=":", label=f"best validation (epoch {epochs[best]})")
            ax.set(title=title, xlabel="Epoch", ylabel=metric.capitalize())
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[1].set_ylim(0, 1)
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3, frameon=False)
    return fig


def plot_confusion_matrix(confusion, genres=None, title: str = "Confusion matrix"):
    """Heat map of a confusion matrix with genre names (rows true, columns predicted), each cell its
    count of clips over its share of the true genre's clips, coloured by the share; returns the Figure.

    confusion: (n_genres, n_genres) counts (array, or `Scores.confusion`, whose index supplies
    `genres` when not given). `title`: say the split and run. Text width. Raises GenreError for a
    matrix that does not match `genres`.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import PercentFormatter

    if genres is None:
        if not isinstance(confusion, pd.DataFrame):
            raise GenreError("plot_confusion_matrix needs `genres` when the confusion matrix is a plain array")
        genres = confusion.index
    genres = list(genres)
    counts = np.asarray(confusion, dtype=np.float64)
    if counts.shape != (len(genres), len(genres)):
        raise GenreError(
            f"confusion matrix has shape {counts.shape}; expected ({len(genres)}, {len(genres)}) "
            f"for {len(genres)} genres"
        )
    shares = pd.DataFrame(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1), index=genres, columns=genres)
    # annotate every cell but the off-diagonal zeros, so the mistakes that happen stand out
    annotations = np.vectorize(lambda n, share: f"{n:.0f}\n{share:.0%}")(counts, shares.to_numpy())
    annotations[(counts == 0) & ~np.eye(len(genres), dtype=bool)] = ""

    with _plot_style():
        fig, ax = plt.subplots(figsize=(FIGURE_WIDTHS["text"], 1.6 + 0.55 * len(genres)))
        colour_bar = {"label": "share of the true genre's clips", "format": PercentFormatter(1.0, decimals=0)}
        style = dict(cmap="Blues", vmin=0, vmax=1, square=True, linewidths=0.5, linecolor="white", cbar_kws=colour_bar)
        sns.heatmap(shares, ax=ax, annot=annotations, fmt="", annot_kws={"fontsize": 7}, **style)
        ax.set(xlabel="Predicted genre", ylabel="True genre", title=f"{title} (clips, share of the row)")
        ax.tick_params(axis="x", labelrotation=40)
        ax.tick_params(axis="y", labelrotation=0)
        plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    return fig


def plot_genre_scores(per_genre: pd.DataFrame):
    """Grouped bars (colour and hatch) of precision, recall and F1 per genre (0-1), each with its 95 %
    Wilson interval over the clips it counts (recall: the genre's clips; precision: the clips predicted
    as it; F1: their mean); returns the Figure.

    per_genre: `Scores.per_genre` (index genre, columns precision, recall, f1, support: shown under
    each genre name). Text width. Raises GenreError for missing columns.
    """
    import matplotlib.pyplot as plt

    _require_columns(per_genre, ["precision", "recall", "f1", "support"], "the per-genre scores")
    support = per_genre["support"].to_numpy(dtype=float)
    hits = per_genre["recall"].to_numpy(dtype=float) * support
    predicted = np.where(per_genre["precision"] > 0, hits / per_genre["precision"].where(lambda p: p > 0), support)
    trials = {"precision": predicted, "recall": support, "f1": (predicted + support) / 2}
    positions = np.arange(len(per_genre))
    with _plot_style():
        fig, ax = plt.subplots(figsize=(FIGURE_WIDTHS["text"], 3.0))
        for k, (score, hatch) in enumerate(zip(trials, ["", "//", ".."])):
            values = per_genre[score].to_numpy(dtype=float)
            low, high = _wilson(values * trials[score], trials[score])
            label = {"f1": "F1"}.get(score, score.capitalize())
            ax.bar(
                positions + (k - 1) * 0.27, values, 0.27, yerr=[values - low, high - values], hatch=hatch, label=label
            )
        ax.set_xticks(positions, [f"{genre}\n(n={n:.0f})" for genre, n in zip(per_genre.index, support)])
        ax.set(ylabel="Score (95 % interval)", ylim=(0, 1.05), title="Per-genre scores")
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=3, frameon=False)
    return fig


def plot_comparison(table, value: str = "accuracy", chance: float | None = 1 / len(GENRES)):
    """Horizontal bars comparing runs or methods on one score, each with its 95 % Wilson interval over
    the clips it was measured on; returns the Figure.

    table: DataFrame indexed by run/method label with a `value` column (0-1) and a `clips` column (the
    clips each score counts), e.g. `compare_with_report`'s rows of one dataset or a table of methods on
    one test split; compare only what was measured on the same clips. `chance` (1/8) is drawn as a
    line; None leaves it out. Column width. Raises GenreError for an empty table or missing columns.
    """
    import matplotlib.pyplot as plt

    _require_columns(table, [value, "clips"], "the comparison table")
    if len(table) == 0:
        raise GenreError("the comparison table is empty")
    values = table[value].to_numpy(dtype=float)
    low, high = _wilson(values * table["clips"].to_numpy(dtype=float), table["clips"])
    positions = np.arange(len(table))
    with _plot_style():
        fig, ax = plt.subplots(figsize=(FIGURE_WIDTHS["column"], 1.2 + 0.35 * len(table)))
        ax.barh(positions, values, xerr=[values - low, high - values])
        for position, v, top in zip(positions, values, high):  # value labels right of the error bars
            ax.text(top + 0.02, position, f"{v:.3f}", va="center")
        ax.set_yticks(positions, [textwrap.fill(str(label), 22) for label in table.index])
        ax.invert_yaxis()  # first row on top, as in the table
        if chance is not None:
            ax.axvline(chance, color="0.3", linestyle=":", label=f"chance: {chance:.3f}")
            fig.legend(loc="outside lower center", frameon=False)
        name = value.replace("_", " ").capitalize()
        ax.set(xlim=(0, 1.15), xlabel=f"{name} (95 % interval)", title=f"{name} by run")
        ax.grid(axis="y", visible=False)
    return fig


def plot_cross_validation(
    summary: pd.DataFrame,
    per_fold: pd.DataFrame | None = None,
    baseline: str | None = "svm",
    labels: dict[str, str] | None = None,
    chance: float | None = None,
):
    """Mean cross-validated accuracy per method, best on top, with its standard error and each fold as
    a dot; returns the Figure.

    summary: `CrossValidation.summary` (or its CSV): method, accuracy_mean, accuracy_se, and
    accuracy_min (the worst fold, printed beside the mean) where present. per_fold:
    `CrossValidation.folds` (method, accuracy), drawn as dots spread across the bar's height so none
    hides another. `baseline`: the method whose mean is drawn as a dotted line (None or absent: no
    line). `labels`: readable names per method for the axis (default the method names), wrapped to
    fit. `chance`: the accuracy of guessing (1 / genres), a dashed line. The axis is zoomed to the folds
    and chance, and its label says where it starts. Text width. Raises GenreError for missing columns
    or an empty summary.
    """
    import matplotlib.pyplot as plt

    _require_columns(summary, ["method", "accuracy_mean", "accuracy_se"], "the cross-validation summary")
    if len(summary) == 0:
        raise GenreError("the cross-validation summary is empty")
    if per_fold is not None:
        _require_columns(per_fold, ["method", "accuracy"], "the per-fold table")
    labels = labels or {}
    summary = summary.sort_values("accuracy_mean", ascending=False, kind="stable")
    methods = summary["method"].tolist()
    positions = np.arange(len(methods))
    means, errors = summary["accuracy_mean"].to_numpy(dtype=float), summary["accuracy_se"].to_numpy(dtype=float)
    shown = [means - errors, means + errors, [chance if chance is not None else np.nan]]
    if per_fold is not None:
        shown.append(per_fold.loc[per_fold["method"].isin(methods), "accuracy"].to_numpy(dtype=float))
    low, high = np.nanmin(np.concatenate(shown)), np.nanmax(np.concatenate(shown))
    start, end = max(0.0, np.floor(low * 10 - 0.5) / 10), min(1.0, np.ceil(high * 10 + 0.5) / 10)
    with _plot_style():
        fig, ax = plt.subplots(figsize=(FIGURE_WIDTHS["text"], 1.4 + 0.55 * len(methods)))
        ax.barh(positions, means - start, left=start, color="C0", alpha=0.45, label="mean over the folds")
        if per_fold is not None:
            for position, method in zip(positions, methods):
                accuracy = np.sort(per_fold.loc[per_fold["method"] == method, "accuracy"].to_numpy(dtype=float))
                heights = position + np.linspace(-0.4, 0.4, len(accuracy))  # one fold a height: none hides another
                ax.plot(accuracy, heights, "o", color="0.25", markersize=2, label="one fold" if position == 0 else None)
        bars = dict(fmt="|", color="black", elinewidth=1.5, capsize=4, capthick=1.5, markersize=10)
        ax.errorbar(means, positions, xerr=errors, **bars, label="± standard error")
        if chance is not None:
            ax.axvline(chance, color="0.2", linestyle="--", linewidth=1, label=f"chance: {chance:.3f}")
        if baseline in methods:
            level = float(summary.loc[summary["method"] == baseline, "accuracy_mean"].iloc[0])
            ax.axvline(level, color="C3", linestyle=":", label=f"{labels.get(baseline, baseline)}: {level:.3f}")
        worst = summary["accuracy_min"] if "accuracy_min" in summary else pd.Series(np.nan, summary.index)
        for position, (mean, se, lowest) in enumerate(zip(means, errors, worst)):
            text = f"{mean:.3f} ± {se:.3f}" + (f"\nworst fold {lowest:.3f}" if np.isfinite(lowest) else "")
            ax.text(1.02, position, text, transform=ax.get_yaxis_transform(), va="center")  # in the right margin
        ax.set_yticks(positions, [textwrap.fill(str(labels.get(m, m)), 30) for m in methods])
        ax.set_ylim(len(methods) - 0.5, -0.5)  # best on top
        ax.set(
            xlim=(start, end),
            xlabel=f"Test accuracy, cross-validated (the axis starts at {start:.1f})",
            title="Cross-validated accuracy by method",
        )
        ax.grid(axis="y", visible=False)
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=3, frameon=False)
    return fig


def plot_prediction_timeline(windows: pd.DataFrame, title: str = "", changes=()):
    """Genre probabilities along a file, one column per window drawn at the window's centre (s), the
    window length in the axis label, and dashed lines at `changes` (s, e.g. where a medley's genre
    changes); returns the Figure.

    windows: `predict_file` output (index start_s: window start in s; one column per genre, 0-1;
    attrs window_s: the window's length). The genres are sorted by their mean probability, the file's
    prediction, most likely on top. Text width. Raises GenreError for an empty table.
    """
    import matplotlib.pyplot as plt

    if len(windows) == 0:
        raise GenreError("no windows to plot")
    ranked = windows[windows.mean().sort_values(ascending=False).index]
    window = windows.attrs.get("window_s", float(np.diff(windows.index).min()) * 2 if len(windows) > 1 else 1.0)
    centres = windows.index.to_numpy(dtype=float) + window / 2
    steps = np.diff(centres) if len(centres) > 1 else np.array([window])
    edges = np.concatenate([[centres[0] - steps[0] / 2], centres[:-1] + steps / 2, [centres[-1] + steps[-1] / 2]])
    with _plot_style():
        fig, ax = plt.subplots(figsize=(FIGURE_WIDTHS["text"], 1.2 + 0.25 * windows.shape[1]))
        mesh = ax.pcolormesh(edges, np.arange(ranked.shape[1] + 1), ranked.T.to_numpy(), cmap="magma", vmin=0, vmax=1)
        for change in changes:
            ax.axvline(change, color="C2", linestyle="--", linewidth=1.5)
        ax.set_yticks(np.arange(ranked.shape[1]) + 0.5, ranked.columns)
        ax.set_ylim(ranked.shape[1], 0)
        ax.set(xlabel=f"time (s): the centre of each {window:g} s window", title=title or "Genre probabilities")
        fig.colorbar(mesh, ax=ax, label="probability")
    return fig


# ── Report: the executed notebooks as one browsable HTML page, the figures as a LaTeX and Markdown pack ──


def _merged_notebook(notebooks: dict):
    """One nbformat notebook: a title and table of contents, then each notebook's cells as a part.

    notebooks: {path: nbformat notebook} in report order.
    """
    import nbformat

    contents = "\n".join(
        f"{i}. [{_notebook_title(notebook, path)}](#part-{path.stem})"
        for i, (path, notebook) in enumerate(notebooks.items(), 1)
    )
    cells = [
        nbformat.v4.new_markdown_cell(
            "# genre-cnn: music-genre classification with a three-branch CNN\n\n"
            f"The project's notebooks as executed, one part each:\n\n{contents}"
        )
    ]
    for path, notebook in notebooks.items():
        cells.append(nbformat.v4.new_markdown_cell(f'<a id="part-{path.stem}"></a>\n\n---\n*Part `{path.name}`*'))
        for number, cell in enumerate(notebook.cells):
            cell = nbformat.from_dict(dict(cell))
            cell.id = f"{path.stem}-{number}"  # cell ids must stay unique in the merged notebook
            if cell.cell_type == "code":  # nbval markers are for the test runner, not for readers
                cell.source = "\n".join(line for line in cell.source.splitlines() if not line.startswith("# NBVAL_"))
            cells.append(cell)
    merged = nbformat.v4.new_notebook(cells=cells, metadata=dict(next(iter(notebooks.values())).metadata))
    merged.metadata["title"] = "genre-cnn report"
    return merged


def _read_notebook(path: Path):
    """An nbformat v4 notebook read from `path`; GenreError naming the file when it is not one."""
    import nbformat

    try:
        return nbformat.read(path, as_version=4)
    except Exception as exc:  # JSON and schema errors alike: name the file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GenreError(f"{path}: not a readable notebook ({reason})") from None


def _notebook_title(notebook, path: Path) -> str:
    """The first Markdown heading of a notebook, else its file name."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return path.stem


def export_report(
    notebooks_dir: str | os.PathLike = ROOT / "notebooks",
    out_dir: str | os.PathLike = ROOT / "report",
    figures_dir: str | os.PathLike = ROOT / "figures",
) -> Path:
    """Merge the executed notebooks `NN_*.ipynb` of `notebooks_dir` into one HTML page, `out_dir/index.html`,
    and copy the figures of `figures_dir` (PNG, PDF and their CAPTIONS.md) to `out_dir/figures/`.

    The page starts with a table of contents linking to each notebook's part; figures are embedded
    (outputs carry them as data, local Markdown images are inlined), so the file can be mailed or
    opened offline; the copied figures are the ones to attach to a report, with their captions, and
    `out_dir/figures.tex` holds each in a LaTeX figure environment at its width, with its caption and
    label fig:<name> (`\\input` it), `out_dir/figures.md` the same in Markdown. Every file is written
    atomically. Returns the page's path. Raises GenreError when there are no notebooks or
    one of them has not been executed (run `make demo` first).
    """
    from nbconvert import HTMLExporter

    notebooks_dir, out_dir = Path(notebooks_dir), Path(out_dir)
    paths = sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise GenreError(f"{notebooks_dir}: no notebooks named NN_*.ipynb to export")
    notebooks = {path: _read_notebook(path) for path in paths}
    for path, notebook in notebooks.items():
        code_cells = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]
        if code_cells and not any(cell.get("execution_count") for cell in code_cells):
            raise GenreError(f"{path}: not executed (no code cell has run); run `make demo` first")

    exporter = HTMLExporter(template_name="lab", embed_images=True)
    html, _ = exporter.from_notebook_node(
        _merged_notebook(notebooks), resources={"metadata": {"path": str(notebooks_dir)}}
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "index.html"
    with _atomic_path(target) as tmp:
        tmp.write_text(html, encoding="utf-8")
    _copy_figures(Path(figures_dir), out_dir / "figures")
    _write_figure_pack(out_dir)
    return target


def _copy_figures(figures_dir: Path, target: Path) -> None:
    """Replace the folder `target` by a copy of the PNG and PDF figures of `figures_dir` and their
    CAPTIONS.md (what there is of them), built aside and renamed into place."""
    files = sorted(p for p in figures_dir.glob("*") if p.suffix in (".png", ".pdf") or p.name == CAPTIONS_FILE)
    partial, old = (target.with_name(f".{target.name}.{os.getpid()}.{kind}") for kind in ("partial", "old"))
    try:
        partial.mkdir()
        for path in files:
            shutil.copy2(path, partial / path.name)
        if target.exists():
            target.rename(old)
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


_LATEX_SYMBOLS = {"±": r"$\pm$", "→": r"$\rightarrow$", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$"}


def _write_figure_pack(out_dir: Path) -> None:
    """Write `out_dir/figures.tex` (one figure environment per figure of `out_dir/figures/`, at its width,
    with its caption and a label fig:<name>) and its Markdown twin `out_dir/figures.md`."""
    captions = figure_captions(out_dir / "figures")
    latex, markdown = [], ["# Figures\n"]
    for name, width, caption in captions[["width", "caption"]].itertuples():
        wide = width != "column"  # a text-width figure spans both columns of a two-column page
        text = "".join(_LATEX_SYMBOLS.get(c, c) for c in re.sub(r"([&%$#_{}])", r"\\\1", caption))
        latex.append(
            f"\\begin{{figure{'*' * wide}}}[tbp]\n  \\centering\n  \\includegraphics[width=\\"
            f"{'text' if wide else 'column'}width]{{figures/{name}.pdf}}\n  \\caption{{{text}}}\n"
            f"  \\label{{fig:{name}}}\n\\end{{figure{'*' * wide}}}\n"
        )
        markdown.append(f"## {name}\n\n![{name}](figures/{name}.png)\n\n*{width or 'text'} width.* {caption}\n")
    for path, entries in ((out_dir / "figures.tex", latex), (out_dir / "figures.md", markdown)):
        with _atomic_path(path) as tmp:
            tmp.write_text("\n".join(entries), encoding="utf-8")


# ── Demo data: a miniature FMA of procedurally synthesized music, self-contained ──

DEMO_VERSION = 1  # bump when the synthesis changes, so old demo datasets are regenerated
DEMO_MARKER = "demo.json"  # written last: the parameters of a complete demo dataset
_DEMO_SECONDS_PER_WORKER = 200  # s of audio per extra worker process, by default (one starts in about 1 s)
_DEMO_MP3 = dict(format="MP3", subtype="MPEG_LAYER_III", bitrate_mode="CONSTANT", compression_level=0.5)  # ~80 kb/s

_SCALES = {  # semitones above the key's root
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "pentatonic": (0, 2, 4, 7, 9),
    "hijaz": (0, 1, 4, 5, 7, 8, 10),  # maqam Hijaz
    "bhairav": (0, 1, 4, 5, 7, 8, 11),  # raga Bhairav
    "pelog": (0, 1, 3, 7, 8),  # Javanese gamelan
    "whole_tone": (0, 2, 4, 6, 8, 10),
    "chromatic": tuple(range(12)),
}
_PROGRESSIONS = {  # chord roots as scale degrees, one chord per bar; None = a random degree each bar
    "pop": ((0, 4, 5, 3), (5, 3, 0, 4), (0, 5, 3, 4), (0, 3, 4, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 0, 3, 3)),
    "static": ((0, 0, 0, 0), (0, 1, 0, -1)),
    "random": (None,),
}
_DRUM_PATTERNS = {  # 16 steps per bar; x = hit; "?" = hit with probability 1/2
    "rock": {"kick": "x.......x.x.....", "snare": "....x.......x...", "hat": "x.x.x.x.x.x.x.x."},
    "pop": {"kick": "x.....x...x.....", "clap": "....x.......x...", "hat": "x.x.x.x.x.x.x.x."},
    "boom_bap": {"kick": "x.........x..?..", "snare": "....x.......x...", "hat": "x.x.x.x.x.x.x.x?"},
    "trap": {"kick": "x......x..x.....", "clap": "........x.......", "hat": "xxxxxxx?xxxxx?xx"},
    "four_floor": {"kick": "x...x...x...x...", "clap": "....x.......x...", "open_hat": "..x...x...x...x."},
    "breakbeat": {"kick": "x.........x.....", "snare": "....x..?.?..x...", "hat": "x.x.x.x.x.x.x.x."},
    "world": {"tom_low": "x..x..x...x..x..", "tom_high": "..x..x..x?x..x.x", "shaker": "xxxxxxxxxxxxxxxx"},
    "brushes": {"kick": "x.......x.......", "shaker": "x.?.x.?.x.?.x.?."},
    "glitch": {"kick": "????????????????", "hat": "????????????????", "tom_high": "??..??..??..??.."},
}
# One recipe per genre; each clip draws every trait at random from its ranges/choices, and borrows
# each trait group from another genre with probability _DEMO_CROSSOVER, so genres overlap.
# tempo: BPM; drums: pattern or None; swing: delay of every second 16th (fraction of a 16th);
# bass/chords/lead: (voice, rhythm) or None; drive: guitar distortion; lowpass: master cutoff (Hz);
# reverb: decay (s); texture: background noise (kind, level range).
_DEMO_GENRE_RECIPES = {
    "Hip-Hop": dict(
        tempo=(75, 98),
        drums=("boom_bap", "trap"),
        swing=(0.1, 0.35),
        scales=("minor", "dorian"),
        progressions=("minor", "static"),
        bass=(("sub", "kick"),),
        chords=(("piano", "stabs"), ("fm", "stabs"), ("pad", "sustain")),
        lead=(None, ("flute", 2)),
        drive=(0, 0.2),
        lowpass=(2500, 6000),
        reverb=(0.1, 0.4),
        texture=("vinyl", (0.01, 0.04)),
    ),
    "Pop": dict(
        tempo=(100, 128),
        drums=("pop", "four_floor"),
        swing=(0, 0.05),
        scales=("major",),
        progressions=("pop",),
        bass=(("pluck", "eighths"), ("saw", "root")),
        chords=(("piano", "strum"), ("pad", "sustain"), ("fm", "stabs")),
        lead=(("fm", 4), ("saw", 4)),
        drive=(0, 0.1),
        lowpass=(8000, 11000),
        reverb=(0.3, 0.8),
        texture=(None, (0, 0)),
    ),
    "Folk": dict(
        tempo=(85, 125),
        drums=(None, None, "brushes"),
        swing=(0, 0.15),
        scales=("major", "mixolydian"),
        progressions=("pop", "static"),
        bass=(None, ("pluck", "root")),
        chords=(("pluck", "strum"), ("pluck", "arpeggio")),
        lead=(None, ("flute", 2), ("pluck", 4)),
        drive=(0, 0),
        lowpass=(6000, 10000),
        reverb=(0.2, 0.6),
        texture=(None, (0, 0)),
    ),
    "Rock": dict(
        tempo=(110, 165),
        drums=("rock", "rock", "breakbeat"),
        swing=(0, 0.05),
        scales=("minor", "mixolydian", "pentatonic"),
        progressions=("minor", "pop"),
        bass=(("saw", "eighths"),),
        chords=(("guitar", "power"),),
        lead=(None, ("guitar", 4)),
        drive=(0.5, 1.0),
        lowpass=(5000, 9000),
        reverb=(0.2, 0.5),
        texture=(None, (0, 0)),
    ),
    "Experimental": dict(
        tempo=(60, 160),
        drums=(None, "glitch", "glitch"),
        swing=(0, 0.5),
        scales=("chromatic", "whole_tone"),
        progressions=("random",),
        bass=(None, ("sub", "root")),
        chords=(None, ("bell", "sustain"), ("pad", "sustain")),
        lead=(("bell", 3), ("fm", 6)),
        drive=(0, 0.6),
        lowpass=(3000, 11000),
        reverb=(0.8, 2.0),
        texture=("wind", (0.05, 0.2)),
    ),
    "International": dict(
        tempo=(90, 135),
        drums=("world", "world", None),
        swing=(0, 0.2),
        scales=("hijaz", "bhairav", "pelog", "pentatonic"),
        progressions=("static",),
        bass=(("drone", "drone"),),
        chords=(None, ("pluck", "arpeggio")),
        lead=(("sitar", 4), ("flute", 3)),
        drive=(0, 0.1),
        lowpass=(6000, 10000),
        reverb=(0.3, 0.8),
        texture=(None, (0, 0)),
    ),
    "Electronic": dict(
        tempo=(118, 138),
        drums=("four_floor", "breakbeat"),
        swing=(0, 0.1),
        scales=("minor", "dorian"),
        progressions=("minor", "static"),
        bass=(("saw", "offbeat"), ("sub", "kick")),
        chords=(("pad", "sustain"), ("saw", "stabs")),
        lead=(("saw", 8), ("fm", 8)),
        drive=(0, 0.3),
        lowpass=(7000, 11000),
        reverb=(0.3, 0.9),
        texture=(None, (0, 0)),
    ),
    "Instrumental": dict(
        tempo=(60, 95),
        drums=(None, None, "brushes"),
        swing=(0, 0.1),
        scales=("major", "minor", "dorian"),
        progressions=("pop", "minor"),
        bass=(None, ("piano", "walking")),
        chords=(("piano", "arpeggio"), ("pad", "sustain")),
        lead=(("piano", 3), ("flute", 2)),
        drive=(0, 0),
        lowpass=(5000, 10000),
        reverb=(0.8, 1.8),
        texture=(None, (0, 0)),
    ),
}
_DEMO_CROSSOVER = 0.2  # probability that a clip borrows a trait group from another genre, per group
_DEMO_TRAIT_GROUPS = (
    ("tempo", "swing"),
    ("drums",),
    ("scales", "progressions"),
    ("bass", "chords"),
    ("lead",),
    ("drive", "lowpass", "reverb", "texture"),
)
# FMA's own genre ids, and two genres of FMA-medium whose tracks the demo lists without audio
_FMA_GENRE_IDS = {
    "Hip-Hop": 21,
    "Pop": 10,
    "Folk": 17,
    "Rock": 12,
    "Experimental": 38,
    "International": 2,
    "Electronic": 15,
    "Instrumental": 1235,
    "Blues": 3,
    "Classical": 5,
}
_WORDS = (
    (
        "Amber Blue Broken Copper Crystal Distant Electric Golden Hollow Lonely Midnight Northern Paper "
        "Quiet Silver Velvet"
    ).split(),
    (
        "Anchor Bridge Engine Garden Harbor Lantern Machine Meadow Mirror "
        "Orchard River Signal Static Tide Window Winter"
    ).split(),
)


def make_demo_dataset(
    root: str | os.PathLike | None = None,
    cfg: Config | None = None,
    *,
    clips_per_genre: int | None = None,
    seconds: float | None = None,
    sr: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> pd.DataFrame:
    """Write a miniature FMA of synthesized music at `root` (default `cfg.data_root`) and load it.

    Layout and metadata as the real download: `fma_metadata/tracks.csv` (two-level header; the
    small-subset clips plus a few FMA-medium tracks without audio) and `fma_small/XXX/XXXXXX.mp3`.
    `clips_per_genre` clips (default cfg.demo_clips_per_genre) of each genre in `cfg.genres`, each
    `seconds` long (cfg.clip_seconds) at `sr` Hz (cfg.sample_rate), split 80/10/10 per genre; one
    training clip is a deliberately truncated MP3, like the real set's broken files. Deterministic
    for a `seed` (cfg.seed). The set is built in a temporary folder renamed into place, so an
    interrupted run is redone; a complete set with the same parameters is not regenerated, one
    with other parameters is replaced. `workers` processes synthesize the clips (default: every
    available core, fewer for a small set); each clip has its own seeded generator, so the files
    are byte for byte the same for any number of workers. Returns
    `load_tracks(root, "small", cfg.genres)`. Raises DataError when `root` exists and is not a
    demo dataset (it is never overwritten).
    """
    from tqdm.auto import tqdm

    cfg = cfg or get_config("demo")
    root = Path(root or cfg.data_root).expanduser().resolve()
    params = dict(
        version=DEMO_VERSION,
        clips_per_genre=int(clips_per_genre or cfg.demo_clips_per_genre),
        seconds=float(seconds or cfg.clip_seconds),
        sample_rate=int(sr or cfg.sample_rate),
        seed=int(cfg.seed if seed is None else seed),
        genres=list(cfg.genres),
    )
    marker = root / DEMO_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return load_tracks(root, "small", cfg.genres)
    if root.is_dir() and any(root.iterdir()) and not marker.is_file():
        raise DataError(f"{root}: exists and is not a demo dataset; not overwriting it (choose an empty folder)")

    partial = root.with_name(f".{root.name}.partial")  # leftovers of an interrupted run are discarded
    shutil.rmtree(partial, ignore_errors=True)
    metadata = _demo_metadata(params)
    small = metadata[metadata["set", "subset"] == "small"]
    broken_id = small.index[small["set", "split"] == "training"].min()
    jobs = [
        (str(audio_path(partial, track_id)), genre, clip_number, bool(track_id == broken_id))
        for clip_number, (track_id, genre) in enumerate(small["track", "genre_top"].items())
    ]
    if workers is None:  # a worker process takes about a second to start: not worth it for a few clips
        workers = min(_available_cores(), int(len(jobs) * params["seconds"] // _DEMO_SECONDS_PER_WORKER))
    with tqdm(total=len(jobs), desc="demo clips", unit="clip", mininterval=1, disable=not progress) as bar:
        for _ in _feature_results(list(enumerate(jobs)), params, max(1, workers), compute=_write_demo_clip):
            bar.update()
    metadata.to_csv(_mkdir(partial / "fma_metadata") / "tracks.csv")
    (partial / DEMO_MARKER).write_text(json.dumps(params, indent=2) + "\n")
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, root)
    return load_tracks(root, "small", cfg.genres)


def _write_demo_clip(job: tuple[str, str, int, bool], params: dict) -> None:
    """Synthesize one demo clip (path, genre, clip number, broken?) and write it as MP3; the
    generator is seeded by the dataset's seed and the clip number only, so any process gives the
    same file."""
    import soundfile as sf

    path, genre, clip_number, broken = job
    sr = params["sample_rate"]
    rng = np.random.default_rng([params["seed"], clip_number])
    audio = synthesize_clip(genre, int(round(sr * params["seconds"])), sr, rng)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, sr, **_DEMO_MP3)
    if broken:  # keep the first 64 bytes: a header and no complete frame
        Path(path).write_bytes(Path(path).read_bytes()[:64])


def _demo_metadata(params: dict) -> pd.DataFrame:
    """The demo's tracks.csv: FMA's two-level columns, small clips plus FMA-medium tracks without audio."""
    rng = np.random.default_rng([params["seed"], 2017])
    genres, per_genre = params["genres"], params["clips_per_genre"]
    extra = ["Blues", "Classical", *genres[:2]]  # FMA-medium only: load_tracks(subset="small") skips them
    genre = np.array([g for g in genres for _ in range(per_genre)] + [g for g in extra for _ in range(2)], dtype=object)
    subset = np.array(["small"] * (len(genres) * per_genre) + ["medium"] * (2 * len(extra)), dtype=object)
    order = rng.permutation(len(genre))  # genres interleaved along the track ids, as in FMA
    genre, subset = genre[order], subset[order]
    n = len(genre)
    track_ids = np.sort(rng.choice(np.arange(2, 156_000), size=n, replace=False))
    split = stratified_split([f"{g}/{s}" for g, s in zip(genre, subset)], seed=params["seed"])
    artist_numbers = rng.integers(0, len(_WORDS[0]), size=n)
    columns = {
        ("album", "id"): rng.integers(1, 22_000, size=n),
        ("album", "title"): [f"{rng.choice(_WORDS[0])} {rng.choice(_WORDS[1])}s" for _ in range(n)],
        ("artist", "id"): artist_numbers + 100 * np.array([_FMA_GENRE_IDS.get(g, 0) for g in genre]),
        ("artist", "name"): [
            f"The {_WORDS[0][a]} {g.replace('-', ' ')} Ensemble" for a, g in zip(artist_numbers, genre)
        ],
        ("set", "split"): split,
        ("set", "subset"): subset,
        ("track", "bit_rate"): 80_000,
        ("track", "date_created"): pd.Timestamp("2008-11-26")
        + pd.to_timedelta(rng.integers(0, 3000 * 86400, size=n), unit="s"),
        ("track", "duration"): rng.integers(90, 420, size=n),  # s, the full track's; the clip is an excerpt
        ("track", "genre_top"): genre,
        ("track", "genres"): [f"[{_FMA_GENRE_IDS.get(g, 0)}]" for g in genre],
        ("track", "license"): rng.choice(
            [
                "Attribution-NonCommercial-ShareAlike 3.0 International",
                "Attribution 4.0 International",
                "Creative Commons Attribution",
            ],
            size=n,
        ),
        ("track", "listens"): rng.integers(50, 20_000, size=n),
        ("track", "title"): [f"{rng.choice(_WORDS[0])} {rng.choice(_WORDS[1])}" for _ in range(n)],
    }
    table = pd.DataFrame(columns, index=pd.Index(track_ids, name="track_id"))
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def synthesize_clip(genre: str, n_samples: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A clip of procedurally composed music in the style of `genre` (a key of _DEMO_GENRE_RECIPES).

    Draws tempo, drum pattern, key, scale, chord progression, voices and effects from the genre's
    recipe (sometimes borrowing a trait group from another genre), renders drums, bass, chords, lead
    and background texture, mixes them with reverb and a low-pass, and peak-normalizes. Returns
    `n_samples` float32 samples at `sr` Hz, peak between 0.5 and 0.8. Same generator state, same clip.
    """
    from scipy import signal

    recipe = dict(_DEMO_GENRE_RECIPES[genre])
    for group in _DEMO_TRAIT_GROUPS:
        if rng.random() < _DEMO_CROSSOVER:
            donor = _DEMO_GENRE_RECIPES[rng.choice([g for g in _DEMO_GENRE_RECIPES if g != genre])]
            recipe.update({trait: donor[trait] for trait in group})

    def pick(choices):
        return choices[rng.integers(len(choices))]

    step = 60 / rng.uniform(*recipe["tempo"]) / 4  # s per 16th note
    swing = rng.uniform(*recipe["swing"])
    n_bars = int(np.ceil(n_samples / sr / (16 * step)))
    scale = _SCALES[pick(recipe["scales"])]
    key = int(rng.integers(40, 52))  # MIDI note of the bass root, E2..D#3
    progression = pick(_PROGRESSIONS[pick(recipe["progressions"])])
    chord_roots = [int(rng.integers(-3, 7)) if progression is None else progression[bar % 4] for bar in range(n_bars)]

    def time_of(s):  # onset (s) of 16th number s, swung and humanized
        return max(0.0, (s + swing * (s % 2)) * step + rng.normal(0, 0.004))

    def midi(degree, octave=0):
        octaves, index = divmod(degree, len(scale))
        return key + 12 * (octave + octaves) + scale[index]

    gain = {layer: rng.uniform(0.3, 1.0) for layer in ("drums", "bass", "chords", "lead")}  # the mix
    mix = np.zeros(n_samples)
    drums = pick(recipe["drums"])
    if drums:
        kit = _drum_kit(sr, rng)
        for name, pattern in _DRUM_PATTERNS[drums].items():
            for s in range(16 * n_bars):
                hit = pattern[s % 16]
                if hit == "x" or (hit == "?" and rng.random() < 0.5):
                    _add(mix, gain["drums"] * rng.uniform(0.6, 1.0) * kit[name], time_of(s), sr)
    notes = []  # (voice, start s, duration s, MIDI note, velocity)
    if bass := pick(recipe["bass"]):
        voice, rhythm = bass
        for bar, degree in enumerate(chord_roots):
            hits = {
                "root": (0, 8),
                "eighths": range(0, 16, 2),
                "offbeat": (2, 6, 10, 14),
                "kick": (0, 7, 10),
                "walking": (0, 4, 8, 12),
                "drone": (0,),
            }[rhythm]
            for i, s in enumerate(hits):
                length = {"drone": 16, "kick": 5, "root": 8}.get(rhythm, 2 if rhythm != "walking" else 4)
                note = midi(degree + (i % 3 if rhythm == "walking" else 0))
                notes.append((voice, time_of(16 * bar + s), length * step, note, gain["bass"]))
                if rhythm == "drone":  # tanpura-like root and fifth under every bar
                    notes.append((voice, time_of(16 * bar), 16 * step, midi(0) + 7, 0.7 * gain["bass"]))
    if chords := pick(recipe["chords"]):
        voice, rhythm = chords
        for bar, degree in enumerate(chord_roots):
            triad = [midi(degree + d, 1) for d in (0, 2, 4)]
            if rhythm == "power":
                triad = [midi(degree, 1), midi(degree, 1) + 7, midi(degree, 2)]
            starts = {
                "sustain": (0,),
                "strum": (0, 4, 8, 12),
                "stabs": (3, 6, 11, 14),
                "power": range(0, 16, 2),
                "arpeggio": range(0, 16, 2),
            }[rhythm]
            length = {"sustain": 16, "strum": 6, "stabs": 1.5, "power": 2, "arpeggio": 3}[rhythm]
            for i, s in enumerate(starts):
                chord = [triad[i % 3] + 12 * (i % 6 >= 3)] if rhythm == "arpeggio" else triad
                for j, note in enumerate(chord):  # strums spread the strings by 12 ms
                    start = time_of(16 * bar + s) + (0.012 * j if rhythm == "strum" else 0)
                    notes.append((voice, start, length * step, note, gain["chords"] * rng.uniform(0.4, 0.6)))
    if lead := pick(recipe["lead"]):
        voice, notes_per_bar = lead
        degree = int(rng.integers(0, len(scale)))
        for s in range(0, 16 * n_bars, 16 // notes_per_bar):
            if rng.random() < 0.25:  # a rest
                continue
            leap = rng.integers(-5, 6) if progression is None else rng.choice([-2, -1, -1, 0, 1, 1, 2])
            degree = int(np.clip(degree + leap, -2, len(scale) + 4))
            notes.append(
                (
                    voice,
                    time_of(s),
                    16 // notes_per_bar * step * 0.9,
                    midi(degree, 2),
                    gain["lead"] * rng.uniform(0.5, 0.7),
                )
            )
    drive = rng.uniform(*recipe["drive"])
    for voice, start, duration, note, velocity in notes:
        freq = 440.0 * 2 ** ((note - 69) / 12)
        _add(mix, velocity * _voice(voice, freq, int(duration * sr), sr, rng, drive=drive), start, sr)

    texture, levels = recipe["texture"]
    if texture == "vinyl":  # hiss plus sparse crackles
        crackle = (rng.random(n_samples) < 3e-4) * rng.normal(0, 8, n_samples)
        mix += rng.uniform(*levels) * (0.3 * rng.normal(0, 1, n_samples) + crackle) * np.abs(mix).max()
    elif texture == "wind":  # band-passed noise swelling and fading
        band = _butter("bandpass", np.sort(rng.uniform(200, 6000, 2)) + [0, 300], sr)
        swell = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.05, 0.4) * np.arange(n_samples) / sr + rng.uniform(0, 6))
        mix += (
            rng.uniform(*levels)
            * 6
            * signal.sosfilt(band, rng.normal(0, 1, n_samples))
            * swell
            * max(np.abs(mix).max(), 0.1)
        )
    reverb_s = rng.uniform(*recipe["reverb"])
    impulse = rng.normal(0, 1, int(reverb_s * sr)) * np.exp(-6.9 * np.arange(int(reverb_s * sr)) / (reverb_s * sr))
    wet = signal.fftconvolve(mix, impulse)[:n_samples]
    mix = mix + rng.uniform(0.15, 0.35) * wet * np.abs(mix).max() / max(np.abs(wet).max(), 1e-9)
    mix = signal.sosfilt(_butter("lowpass", rng.uniform(*recipe["lowpass"]), sr), mix)
    peak = np.abs(mix).max()
    if peak == 0:
        return np.zeros(n_samples, dtype=np.float32)
    return (mix * rng.uniform(0.5, 0.8) / peak).astype(np.float32)


def _add(mix: np.ndarray, sound: np.ndarray, start: float, sr: int) -> None:
    """Add `sound` into `mix` from `start` seconds on, cutting what runs past the end."""
    i = int(start * sr)
    if i < len(mix):
        mix[i : i + len(sound)] += sound[: len(mix) - i]


def _butter(kind: str, cutoff, sr: int) -> np.ndarray:
    """Second-order Butterworth filter (second-order sections), cutoffs in Hz kept below Nyquist."""
    from scipy import signal

    cutoff = np.minimum(np.atleast_1d(cutoff).astype(float), 0.45 * sr)
    if cutoff.size == 2:
        cutoff[0] = min(cutoff[0], 0.5 * cutoff[1])
    return signal.butter(2, cutoff if cutoff.size == 2 else cutoff[0], kind, fs=sr, output="sos")


def _drum_kit(sr: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One synthesized hit per drum name of _DRUM_PATTERNS, tuned a little differently per clip."""
    from scipy import signal

    def decay(seconds, tau):
        t = np.arange(int(seconds * sr)) / sr
        return t, np.exp(-t / tau)

    def noise(seconds, tau, band):
        t, env = decay(seconds, tau)
        sos = _butter("bandpass" if np.ndim(band) else "highpass", band, sr)
        return signal.sosfilt(sos, rng.normal(0, 1, t.size)) * env

    t, env = decay(0.5, 0.12)
    kick_hz = rng.uniform(40, 60) + 90 * np.exp(-t / 0.03)  # pitch sweeps down
    kit = {"kick": np.sin(2 * np.pi * np.cumsum(kick_hz) / sr) * env}
    t, env = decay(0.25, 0.05)
    kit["snare"] = 0.5 * np.sin(2 * np.pi * rng.uniform(170, 220) * t) * env + 0.8 * noise(0.25, 0.06, [1500, 7000])
    clap = noise(0.3, 0.08, [900, 3000])
    kit["clap"] = sum(np.roll(clap, int(k * 0.011 * sr)) * g for k, g in enumerate((0.6, 0.8, 1.0)))
    kit["hat"] = 0.35 * noise(0.08, 0.015, 7000)
    kit["open_hat"] = 0.3 * noise(0.3, 0.09, 6500)
    kit["shaker"] = 0.2 * noise(0.06, 0.02, [5000, 10000])
    for name, base in (("tom_low", rng.uniform(90, 140)), ("tom_high", rng.uniform(250, 400))):
        t, env = decay(0.4, 0.09)
        kit[name] = np.sin(2 * np.pi * np.cumsum(base * (1 + 0.5 * np.exp(-t / 0.02))) / sr) * env  # tabla-like bend
    return kit


def _voice(name: str, freq: float, n: int, sr: int, rng: np.random.Generator, drive: float = 0.0) -> np.ndarray:
    """One note of `n` samples of an instrument voice at `freq` Hz, peak about 1, faded out at the end."""
    n = max(n, 16)
    t = np.arange(n) / sr
    if name in ("pluck", "sitar"):
        tone = _karplus_strong(freq, n, sr, rng, loss=0.998 if name == "sitar" else 0.996)
        if name == "sitar":  # the buzzing bridge adds harmonics
            tone = np.tanh(4 * tone)
    elif name == "piano":  # additive, higher partials slightly sharp and dying faster
        partials = [k for k in range(1, 9) if k * freq < sr / 2.2]
        tone = sum(
            np.sin(2 * np.pi * k * freq * (1 + 0.0004 * k * k) * t) * np.exp(-t * (1.5 + 0.8 * k)) / k for k in partials
        )
    elif name in ("fm", "bell"):  # FM: electric piano (ratio 1) or inharmonic bell (ratio 3.5)
        ratio, env = (1.0, np.exp(-t / 0.6)) if name == "fm" else (3.5, np.exp(-t / 1.2))
        tone = env * np.sin(2 * np.pi * freq * t + rng.uniform(1, 4) * env * np.sin(2 * np.pi * ratio * freq * t))
    elif name == "flute":  # sine with vibrato and breath noise
        vibrato = 1 + 0.006 * np.sin(2 * np.pi * 5 * t)
        phase = 2 * np.pi * np.cumsum(freq * vibrato) / sr
        tone = (np.sin(phase) + 0.2 * np.sin(2 * phase) + 0.05 * rng.normal(0, 1, n)) * np.minimum(1, t / 0.08)
    elif name == "sub":  # 808-style sine bass with a short pitch drop
        tone = np.sin(2 * np.pi * np.cumsum(freq * (1 + 0.3 * np.exp(-t / 0.03))) / sr) * np.exp(-t / 0.8)
    elif name == "drone":  # organ-like sustained root
        tone = sum(np.sin(2 * np.pi * k * freq * t) / k for k in (1, 2, 3, 4)) * np.minimum(1, t / 0.3)
    else:  # "saw", "pad", "guitar": naive sawtooth(s)
        detunes = (0.996, 1.0, 1.004) if name == "pad" else (1.0,)
        tone = sum(2 * ((freq * d * t + rng.random()) % 1) - 1 for d in detunes) / len(detunes)
        if name == "pad":
            tone = tone * np.minimum(1, t / (0.3 * t[-1] + 1e-3))
        elif name == "guitar":
            tone = np.tanh((2 + 10 * drive) * tone) * np.exp(-t / 1.5)
        else:
            tone = tone * np.exp(-t / 0.4)
    fade = min(n, int(0.01 * sr))
    tone = np.asarray(tone, dtype=float)
    tone[-fade:] *= np.linspace(1, 0, fade)
    return tone


def _karplus_strong(freq: float, n: int, sr: int, rng: np.random.Generator, loss: float = 0.996) -> np.ndarray:
    """A plucked string: a noise burst recirculated through a delay line of one period and an
    averaging filter. Computed in closed form: period k is the burst filtered k times (via the FFT)."""
    period = max(2, int(round(sr / freq)))
    burst = np.fft.rfft(rng.uniform(-1, 1, period))
    loop = loss * 0.5 * (1 + np.exp(-2j * np.pi * np.arange(burst.size) / period))  # one trip, per harmonic
    periods = np.arange(-(-n // period))[:, None]
    return np.fft.irfft(burst * loop**periods, n=period).ravel()[:n]


# ── Command line: python genre_utils.py download | demo-data | report | predict | musicnn-weights | convert-run ──


def main(argv: list[str] | None = None) -> int:
    """The command line: `python genre_utils.py [--profile P] [--data DIR] <command>`; returns the exit status."""
    import argparse

    parser = argparse.ArgumentParser(prog="genre_utils.py", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help="settings preset (default: $GENRE_PROFILE, else demo)")
    parser.add_argument("--data", help="data root (default: $GENRE_DATA, else the preset's)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    demo = commands.add_parser("demo-data", help="generate the demo dataset at the data root unless it is complete")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(run=_cli_demo_data)
    download = commands.add_parser(
        "download",
        help="download, verify and unpack FMA into the data root (default: the seed preset's, data/fma), then check it",
    )
    download.add_argument(
        "archives",
        nargs="*",
        default=["metadata", "small"],
        metavar="ARCHIVE",
        help=f"any of {', '.join(FMA_ARCHIVES)} (default: metadata small)",
    )
    download.add_argument("--base-url", help=f"where the zips are (default: ${FMA_URL_VARIABLE}, else {FMA_BASE_URL})")
    download.add_argument(
        "--sha1",
        action="append",
        default=[],
        metavar="NAME=HEX",
        help="expected SHA-1 of an archive, e.g. fma_small.zip=<40 hex digits>, for a mirror that repacks (repeatable)",
    )
    download.add_argument("--quiet", action="store_true", help="no progress bars")
    download.set_defaults(run=_cli_download, default_profile="seed")
    report = commands.add_parser("report", help="export the executed notebooks as one HTML page in report/")
    report.set_defaults(run=_cli_report)
    predict = commands.add_parser(
        "predict",
        help="top genres of audio files of any length: zero-shot from musicnn's tags, or with a trained --run",
    )
    predict.add_argument("songs", nargs="+", metavar="SONG", help="audio files (mp3, wav, flac, ogg, ...)")
    predict.add_argument(
        "--run",
        dest="run_dir",
        help="run folder written by training, e.g. runs/demo-full (default: zero-shot genres from musicnn's MSD tags)",
    )
    predict.add_argument("--top", type=int, default=3, help="genres to list per file (default 3)")
    predict.add_argument("--plot", help="save a timeline of the window predictions to this image file")
    predict.set_defaults(run=_cli_predict)
    weights = commands.add_parser(
        "musicnn-weights", help="download musicnn (ISC licence) from PyPI and convert its MSD and MTT weights, once"
    )
    weights.set_defaults(run=_cli_musicnn_weights)
    convert = commands.add_parser(
        "convert-run",
        help="rewrite an embedding run of your own from an older version (pickled classifier.joblib) as data",
    )
    convert.add_argument("run_dir", metavar="RUN", help="the run folder holding classifier.joblib")
    convert.add_argument(
        "--trust-pickle",
        action="store_true",
        help="required: loading the pickle runs whatever code it holds, so use it only on runs you trained yourself",
    )
    convert.set_defaults(run=_cli_convert_run)
    args = parser.parse_args(argv)
    try:
        cfg = get_config(args.profile or getattr(args, "default_profile", None), args.data)
        return args.run(cfg, args) or 0
    except GenreError as exc:
        parser.exit(1, f"{parser.prog} {args.command}: error: {exc}\n")


def _cli_report(cfg: Config, args) -> None:
    """`report`: the executed notebooks as one HTML page, beside the figures of `cfg.figures_dir`."""
    page = export_report(figures_dir=cfg.figures_dir)
    figures = _shown(page.parent / "figures")
    print(f"report written to {_shown(page)}, its figures to {figures}, listed in figures.tex and figures.md")


def _cli_demo_data(cfg: Config, args) -> None:
    """`demo-data`: make (or find complete) the demo dataset and say what is there."""
    tracks = make_demo_dataset(cfg.data_root, cfg, progress=not args.quiet)
    counts = tracks["split"].value_counts()
    print(
        f"demo dataset at {cfg.data_root}: {len(tracks)} clips of {cfg.clip_seconds:g} s, "
        f"{tracks['genre'].nunique()} genres ({', '.join(f'{counts.get(s, 0)} {s}' for s in SPLITS)})"
    )


def _cli_download(cfg: Config, args) -> None:
    """`download`: fetch, verify and unpack FMA archives, then say what the dataset holds."""
    sha1 = {}
    for item in args.sha1:
        name, equals, digest = item.partition("=")
        if not equals:
            raise ConfigError(f"--sha1 {item}: expected NAME=HEX, e.g. fma_small.zip=<40 hexadecimal digits>")
        sha1[name] = digest
    folders = download_fma(cfg.data_root, args.archives, base_url=args.base_url, sha1=sha1, progress=not args.quiet)
    print(f"unpacked in {cfg.data_root}: {', '.join(folder.name + '/' for folder in folders)}")
    audio = [key for key in args.archives if key != "metadata"]
    if audio and (cfg.data_root / "fma_metadata" / "tracks.csv").is_file():
        print(check_dataset(cfg.replace(subset=audio[-1])).summary())


def _cli_musicnn_weights(cfg: Config, args) -> None:
    """`musicnn-weights`: fetch and convert musicnn's weights (MSD and MTT networks) unless they are there."""
    paths = ", ".join(map(str, fetch_musicnn_weights()))
    print(f"musicnn weights (musicnn 0.1.0 by Jordi Pons, ISC licence): {paths}")


def _cli_convert_run(cfg: Config, args) -> None:
    """`convert-run`: an old embedding run's pickled classifier rewritten in skops' format (opt-in: it unpickles)."""
    run_dir = Path(args.run_dir)
    old = run_dir / "classifier.joblib"
    if not old.is_file():
        raise DataError(f"{old}: not found; only embedding runs from older versions need converting")
    if not args.trust_pickle:
        raise ConfigError(
            f"{old}: loading a pickle runs any code it holds; if you trained this run yourself, "
            "repeat with --trust-pickle"
        )
    import joblib

    print(f"warning: unpickling {old}: this runs any code it holds", file=sys.stderr)
    pipeline = joblib.load(old)
    _write_classifier(run_dir / "classifier.skops", pipeline)
    versions = _read_json(run_dir / "versions.json") if (run_dir / "versions.json").is_file() else {}
    _write_json(run_dir / "versions.json", {**versions, "run_format": RUN_FORMAT})
    old.unlink()
    print(f"{run_dir}: classifier.joblib converted to classifier.skops")


def _cli_predict(cfg: Config, args) -> int:
    """`predict`: the top genres of each file, zero-shot from musicnn's tags without --run, else with a
    trained run (a CNN's, or a classifier of musicnn embeddings); returns 1 if a file failed."""
    if args.run_dir is None:
        predict = functools.partial(predict_file_zero_shot, model=load_musicnn())
        uncovered = [genre for genre in GENRES if genre not in ZERO_SHOT_GENRES]
        print(f"zero-shot genres from musicnn's MSD tags (no training; not covered: {', '.join(uncovered)})")
    else:
        run_dir = Path(args.run_dir)
        if (run_dir / "classifier.json").is_file():
            classifier, run_cfg, info = load_embedding_run(run_dir)
            predict = functools.partial(
                predict_file_embeddings, classifier=classifier, cfg=run_cfg, info=info, model=load_musicnn()
            )
        else:
            model, run_cfg, _ = load_run(run_dir)
            predict = functools.partial(predict_file, model=model, cfg=run_cfg)
        if _run_source(run_dir, run_cfg) == "synthetic":
            print(
                f"warning: {_shown(run_dir)} was trained on the synthetic demo set, so its genres are those of "
                "synthetic clips, not of real songs; drop --run for musicnn's zero-shot genres, or train "
                "on real recordings (README: Using the real FMA-small)"
            )
    failed = 0
    for song in args.songs:
        try:
            windows = predict(song, progress=sys.stderr.isatty())  # a bar for files over 3 minutes
        except AudioError as exc:
            print(f"genre_utils.py predict: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        facts = windows.attrs
        print(
            f"{_shown(song)}: {len(windows)} window{'s' * (len(windows) > 1)} of {facts['window_s']:.3g} s "
            f"({facts['seconds']:.1f} s of audio)"
        )
        problems = audio_warnings(windows)
        for problem in problems:
            print(f"  warning: {_shown(song)}: {problem}")
        if facts["level_db"] < SILENCE_DB:
            continue
        probabilities = facts.get("genres", windows.mean()).sort_values(ascending=False)
        for rank, (genre, probability) in enumerate(probabilities.head(args.top).items(), start=1):
            print(f"  {rank}. {genre:<14} {probability:6.1%}")
        if "tags" in facts:
            print(f"  MSD tags: {', '.join(f'{tag} {p:.0%}' for tag, p in facts['tags'].head(5).items())}")
        if args.plot:
            plot = Path(args.plot)
            if len(args.songs) > 1:
                plot = plot.with_name(f"{plot.stem}-{Path(song).stem}{plot.suffix}")
            fig = plot_prediction_timeline(windows, title=Path(song).name)
            plot.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(plot, dpi=FIGURE_DPI, bbox_inches="tight")
            print(f"  timeline: {plot}")
    return 1 if failed else 0


def _run_source(run_dir: Path, cfg: Config) -> str:
    """The DATA_SOURCES key a run was trained on: as its data.json (CNN), classifier.json (embedding
    classifier) or finetune.json (fine-tuned musicnn) records it, else (a run from before that was
    recorded) what its data root holds now."""
    for name in ("data.json", "classifier.json", "finetune.json"):
        with contextlib.suppress(OSError, ValueError):
            if source := json.loads((run_dir / name).read_text()).get("source"):
                return source
    return data_source(cfg.data_root)


if __name__ == "__main__":
    raise SystemExit(main())
