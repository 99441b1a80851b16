"""The data check names every problem of a folder in one line (mlmlmlm.data.check)."""

import io
import json
import struct
from pathlib import Path

import numpy as np
import soundfile as sf

from mlmlmlm.data.check import NO_RECORDINGS, Problem, check_path, run_check

SR_A, SR_E = 8000, 4000
RNG = np.random.default_rng(1)


def noise(*shape):
    return (0.1 * RNG.standard_normal(shape)).astype(np.float32)


def pair(folder, name, seconds=1.0, audio=None, emg=None, emg_sr=SR_E):
    folder.mkdir(parents=True, exist_ok=True)
    a = noise(int(seconds * SR_A)) if audio is None else audio
    e = noise(int(seconds * emg_sr), 6) if emg is None else emg
    sf.write(folder / f"{name}.audio.wav", a, SR_A, subtype="PCM_16")
    sf.write(folder / f"{name}.emg.wav", e, emg_sr, subtype="PCM_16")


def messages(problems, root):
    return [(str(p.path.relative_to(root)) if p.path != root else ".", p.message) for p in problems]


def test_clean_folder_and_run_check(tmp_path):
    pair(tmp_path, "a", 1.2)
    pair(tmp_path / "sub", "b", 1.2)
    (tmp_path / "notes.md").write_text("ignored: not data")
    assert check_path(tmp_path, window_s=1.0) == []
    out = io.StringIO()
    assert run_check(tmp_path, out, window_s=1.0) == 0
    assert out.getvalue() == "OK: 2 recordings, 0.0 min\n"


def test_problem_str():
    p = Problem(Path("x/y.wav"), "is all zeros")
    assert str(p) == "x/y.wav: is all zeros"


def test_missing_path_and_empty_folder(tmp_path):
    out = io.StringIO()
    assert run_check(tmp_path / "nope", out) == 2
    assert out.getvalue() == f"{tmp_path / 'nope'}: path does not exist\n"
    assert messages(check_path(tmp_path), tmp_path) == [(".", NO_RECORDINGS)]


def test_channel_counts(tmp_path):
    sf.write(tmp_path / "w.wav", noise(SR_A, 5), SR_A)
    pair(tmp_path, "p", emg=noise(SR_E, 4))
    sf.write(tmp_path / "q.audio.wav", noise(SR_A, 2), SR_A)
    sf.write(tmp_path / "q.emg.wav", noise(SR_E, 6), SR_E)
    assert messages(check_path(tmp_path, window_s=1.0), tmp_path) == [
        ("p.emg.wav", "found 4 channels, expected 6"),
        ("q.audio.wav", "found 2 channels, expected 1"),
        ("w.wav", "found 5 channels, expected 7"),
    ]


def test_lengths_and_declared_rates(tmp_path):
    pair(tmp_path / "train", "a", emg=noise(int(1.02 * SR_E), 6))  # 20 ms longer
    pair(tmp_path / "train", "b", emg_sr=2000)
    recs = [{"id": "a", "split": "train"}, {"id": "b", "split": "train"}]
    (tmp_path / "corpus.json").write_text(json.dumps({"emg_sr": SR_E, "recordings": recs}))
    assert messages(check_path(tmp_path, window_s=1.0), tmp_path) == [
        ("train/a.emg.wav", "audio lasts 1.000 s but EMG lasts 1.020 s (more than 10 ms apart)"),
        ("train/b.emg.wav", "sample rate 2000 Hz, corpus.json declares 4000 Hz"),
    ]


def test_content_problems(tmp_path):
    e = noise(SR_E, 6)
    e[:, 1] = 0.0  # EMG channel 1 silent
    e[:200, 4] = 1.0  # 5 % of EMG channel 4 at +full scale
    pair(tmp_path, "a", emg=e)
    x = noise(SR_A, 7)
    x[10, 3] = np.nan
    sf.write(tmp_path / "w.wav", x, SR_A, subtype="FLOAT")
    pair(tmp_path, "short", seconds=0.5)
    assert messages(check_path(tmp_path, window_s=1.0), tmp_path) == [
        ("a.emg.wav", "channel 1 (emg2) is all zeros"),
        ("a.emg.wav", "channel 4 (emg5) is clipped: 5.00 % of samples at full scale"),
        ("short.audio.wav", "lasts 0.50 s, shorter than one 1-s window"),
        ("w.wav", "channel 3 (emg3) contains NaN or Inf"),
    ]


def test_unusable_files_are_all_reported(tmp_path):
    pair(tmp_path, "ok")
    (tmp_path / "broken.wav").write_bytes(b"RIFF nonsense")
    sf.write(tmp_path / "lonely.audio.wav", noise(SR_A), SR_A)
    sf.write(tmp_path / "lost.emg.wav", noise(SR_E, 6), SR_E)
    np.savez(tmp_path / "stray.controls.npz", pitch=np.zeros(10))
    (tmp_path / "take.flac").write_bytes(b"x")
    sf.write(tmp_path / "w48.wav", noise(100, 7), 48000)
    sf.write(tmp_path / "w8a.wav", noise(SR_A, 7), SR_A)
    sf.write(tmp_path / "w8b.wav", noise(SR_A, 7), SR_A)
    got = messages(check_path(tmp_path, window_s=1.0), tmp_path)
    assert got[0][0] == "broken.wav" and got[0][1].startswith("cannot be read as audio: ")
    assert got[1:] == [
        ("lonely.audio.wav", "audio file has no EMG partner lonely.emg.wav"),
        ("lost.emg.wav", "EMG file has no audio partner lost.audio.wav"),
        ("stray.controls.npz", "controls file has no recording partner"),
        ("take.flac", "unsupported file type (expected .wav, .bin or .controls.npz)"),
        ("w48.wav", "lasts 0.00 s, shorter than one 1-s window"),
        ("w48.wav", "sample rate 48000 Hz differs from the other windows' 8000 Hz"),
    ]


