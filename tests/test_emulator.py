"""The Bela emulator against the real pybela client, end to end on loopback (06_live_demo).

pybela's sync calls run its event loop until they finish and have no timeout of their own:
every call here runs under ``deadline``, which stops the loop, so a hang becomes a failure.
"""

from __future__ import annotations

import json
import math
import struct
import time
from contextlib import contextmanager

import numpy as np
import pybela
import pytest
import soundfile as sf

from mlmlmlm.data.records import DataError
from mlmlmlm.live.emulator import (
    BLOCK,
    DEFAULT_NAMES,
    INTERLEAVED_NAME,
    SLOTS,
    BelaEmulator,
    Faults,
)
from mlmlmlm.live.emulator_cli import main


def test_pybela_imports_in_the_project_env_with_numpy2():
    import bokeh
    import websockets
    from pybela import Streamer, Watcher

    assert int(np.__version__.split(".")[0]) >= 2
    assert int(bokeh.__version__.split(".")[0]) >= 3  # bokeh 2.4.3 (pybela's pin) needs numpy 1
    assert tuple(int(v) for v in websockets.__version__.split(".")[:2]) < (17, 1)
    assert issubclass(Streamer, Watcher)


# ----------------------------------------------------------------------------- helpers
@contextmanager
def deadline(streamer, seconds: float, what: str):
    """Stop pybela's event loop after ``seconds``: a pending sync call then fails, not hangs."""
    handle = streamer.loop.call_later(seconds, streamer.loop.stop)
    try:
        yield
    except RuntimeError as err:
        if "stopped before Future completed" in str(err):
            pytest.fail(f"pybela {what} did not finish within {seconds:g} s")
        raise
    finally:
        handle.cancel()


@pytest.fixture
def connect():
    made = []

    def _connect(emulator):
        s = pybela.Streamer(ip=emulator.ip, port=emulator.port)
        made.append(s)
        with deadline(s, 5, "connect"):
            assert s.connect() == 1
            s.streaming_buffers_queue_length = 10_000  # keep every buffer (default 1000)
        return s

    yield _connect
    for s in made:
        with deadline(s, 5, "cleanup"):
            s.cleanup()


def stream(s, n_blocks: int, timeout: float = 10.0, arrivals: list | None = None):
    """Stream every variable until each has ``n_blocks`` buffers; the queue per variable."""
    callback = None if arrivals is None else (
        lambda msg: arrivals.append((msg["name"], msg["buffer"]["ref_timestamp"],
                                     time.monotonic())))
    with deadline(s, 5, "start_streaming"):
        s.start_streaming(on_buffer_callback=callback)
    t_end = time.monotonic() + timeout
    while min(len(q) for q in s.streaming_buffers_queue.values()) < n_blocks:
        if time.monotonic() > t_end:
            pytest.fail(f"fewer than {n_blocks} buffers per variable within {timeout:g} s")
        s.wait(0.02)
    with deadline(s, 5, "stop_streaming"):
        s.stop_streaming()
    return s.streaming_buffers_queue


def assemble(queue: dict, names, n_blocks: int):
    """Timestamps ``[C, n_blocks]`` and samples float32 ``[C, n_blocks * BLOCK]``."""
    ts = np.array([[b["ref_timestamp"] for b in queue[n][:n_blocks]] for n in names])
    x = np.array([np.concatenate([b["data"] for b in queue[n][:n_blocks]]) for n in names])
    return ts, x.astype(np.float32)


def expected(emg: np.ndarray, n_frames: int, loop: bool) -> np.ndarray:
    f = np.arange(n_frames)
    if loop:
        return emg[:, f % emg.shape[1]]
    out = np.zeros((emg.shape[0], n_frames), np.float32)
    out[:, f < emg.shape[1]] = emg[:, f[f < emg.shape[1]]]
    return out


def random_emg(t: int, c: int = 6, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal((c, t))).astype(np.float32)


# ----------------------------------------------------------------------------- protocol
def test_list_reports_names_types_and_rate(connect):
    names = ("flexor", "extensor", "biceps", "deltoid", "lat", "wrist")
    with BelaEmulator(random_emg(4096), 2756.25, names=names, project="viola") as e:
        s = connect(e)
        assert [v["name"] for v in s.watcher_vars] == list(names)
        assert {(v["type"], v["timestamp_mode"], v["data_length"]) for v in s.watcher_vars} == {
            ("f", "dense", BLOCK)}
        assert s.sample_rate == 2756.25 and s.project_name == "viola"


