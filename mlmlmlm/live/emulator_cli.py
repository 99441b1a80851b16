"""``python -m mlmlmlm.live.emulator``: serve a file (or synthetic EMG) as a Bela board until
Ctrl-C, with the fault switches of :class:`~mlmlmlm.live.emulator.Faults`.

Introduced in notebook 06_live_demo (the board emulator: :mod:`mlmlmlm.live.emulator`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from mlmlmlm.data.bela import DEFAULT_BELA_EMG_SR
from mlmlmlm.live.emg_files import synthetic_emg
from mlmlmlm.live.emulator import (
    DEFAULT_NAMES,
    DEFAULT_PORT,
    INTERLEAVED_NAME,
    SLOTS,
    BelaEmulator,
    Faults,
)


def main(argv=None) -> int:
    """``python -m mlmlmlm.live.emulator``: serve a file (or synthetic EMG) until Ctrl-C."""
    p = argparse.ArgumentParser(prog="python -m mlmlmlm.live.emulator",
                                description="Emulate a Bela board streaming six EMG channels.")
    p.add_argument("--file", help=".emg.wav (6 ch) or 7-channel window; default synthetic EMG")
    p.add_argument("--sr", type=float, help="analog rate in Hz (default: the file's, or 22050)")
    p.add_argument("--speed", type=float, default=1.0, help="pace factor (1 = real time)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--names", default=",".join(DEFAULT_NAMES), help="comma-separated names")
    p.add_argument("--interleaved", action="store_true",
                   help=f"one variable {INTERLEAVED_NAME!r}, {SLOTS} values a frame (128-frame "
                        "buffers), as bela/render.cpp built with MLMLMLM_INTERLEAVED=1")
    p.add_argument("--once", action="store_true", help="stop at the end instead of looping")
    p.add_argument("--duration", type=float, help="exit after this many seconds")
    p.add_argument("--disconnect-after", type=float, help="drop clients S s after first watch")
    p.add_argument("--abrupt", action="store_true", help="drop TCP without a websocket close")
    p.add_argument("--burst", type=int, default=1, help="send blocks N at a time")
    p.add_argument("--late", type=float, default=0.0, help="send every block S s late")
    p.add_argument("--jitter", type=float, default=0.0, help="plus up to S s random lateness")
    p.add_argument("--nan-every", type=int, default=0, help="NaN samples in every N-th block")
    p.add_argument("--nan-len", type=int, default=32)
    a = p.parse_args(argv)
    names = tuple(a.names.split(","))
    try:
        faults = Faults(a.disconnect_after, a.abrupt, a.burst, a.late, a.jitter, a.nan_every,
                        a.nan_len)
        emg = a.file if a.file else synthetic_emg(10.0, a.sr or DEFAULT_BELA_EMG_SR)
        emulator = BelaEmulator(emg, a.sr, names=names, interleaved=a.interleaved,
                                host=a.host, port=a.port,
                                speed=a.speed, loop=not a.once, faults=faults).start()
    except (ValueError, OSError, RuntimeError) as err:  # DataError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    e = emulator
    print(f"Bela emulator: {e.source}, {len(names)} x {e.n_frames} at {e.sr:g} Hz, speed "
          f"{e.speed:g}, on ws://{e.host}:{e.port}/gui_control\n"
          f"  connect: pybela.Streamer(ip={e.ip!r}, port={e.port}); Ctrl-C stops", flush=True)
    t_end = time.monotonic() + (a.duration or math.inf)
    try:  # a status line until Ctrl-C, --duration, or the end of a --once source
        while time.monotonic() < t_end and not e.finished.wait(min(0.5, t_end - time.monotonic())):
            print(f"\r  clients {len(e._active)}  blocks sent {e.blocks_sent}  "
                  f"disconnects {e.disconnects}", end="", flush=True)
    except KeyboardInterrupt:
        pass
    print()
    e.stop()
    return 0