def test_manifest_mismatches(tmp_path):
    pair(tmp_path / "train", "a")
    pair(tmp_path / "train", "extra")
    recs = [{"id": "a", "split": "train"}, {"id": "gone", "split": "test"}]
    (tmp_path / "corpus.json").write_text(json.dumps({"recordings": recs}))
    assert messages(check_path(tmp_path, window_s=1.0), tmp_path) == [
        ("corpus.json", "recording 'gone' is listed but has no files"),
        ("train/extra.audio.wav", "not listed in corpus.json"),
    ]
    (tmp_path / "corpus.json").write_text("{not json")
    got = messages(check_path(tmp_path, window_s=1.0), tmp_path)
    assert got[0][0] == "corpus.json" and got[0][1].startswith("corpus.json cannot be read: ")


def test_controls_duration(tmp_path):
    pair(tmp_path, "a")
    np.savez(tmp_path / "a.controls.npz", pitch=np.zeros(150, np.float32))
    assert messages(check_path(tmp_path, window_s=1.0), tmp_path) == [
        ("a.controls.npz", "controls last 1.500 s but audio lasts 1.000 s"),
    ]


def _bela_file(values, var):
    header = b"proj\0" + var.encode() + b"\0f\0" + struct.pack("<II", 1, 2)
    header += b"\0" * (-len(header) % 4)
    padded = np.zeros(-(-len(values) // 1024) * 1024, np.float32)
    padded[: len(values)] = values
    return header + b"".join(
        struct.pack("<Q", k * 2048) + padded[k * 1024 : (k + 1) * 1024].astype("<f4").tobytes()
        for k in range(len(padded) // 1024)
    )


def test_bela_folder_problems(tmp_path):
    rec = tmp_path / "s1"
    rec.mkdir()
    sf.write(rec / "mic.wav", noise(SR_A), SR_A, subtype="PCM_16")
    for i in range(5):
        v = 0.5 + noise(SR_E)
        if i == 2:
            v[:100] = v.max()  # flat top: 101 of 4000 samples at the maximum
        (rec / f"emg{i + 1}.bin").write_bytes(_bela_file(v, f"emg{i + 1}"))
    (rec / "bela.json").write_text(json.dumps({"emg_sr": SR_E}))
    assert messages(check_path(tmp_path, window_s=1.0), tmp_path) == [
        ("s1", "found 5 EMG logger files, expected 6"),
    ]
    (rec / "emg6.bin").write_bytes(_bela_file(0.5 + noise(SR_E // 2), "emg6"))  # 0.512 s
    assert messages(check_path(tmp_path, window_s=1.0), tmp_path) == [
        ("s1/emg6.bin", "audio lasts 1.000 s but EMG lasts 0.512 s (more than 10 ms apart)"),
    ]
    (rec / "emg6.bin").write_bytes(_bela_file(0.5 + noise(SR_E), "emg6"))
    assert messages(check_path(tmp_path, window_s=1.0), tmp_path) == [
        ("s1/emg3.bin", "channel 0 (emg3) is clipped: 2.52 % of samples at its extreme value"),
    ]
    sf.write(rec / "mic2.wav", noise(SR_A), SR_A)
    assert messages(check_path(tmp_path, window_s=1.0), tmp_path) == [
        (".", NO_RECORDINGS),  # the only recording is unusable
        ("s1", "Bela folder holds 2 WAV files, expected 1 (the audio)"),
    ]


def _bela_rec(folder, n=6):
    folder.mkdir(parents=True)
    sf.write(folder / "mic.wav", noise(SR_A), SR_A, subtype="PCM_16")
    for i in range(n):
        (folder / f"emg{i + 1}.bin").write_bytes(_bela_file(0.5 + noise(SR_E), f"emg{i + 1}"))


def test_bela_json_unreadable_and_channels_without_logger_file(tmp_path):
    _bela_rec(tmp_path / "s1")
    (tmp_path / "s1" / "bela.json").write_text("{emg_sr: 4000")  # not JSON
    [none, (path, msg)] = messages(check_path(tmp_path, window_s=1.0), tmp_path)
    assert none == (".", NO_RECORDINGS)  # the only recording is unusable
    assert path == "s1/bela.json" and msg.startswith("bela.json cannot be read: JSONDecodeError(")
    (tmp_path / "s1" / "bela.json").write_text(json.dumps(
        {"emg_sr": SR_E, "channels": ["emg1", "emg2", "emg3", "emg4", "emg5", "emg7"]}))
    assert messages(check_path(tmp_path, window_s=1.0), tmp_path) == [
        (".", NO_RECORDINGS), ("s1/bela.json", "channels ['emg7'] have no logger file")]


def test_unknown_split_and_duplicate_names(tmp_path):
    pair(tmp_path, "a", 1.2)
    pair(tmp_path / "sub", "a", 1.2)  # the same name in two folders
    assert messages(check_path(tmp_path, window_s=1.0), tmp_path) == [
        ("sub/a.audio.wav", f"duplicate recording name 'a' (also {tmp_path / 'a.audio.wav'})")]
    (tmp_path / "sub" / "a.audio.wav").unlink()
    (tmp_path / "sub" / "a.emg.wav").unlink()
    (tmp_path / "corpus.json").write_text(json.dumps(
        {"recordings": [{"id": "a", "split": "holdout"}]}))
    assert messages(check_path(tmp_path, window_s=1.0), tmp_path) == [
        (".", NO_RECORDINGS), ("corpus.json", "recording 'a' has unknown split 'holdout'")]
