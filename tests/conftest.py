"""What the tests share: one sample rate, one tone writer, one tiny config.

Test modules import them (`from conftest import SR, TINY, write_tone`); pytest puts tests/ on the path.
"""

from pathlib import Path

import numpy as np
import soundfile as sf

import genre_utils as gu

SR = 22_050  # Hz, the presets' rate: files written at it need no resampling unless a test wants it

# A three-branch CNN small enough to build and train for two epochs in seconds
TINY = gu.get_config(
    "demo",
    n_mels=16,
    cqt_bins=12,
    clip_seconds=1.5,
    first_block_channels=2,
    dense_units=8,
    batch_size=8,
    epochs=2,
    seed=7,
)


def tone(seconds: float, sr: int = SR, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    """A sine wave of `freq` Hz and peak `amplitude`, `seconds` long at `sr` (float64 samples)."""
    t = np.arange(int(round(sr * seconds))) / sr
    return amplitude * np.sin(2 * np.pi * freq * t)


def write_tone(
    path: str | Path,
    seconds: float,
    freq: float = 440.0,
    *,
    sr: int = SR,
    amplitude: float = 0.5,
    channels: int = 1,
    **options,
) -> Path:
    """Write `tone(...)` to `path` (format from the suffix, or soundfile `options` such as subtype);
    a second channel carries the tone at half the amplitude. Creates the folder; returns the path."""
    y = tone(seconds, sr, freq, amplitude)
    data = np.stack([y, 0.5 * y], axis=1) if channels == 2 else y
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, **options)
    return path
