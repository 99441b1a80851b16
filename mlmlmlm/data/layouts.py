"""Write recordings in any of the three layouts a user may bring (paper windows, pairs at their
own rates, Bela logger folders), with no ``corpus.json`` and no controls: what a researcher's
own folder looks like, made from the default corpus.

Introduced in notebook 01_dataset (the README's "bring your own recordings"); the tests run the
whole pipeline on folders made here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from mlmlmlm.data.bela import write_bela_log
from mlmlmlm.data.io import DataError, Recording
from mlmlmlm.data.preprocess import resample

LAYOUTS = ("windows", "pairs", "bela")


def export(recs: list[Recording], out: Path, layout: str, *, window_s: float = 6.0,
           emg_sr: float | None = None) -> list[Path]:
    """Write ``recs`` into the new folder ``out`` in ``layout``; return the files written.

    ``windows``: every recording cut into ``window_s`` 7-channel WAVs at the audio rate (EMG
    resampled up), as the paper exported them (``<name>_<k>.wav``). ``pairs``: ``<name>.audio.wav``
    + ``<name>.emg.wav`` at their own rates. ``bela``: a folder per recording with six
    ``emg<i>.bin`` logger files (EMG at ``emg_sr``, default its own rate), the audio WAV and a
    ``bela.json`` with the rate. Audio and EMG are written as 32-bit float WAVs.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(out, "is not empty; export writes into a new folder only")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for rec in recs:
        if layout == "windows":
            emg = resample(rec.emg, rec.emg_sr, rec.audio_sr)
            n = min(len(rec.audio), emg.shape[1])
            x = np.concatenate([rec.audio[None, :n], emg[:, :n]])
            size = int(window_s * rec.audio_sr)
            for k, a in enumerate(range(0, n - size + 1, size)):
                path = out / f"{rec.name}_{k:03d}.wav"
                sf.write(path, x[:, a : a + size].T, rec.audio_sr, subtype="FLOAT")
                written.append(path)
        elif layout == "pairs":
            a, e = out / f"{rec.name}.audio.wav", out / f"{rec.name}.emg.wav"
            sf.write(a, rec.audio, rec.audio_sr, subtype="FLOAT")
            sf.write(e, rec.emg.T, round(rec.emg_sr), subtype="FLOAT")
            written += [a, e]
        else:
            folder = out / rec.name
            folder.mkdir()
            sr = float(emg_sr or rec.emg_sr)
            emg = resample(rec.emg, rec.emg_sr, sr) if sr != rec.emg_sr else rec.emg
            n = round(len(rec.audio) / rec.audio_sr * sr)
            for i, ch in enumerate(emg[:, :n]):
                written.append(write_bela_log(folder / f"emg{i + 1}.bin", ch, f"emg{i + 1}"))
            audio = folder / "audio.wav"
            sf.write(audio, rec.audio, rec.audio_sr, subtype="FLOAT")
            meta = folder / "bela.json"
            meta.write_text(json.dumps({"emg_sr": sr}) + "\n")
            written += [audio, meta]
    return written
