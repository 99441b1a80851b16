"""Finding and reading recordings in the three layouts (mlmlmlm.data.io)."""

import json
import struct

import numpy as np
import pytest
import soundfile as sf

from mlmlmlm.data.io import DataError, find_recordings, load_recording, read_bela_log, scan

RNG = np.random.default_rng(0)


def noise(*shape, scale=0.1):
    return (scale * RNG.standard_normal(shape)).astype(np.float32)


def bela_log(values, var="emg1", type_code="f", project="emg-rec", start=1000, step=2048):
    """A pybela logger file built byte by byte: NUL-terminated project, variable and type code,
    uint32 pid and pid id, zero padding to 4 bytes, then 4104-byte buffers (uint64 timestamp +
    1024 float32 or 512 float64), the last one zero-padded."""
    fmt, per = {"f": ("<f", 1024), "d": ("<d", 512)}[type_code]
    header = b"".join(s.encode() + b"\0" for s in (project, var, type_code))
    header += struct.pack("<II", 4321, 7)
    header += b"\0" * (-len(header) % 4)
    body = b""
    for k, i in enumerate(range(0, len(values), per)):
        chunk = list(values[i : i + per]) + [0.0] * (per - len(values[i : i + per]))
        body += struct.pack("<Q", start + k * step) + struct.pack(f"{fmt[0]}{per}{fmt[1]}", *chunk)
    return header + body


def test_windows_file(tmp_path):
    x = noise(1000, 7)
    sf.write(tmp_path / "w1.wav", x, 8000, subtype="FLOAT")
    (ref,) = scan(tmp_path)[0]  # whole files (find_recordings splits one recording by time)
    assert (ref.name, ref.format, ref.split) == ("w1", "windows", "train")
    rec = load_recording(ref)
    assert rec.audio.shape == (1000,) and rec.emg.shape == (6, 1000)
    assert rec.audio_sr == 8000 and rec.emg_sr == 8000.0 and rec.controls is None
    np.testing.assert_allclose(rec.emg, x[:, 1:].T)
    np.testing.assert_allclose(rec.audio, x[:, 0])


def test_pair_at_own_rates_with_controls(tmp_path):
    sf.write(tmp_path / "p.audio.wav", noise(8000), 8000, subtype="PCM_16")
    sf.write(tmp_path / "p.emg.wav", noise(4000, 6), 4000, subtype="PCM_16")
    np.savez(tmp_path / "p.controls.npz", pitch=np.full(100, 60.0), loudness_db=np.zeros(100))
    (ref,) = scan(tmp_path)[0]  # whole files (find_recordings splits one recording by time)
    rec = load_recording(ref)
    assert ref.format == "pair" and rec.name == "p"
    assert rec.audio.shape == (8000,) and rec.emg.shape == (6, 4000) and rec.emg_sr == 4000.0
    assert set(rec.controls) == {"pitch", "loudness_db"}
    assert rec.controls["pitch"].dtype == np.float32 and rec.control_rate == 100.0


def test_manifest_layout_sets_splits_rates_and_names(tmp_path):
    recs = []
    for rid, split in [("a", "train"), ("b", "val"), ("c", "test"), ("d", "test_real")]:
        (tmp_path / split).mkdir()
        sf.write(tmp_path / split / f"{rid}.audio.wav", noise(800), 8000, subtype="PCM_16")
        sf.write(tmp_path / split / f"{rid}.emg.wav", noise(400, 6), 4000, subtype="PCM_16")
        recs.append({"id": rid, "split": split, "duration_s": 0.1, "driver": "synthetic"})
    channels = ["audio", "lat", "wf_r", "wf_l", "we_l", "delt", "bic"]
    manifest = {
        "name": "t",
        "audio_sr": 8000,
        "emg_sr": 4000,
        "channels": channels,
        "control_rate": 50,
        "recordings": recs,
    }
    (tmp_path / "corpus.json").write_text(json.dumps(manifest))
    refs = find_recordings(tmp_path)
    assert [(r.name, r.split) for r in refs] == [
        ("a", "train"),
        ("b", "val"),
        ("c", "test"),
        ("d", "test_real"),
    ]
    rec = load_recording(refs[3])
    assert rec.split == "test_real" and rec.channel_names == tuple(channels)
    assert rec.control_rate == 50.0


def test_splits_without_manifest(tmp_path):
    for i in range(10):
        sf.write(tmp_path / f"w{i}.wav", noise(100, 7), 8000)
    splits = [r.split for r in find_recordings(tmp_path)]
    assert splits == ["train"] * 8 + ["val", "test"]


