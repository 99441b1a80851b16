"""librosa's numba functions compiled once, in one process, before notebooks run side by side.

Introduced in notebook 01_dataset (the runbook calls :func:`warm` before it runs notebooks in
parallel; ``make install`` calls it once).

librosa compiles its numba functions (yin's parabolic interpolation, the onset detector's peak
picking, local minima and maxima, the phase vocoder's) with ``cache=True``, into
``__pycache__`` folders beside its sources. On a fresh install, two processes that compile the
same gufunc at the same time (two notebooks of the smoke book, two bring-your-own chapters)
leave a cache that **segfaults every later process that loads it** (numba 0.67.0, numpy 2.4.6:
two ``pytest tests/test_conditioning.py`` side by side on an empty cache pass, the third run
dies in ``librosa.util.localmin``). Compiling everything once, alone, first means parallel
processes only ever read the cache.
"""

from __future__ import annotations

import numpy as np


def warm() -> None:
    """Call every librosa function with numba code that mlmlmlm uses, on a short tone, in float32
    and float64 (a few seconds from a warm cache; about half a minute to compile it)."""
    import librosa

    from mlmlmlm import conditioning, melody
    from mlmlmlm.data.preprocess import time_stretch

    sr = 22050
    t = np.arange(sr) / sr
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (t > 0.3)  # [sr]: silence, then a note
    for x in (tone.astype(np.float32), tone):
        conditioning.scores([x], [x], sr)  # yin, peak picking, local extrema, onsets
        melody.melody_scores(x, x, sr)
        time_stretch(x[None], 1.1, sr)  # the phase vocoder, [C, T] as the datasets call it
        librosa.effects.time_stretch(x, rate=1.1)  # ... and [T]


if __name__ == "__main__":
    warm()
