"""The data types every reader shares: ``DataError``, ``Problem``, ``RecordingRef``, ``Recording``.

Introduced in notebook 01_dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

N_EMG = 6
DEFAULT_CONTROL_RATE = 100.0
DEFAULT_CHANNELS = ["audio"] + [f"emg{i}" for i in range(1, N_EMG + 1)]


class DataError(ValueError):
    """A data file that cannot be used; ``str`` is one line ``"<path>: <problem>"``."""

    def __init__(self, path, message: str) -> None:
        self.path = Path(path)
        self.message = " ".join(str(message).split())
        super().__init__(f"{self.path}: {self.message}")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one path; ``str`` is ``"<path>: <message>"``."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class RecordingRef:
    """Where a recording lives and in which format; nothing is loaded yet.

    ``format`` is ``"windows"``, ``"pair"`` or ``"bela"``; ``path`` the 7-channel WAV, the audio
    WAV or the Bela folder; ``emg_path`` the EMG WAV of a pair; ``bin_paths`` the logger files of
    a Bela folder in channel order. ``declared_audio_sr``/``declared_emg_sr`` come from
    ``corpus.json`` (``None`` without one). ``span`` is the part of the file this recording is,
    as fractions of its duration: ``(0, 1)`` but for folders of fewer than three recordings and
    no ``corpus.json``, which are split by time (``take1#train`` is ``(0, 0.8)`` of take1).
    """

    name: str
    format: str
    path: Path
    split: str = "train"
    emg_path: Path | None = None
    bin_paths: tuple[Path, ...] = ()
    controls_path: Path | None = None
    control_rate: float = DEFAULT_CONTROL_RATE
    emg_sr_hint: float | None = None
    declared_audio_sr: float | None = None
    declared_emg_sr: float | None = None
    channel_names: tuple[str, ...] = tuple(DEFAULT_CHANNELS)
    span: tuple[float, float] = (0.0, 1.0)


@dataclass
class Recording:
    """One loaded recording.

    ``audio`` [T_a] float32 in [-1, 1] at ``audio_sr``; ``emg`` [6, T_e] float32 at ``emg_sr``
    (raw sensor values, unfiltered); ``controls`` name -> [T_c] float32 at ``control_rate``.
    """

    name: str
    path: Path
    audio: np.ndarray
    audio_sr: int
    emg: np.ndarray
    emg_sr: float
    controls: dict[str, np.ndarray] | None = None
    control_rate: float = DEFAULT_CONTROL_RATE
    split: str = "train"
    format: str = "windows"
    channel_names: tuple[str, ...] = field(default_factory=lambda: tuple(DEFAULT_CHANNELS))

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.audio_sr