def test_bela_log_header_padding_and_values(tmp_path):
    values = RNG.random(2500).astype(np.float32)
    for var in ("e", "emg1", "emg12", "emg123"):  # header lengths hit every padding size
        data = bela_log(values, var=var)
        path = tmp_path / f"{var}.bin"
        path.write_bytes(data)
        log = read_bela_log(path)
        assert (log.project, log.variable, log.type_code) == ("emg-rec", var, "f")
        assert len(log.values) == 3 * 1024  # the last buffer is zero-padded
        np.testing.assert_array_equal(log.values[:2500], values)
        np.testing.assert_array_equal(log.timestamps, [1000, 3048, 5096])
    path = tmp_path / "d.bin"
    path.write_bytes(bela_log(values[:600].astype(np.float64), type_code="d", step=1024))
    log = read_bela_log(path)
    assert log.values.dtype == np.float64 and len(log.values) == 1024
    np.testing.assert_allclose(log.values[:600], values[:600])


def test_bela_log_errors(tmp_path):
    good = bela_log(np.zeros(2048, np.float32), var="emg1")
    cases = {
        "trunc.bin": (good[:-10], "is not a whole number of 4104-byte buffers"),
        "text.bin": (b"hello world" * 50, "header strings are not NUL-terminated"),
        "type.bin": (b"p\0v\0c\0" + bytes(4110), "unsupported variable type 'c'"),
        "gap.bin": (
            bela_log(np.zeros(3072, np.float32), step=2048)[: -4104 * 2]
            + bela_log(np.zeros(2048, np.float32), start=1000 + 3 * 2048)[-4104 * 2 :],
            "logger buffers are not contiguous",
        ),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError) as err:
            read_bela_log(tmp_path / name)
        assert message in str(err.value)
        assert str(err.value).startswith(f"{tmp_path / name}: ")
        assert "\n" not in str(err.value)


def test_bela_folder_recording(tmp_path):
    folder = tmp_path / "session1"
    folder.mkdir()
    sf.write(folder / "mic.wav", noise(16000), 8000, subtype="PCM_16")  # 2 s
    channels = [RNG.random(4096).astype(np.float32) for _ in range(6)]  # 2.048 s at 2 kHz
    for i, ch in enumerate(channels):
        (folder / f"emg{[1, 2, 3, 4, 5, 10][i]}.bin").write_bytes(bela_log(ch, var=f"c{i}"))
    (folder / "bela.json").write_text(json.dumps({"emg_sr": 2000}))
    (ref,) = scan(tmp_path)[0]  # whole files (find_recordings splits one recording by time)
    assert (ref.name, ref.format) == ("session1", "bela")
    assert [p.name for p in ref.bin_paths][-2:] == ["emg5.bin", "emg10.bin"]  # natural order
    rec = load_recording(ref)
    assert rec.emg.shape == (6, 4000) and rec.emg_sr == 2000.0  # cut to the audio's 2 s
    np.testing.assert_array_equal(rec.emg[5], channels[5][:4000])
    order = ["emg10", "emg1", "emg2", "emg3", "emg4", "emg5"]
    (folder / "bela.json").write_text(json.dumps({"emg_sr": 2000, "channels": order}))
    rec = load_recording(scan(tmp_path)[0][0])
    np.testing.assert_array_equal(rec.emg[0], channels[5][:4000])
    # used for training, the one recording is split by time: 80 / 10 / 10 %
    parts = {r.split: load_recording(r) for r in find_recordings(tmp_path)}
    assert {k: p.emg.shape[1] for k, p in parts.items()} == {"train": 3200, "val": 400,
                                                             "test": 400}
    np.testing.assert_array_equal(parts["test"].emg[0], channels[5][3600:4000])
    assert len(parts["val"].audio) == 1600 and parts["val"].name == "session1#val"


def test_load_errors_are_one_line(tmp_path):
    sf.write(tmp_path / "w.wav", noise(100, 3), 8000)
    (ref,) = scan(tmp_path)[0]  # whole files (find_recordings splits one recording by time)
    with pytest.raises(DataError) as err:
        load_recording(ref)
    assert str(err.value) == f"{tmp_path / 'w.wav'}: found 3 channels, expected 7"
    with pytest.raises(DataError) as err:
        find_recordings(tmp_path / "nope")
    assert str(err.value) == f"{tmp_path / 'nope'}: path does not exist"
    assert isinstance(err.value, ValueError)