def test_wire_format_header_then_4104_byte_body():
    from websockets.sync.client import connect as ws_connect

    emg = random_emg(3 * BLOCK)
    with BelaEmulator(emg, 1000.0, speed=math.inf, loop=False) as e:
        url = f"ws://{e.ip}:{e.port}/gui_"
        with ws_connect(url + "control") as ctrl, ws_connect(url + "data") as data:
            assert json.loads(ctrl.recv(timeout=5))["event"] == "connection"
            ctrl.send(json.dumps({"event": "connection-reply"}))
            ctrl.send(json.dumps({"watcher": [{"cmd": "list"}]}))
            assert json.loads(ctrl.recv(timeout=5))["watcher"]["sampleRate"] == 1000.0
            ctrl.send(json.dumps({"watcher": [{"cmd": "watch", "watchers": ["emg2"]}]}))
            for k in range(3):
                assert data.recv(timeout=5) == b"1/f"  # buffer id = index in the list
                body = data.recv(timeout=5)
                assert len(body) == 4104 and struct.unpack_from("<Q", body)[0] == k * BLOCK
                got = np.frombuffer(body, "<f4", offset=8)
                np.testing.assert_array_equal(got, emg[1, k * BLOCK:(k + 1) * BLOCK])


# ----------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("source", ["emg.wav", "window.wav", "array-looping"])
def test_stream_delivers_the_samples_in_order_at_the_rate(connect, tmp_path, source):
    sr, n_blocks, speed = 22050, 12, 4.0
    emg = random_emg(n_blocks * BLOCK - 300 if source != "array-looping" else 2500)
    loop = source == "array-looping"
    if source == "emg.wav":
        src = tmp_path / "take.emg.wav"
        sf.write(src, emg.T, sr, subtype="FLOAT")
    elif source == "window.wav":
        src = tmp_path / "take.wav"  # channel 0 is audio and must not be streamed
        sf.write(src, np.vstack([np.ones((1, emg.shape[1]), np.float32), emg]).T, sr,
                 subtype="FLOAT")
    else:
        src = emg
    arrivals: list = []
    with BelaEmulator(src, sr if loop else None, speed=speed, loop=loop) as e:
        s = connect(e)
        assert s.sample_rate == sr
        queue = stream(s, n_blocks, arrivals=arrivals)
        ts, x = assemble(queue, DEFAULT_NAMES, n_blocks)
        np.testing.assert_array_equal(ts, np.tile(np.arange(n_blocks) * BLOCK, (6, 1)))
        np.testing.assert_array_equal(x, expected(emg, n_blocks * BLOCK, loop))
        # pace: no buffer before its last frame is captured; none more than 1 s behind
        for _, stamp, t in arrivals:
            due = e.frame_time(stamp + BLOCK)
            assert due - 1e-3 <= t < due + 1.0


def test_interleaved_layout_streams_128_frame_buffers_in_order_and_intact(connect):
    """One variable ``emg`` of SLOTS values a frame (channels, then zeros): pybela parses its
    dense buffers like any other, each 1024 values = 128 whole frames, stamped by first frame."""
    frames = BLOCK // SLOTS
    n_blocks, emg = 24, random_emg(24 * (BLOCK // SLOTS) - 50)
    faults = Faults(nan_every=5, nan_len=8, nan_offset=100)
    with BelaEmulator(emg, 22050.0, speed=8.0, loop=False, interleaved=True,
                      faults=faults) as e:
        s = connect(e)
        assert [v["name"] for v in s.watcher_vars] == [INTERLEAVED_NAME]
        queue = stream(s, n_blocks)
        bufs = queue[INTERLEAVED_NAME][:n_blocks]
        assert [b["ref_timestamp"] for b in bufs] == [k * frames for k in range(n_blocks)]
        x = np.concatenate([np.asarray(b["data"], np.float32).reshape(frames, SLOTS)
                            for b in bufs])  # [frames, SLOTS]
        assert (x[:, 6:] == 0).all()  # the two spare slots
        want = expected(emg, n_blocks * frames, loop=False)
        assert e.nan_frames == [(b * frames + 100, b * frames + 108) for b in (4, 9, 14, 19)]
        for a, b in e.nan_frames:
            want[:, a:b] = np.nan
        np.testing.assert_array_equal(x[:, :6].T, want)
    with pytest.raises(ValueError, match="outside a buffer of 128 frames"):
        BelaEmulator(emg, interleaved=True, faults=Faults(nan_offset=120, nan_len=16))
    with pytest.raises(ValueError, match="at most 8 channels"):
        BelaEmulator(random_emg(100, c=9), names=[f"c{i}" for i in range(9)], interleaved=True)


def test_nan_switch_puts_nan_exactly_where_injected(connect):
    emg, n_blocks = random_emg(9 * BLOCK), 9
    faults = Faults(nan_every=3, nan_len=16, nan_offset=100, nan_channels=(1, 4))
    with BelaEmulator(emg, 1000.0, speed=math.inf, loop=False, faults=faults) as e:
        _, x = assemble(stream(connect(e), n_blocks), DEFAULT_NAMES, n_blocks)
        want = emg.copy()
        assert e.nan_frames == [(b * BLOCK + 100, b * BLOCK + 116) for b in (2, 5, 8)]
        for a, b in e.nan_frames:
            want[[1, 4], a:b] = np.nan
        np.testing.assert_array_equal(np.isnan(x), np.isnan(want))
        np.testing.assert_array_equal(x, want)  # NaN compare equal here; all else exact


def test_bursty_late_buffers_arrive_complete_and_in_order(connect):
    emg, n_blocks, burst, late = random_emg(12 * BLOCK), 12, 4, 0.02
    faults = Faults(burst=burst, late_s=late, jitter_s=0.01)
    arrivals: list = []
    with BelaEmulator(emg, 22050.0, speed=4.0, loop=False, faults=faults) as e:
        ts, x = assemble(stream(connect(e), n_blocks, arrivals=arrivals), DEFAULT_NAMES, n_blocks)
        np.testing.assert_array_equal(ts[0], np.arange(n_blocks) * BLOCK)
        np.testing.assert_array_equal(x, emg)
        for _, stamp, t in arrivals:  # a block waits for the last block of its burst, + late
            burst_end = (stamp // (burst * BLOCK) + 1) * burst * BLOCK
            assert t >= e.frame_time(burst_end) + late - 1e-3
        stamps = [stamp for name, stamp, _ in arrivals if name == "emg1"]  # callbacks lag
        assert len(stamps) >= burst and stamps == list(ts[0, :len(stamps)])


@pytest.mark.parametrize("how", ["timer-close", "on-demand-abrupt"])
def test_disconnect_is_seen_by_the_client_and_reconnect_works(connect, how):
    emg = random_emg(40 * BLOCK)
    faults = Faults(disconnect_after_s=0.3 if how == "timer-close" else None)
    with BelaEmulator(emg, 22050.0, speed=1.0, faults=faults) as e:
        s = connect(e)
        _, x = assemble(stream(s, 3), DEFAULT_NAMES, 3)
        np.testing.assert_array_equal(x, emg[:, :3 * BLOCK])
        if how == "on-demand-abrupt":
            e.disconnect(abrupt=True)
        t_end = time.monotonic() + 5
        while s.is_connected():
            assert time.monotonic() < t_end, "the client still looks connected after 5 s"
            s.wait(0.02)
        assert e.disconnects == 1
        if how == "timer-close":
            assert time.monotonic() - e.t0 >= 0.3
        with deadline(s, 5, "cleanup"):
            s.cleanup()
        s2 = connect(e)  # the board is back; its frame clock kept running
        ts, x = assemble(stream(s2, 2), DEFAULT_NAMES, 2)
        assert ts[0, 0] >= 3 * BLOCK and ts[0, 1] == ts[0, 0] + BLOCK
        np.testing.assert_array_equal(x, expected(emg, ts[0, 0] + 2 * BLOCK, True)[:, ts[0, 0]:])


def test_monitor_sends_single_values_at_their_periods():
    emg = np.arange(6 * 20 * BLOCK, dtype=np.float32).reshape(6, -1)  # value = its own index
    with BelaEmulator(emg, 1000.0, speed=20.0) as e:
        m = pybela.Monitor(ip=e.ip, port=e.port)
        try:
            with deadline(m, 5, "connect"):
                m.connect()
            with deadline(m, 10, "monitor_n_values"):
                got = m.monitor_n_values(["emg1", "emg3"], periods=[500, 1000], n_values=4)
        finally:
            with deadline(m, 5, "cleanup"):
                m.cleanup()
    for name, ch, period in [("emg1", 0, 500), ("emg3", 2, 1000)]:
        ts = np.array(got[name]["timestamps"])
        assert len(ts) == 4 and (ts % period == 0).all() and (np.diff(ts) == period).all()
        np.testing.assert_array_equal(got[name]["values"], emg[ch, ts])


# ----------------------------------------------------------------------------- bad input, CLI
def test_bad_input_is_one_line_naming_the_file(tmp_path):
    three = tmp_path / "three.emg.wav"
    sf.write(three, np.zeros((100, 3), np.float32), 1000)
    junk = tmp_path / "junk.emg.wav"
    junk.write_text("not audio")
    nan = tmp_path / "nan.emg.wav"
    sf.write(nan, np.full((100, 6), np.nan, np.float32), 1000, subtype="FLOAT")
    ok = tmp_path / "ok.emg.wav"
    sf.write(ok, np.zeros((100, 6), np.float32), 1000)
    for path, problem in [(three, "has 3 channels"), (junk, "cannot be read"), (nan, "NaN"),
                          (ok, "1000 Hz, not the requested 22050")]:
        with pytest.raises(DataError) as err:
            BelaEmulator(path, 22050.0 if path is ok else None)
        assert str(path) in str(err.value) and problem in str(err.value)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"emg must be \[6, T>0\], got \[5, 10\]"):
        BelaEmulator(np.zeros((5, 10)))


def test_cli_serves_and_reports_bad_files(tmp_path, capsys):
    assert main(["--port", "0", "--duration", "0.2"]) == 0
    assert "pybela.Streamer(ip='127.0.0.1', port=" in capsys.readouterr().out
    assert main(["--file", str(tmp_path / "missing.emg.wav")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing.emg.wav" in err and "\n" not in err
