"""A stand-in Bela board: a loopback websocket server that the real pybela client streams EMG from.

Introduced in notebook 06_live_demo. ``BelaEmulator`` replays six EMG channels (an array or a WAV
file) as Bela's ``Watcher`` variables, at real-time pace or faster, with switches for faults.

Command line (the board's default port, so ``pybela.Streamer(ip="127.0.0.1")`` finds it)::

    python -m mlmlmlm.live.emulator --file take.emg.wav --speed 1 [--port 5555] [--once]
        [--interleaved] [--disconnect-after S] [--burst N] [--late S] [--jitter S]
        [--nan-every N]

The protocol, as Bela's ``Gui`` and ``Watcher`` libraries speak it and pybela 2.0.3 reads it:

* ``ws://HOST:PORT/gui_control``, JSON text. On connect the board sends ``{"event":
  "connection", "projectName": ...}``; the client answers ``{"event": "connection-reply"}``,
  which makes it an *active* client (data flows only while one is active). Commands arrive as
  ``{"watcher": [{"cmd": ...}, ...]}``: ``list`` is answered with ``{"watcher": {"watchers":
  [{"name", "type": "f", "timestampMode": 0, "watched", "monitor", ...}], "sampleRate": sr,
  "timestamp": frame}}``; ``watch`` / ``unwatch`` take ``"watchers": [names]``; ``monitor``
  takes ``"periods"`` (frames, 0 = off) aligned with its ``"watchers"``.
* With ``interleaved=True`` (``--interleaved``) the board lists one variable, ``emg``, whose
  dense buffer holds :data:`SLOTS` values per frame (the six channels, then zeros): 128 frames
  a buffer, 5.8 ms at 22.05 kHz instead of 46 ms, the same protocol and client.
* ``ws://HOST:PORT/gui_data``, binary. Each buffer is two messages: a header, the ASCII
  ``b"<id>/<type>"`` (id = the variable's index in the list, type ``f`` for float), then a
  body of 4104 bytes: the ``uint64`` little-endian timestamp of its first value (in watcher
  ticks, one per analog frame) and 1024 ``float32`` values ("dense" timestamp mode). A
  monitored value is a body of ``uint64`` timestamp + one value.

Emulated simplifications: the frame clock starts (frame 0 = the source's first sample) at the
first ``watch``; buffers start at multiples of 1024 frames; blocks that fall while nothing is
watched or no client is active are dropped, as on the board; monitored values go out at frames
that are multiples of their period; scheduled watches (``timestamps`` / ``durations``), ``log``,
``control`` and ``set`` are not emulated.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from mlmlmlm.data.bela import BELA_BUFFER_BYTES, DEFAULT_BELA_EMG_SR
from mlmlmlm.data.records import DEFAULT_CHANNELS, DataError
from mlmlmlm.live.emg_files import load_emg

DEFAULT_PORT = 5555  # Bela's Gui default
DEFAULT_NAMES = tuple(DEFAULT_CHANNELS[1:])  # emg1 .. emg6
STAMP = struct.Struct("<Q")  # uint64 timestamp opening every data body
BLOCK = (BELA_BUFFER_BYTES - STAMP.size) // 4  # 1024 float32 values per dense buffer
# The interleaved layout (bela/render.cpp built with MLMLMLM_INTERLEAVED=1): one variable whose
# buffer holds SLOTS values per analog frame, channels 1..6 then zeros, so a buffer is
# BLOCK // SLOTS = 128 frames (5.8 ms at 22.05 kHz) instead of 1024 (46 ms).
INTERLEAVED_NAME = "emg"
SLOTS = 8


def buffer_frames(interleaved: bool) -> int:
    """Board frames in one watcher buffer: 1024 a channel, or 128 in the interleaved layout."""
    return BLOCK // SLOTS if interleaved else BLOCK
PATHS = ("/gui_control", "/gui_data")


@dataclass
class Faults:
    """Fault switches of the emulator (defaults: a healthy board).

    Parameters
    ----------
    disconnect_after_s : close every connection this many wall seconds after the first watch
        (once); clients may reconnect, the frame clock keeps running.
    abrupt : drop the TCP connections without a websocket close (a pulled cable).
    burst : hold buffers and send them ``burst`` blocks at a time (one block = 1024 frames of
        every watched variable).
    late_s, jitter_s : send each block ``late_s`` plus uniform ``[0, jitter_s)`` seconds after
        it is due (order is kept).
    nan_every, nan_len, nan_offset, nan_channels : in every ``nan_every``-th block, samples
        ``nan_offset : nan_offset + nan_len`` of ``nan_channels`` (default all) become NaN.
    seed : seed of the jitter.
    """

    disconnect_after_s: float | None = None
    abrupt: bool = False
    burst: int = 1
    late_s: float = 0.0
    jitter_s: float = 0.0
    nan_every: int = 0
    nan_len: int = 32
    nan_offset: int = 0
    nan_channels: tuple[int, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.burst < 1 or self.nan_every < 0 or self.late_s < 0 or self.jitter_s < 0:
            raise ValueError("faults: burst must be >= 1; nan_every, late_s, jitter_s >= 0")
        if not 0 <= self.nan_offset < self.nan_offset + self.nan_len <= BLOCK:
            raise ValueError(f"faults: NaN run {self.nan_offset}+{self.nan_len} outside {BLOCK}")


class BelaEmulator:
    """A Bela board's watcher, served on loopback from a background thread.

    Parameters
    ----------
    emg : float ``[C, T]`` array (C = ``len(names)``), or a path for :func:`load_emg`.
    sr : analog rate in Hz reported to the client; default the file's rate, or 22050 for an array.
    names : watcher variable names, one per channel.
    interleaved : serve one variable ``"emg"`` of :data:`SLOTS` values per frame (the channels,
        then zeros) instead of one variable per channel: buffers of 128 frames, not 1024.
    host, port : where to listen; port 0 picks a free one (read ``.port`` after ``start``).
    speed : pace factor (1 = real time, 10 = ten times faster, ``inf`` = as fast as sent).
    loop : replay from the start at the end; otherwise the last buffer is zero-padded, nothing
        more is sent and ``finished`` is set.
    faults : :class:`Faults`.

    Use as a context manager; a pybela client connects with ``Streamer(ip=e.ip, port=e.port)``.
    """

    def __init__(self, emg, sr: float | None = None, *, names=DEFAULT_NAMES,
                 interleaved: bool = False, host: str = "127.0.0.1", port: int = 0, speed: float = 1.0, loop: bool = True,
                 faults: Faults | None = None, project: str = "mlmlmlm-emulator") -> None:
        self.source = "array"
        if isinstance(emg, (str, Path)):
            self.source = str(emg)
            emg, file_sr = load_emg(emg)
            if sr is not None and sr != file_sr:
                raise DataError(self.source, f"is at {file_sr:g} Hz, not the requested {sr:g} Hz")
            sr = file_sr
        self.emg = np.ascontiguousarray(emg, dtype=np.float32)
        self.names = tuple(names)
        if self.emg.ndim != 2 or self.emg.shape[0] != len(self.names) or not self.emg.shape[1]:
            raise ValueError(f"emg must be [{len(self.names)}, T>0], got {list(self.emg.shape)}")
        if not np.isfinite(self.emg).all():
            raise ValueError("emg holds NaN or Inf (inject NaN with Faults(nan_every=...))")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"watcher names must be unique, got {self.names}")
        self.sr = float(DEFAULT_BELA_EMG_SR if sr is None else sr)
        if not (self.sr > 0 and speed > 0):
            raise ValueError(f"sr and speed must be > 0, got sr={self.sr}, speed={speed}")
        self.host, self.port, self.speed, self.loop = host, port, float(speed), loop
        self.faults, self.project = faults or Faults(), project
        self.interleaved = bool(interleaved)
        if self.interleaved and len(self.names) > SLOTS:
            raise ValueError(f"interleaved: at most {SLOTS} channels, got {len(self.names)}")
        # the variables the board lists, and the frames one buffer of each holds
        self.variables = (INTERLEAVED_NAME,) if self.interleaved else self.names
        self.block_frames = buffer_frames(self.interleaved)
        f = self.faults
        if f.nan_offset + f.nan_len > self.block_frames:
            raise ValueError(f"faults: NaN run {f.nan_offset}+{f.nan_len} outside a buffer of "
                             f"{self.block_frames} frames")
        self.t0: float | None = None  # time.monotonic() of frame 0 (the first watch)
        self.blocks_sent = 0  # blocks (block_frames frames of every watched variable) sent
        self.nan_frames: list[tuple[int, int]] = []  # [start, stop) frames made NaN
        self.disconnects = 0
        self.finished = threading.Event()
        self._ctrl: set[ServerConnection] = set()
        self._data: set[ServerConnection] = set()
        self._active: set[ServerConnection] = set()
        self._watched: set[int] = set()
        self._monitor: dict[int, int] = {}  # variable index -> period in frames
        self._warned: set[str] = set()
        self._thread: threading.Thread | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ public
    @property
    def ip(self) -> str:
        return self.host

    @property
    def n_frames(self) -> int:
        return self.emg.shape[1]

    def frame_time(self, frame: float) -> float:
        """``time.monotonic()`` at which ``frame`` is captured (the clock starts at first watch)."""
        if self.t0 is None:
            raise RuntimeError("the emulator's clock starts at the first watch command")
        return self.t0 if math.isinf(self.speed) else self.t0 + frame / (self.sr * self.speed)

    def start(self, timeout: float = 5.0) -> BelaEmulator:
        self._thread = threading.Thread(target=self._serve, name="bela-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"Bela emulator did not start within {timeout:g} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None and self._thread.is_alive() and self._aloop is not None:
            self._aloop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)

    def disconnect(self, abrupt: bool | None = None, timeout: float = 5.0) -> None:
        """Close every client connection now (``abrupt``: drop TCP without a close frame)."""
        abrupt = self.faults.abrupt if abrupt is None else abrupt
        asyncio.run_coroutine_threadsafe(self._drop_all(abrupt), self._aloop).result(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ server
    def _serve(self) -> None:
        self._aloop = asyncio.new_event_loop()
        try:
            self._aloop.run_until_complete(self._main())
        except Exception as err:  # noqa: BLE001 (re-raised by start(); kept for the caller)
            self._error = err
            print(f"Bela emulator stopped: {err!r}", file=sys.stderr)
        finally:
            self._aloop.close()
            self._ready.set()

    async def _main(self) -> None:
        self._stop, self._started = asyncio.Event(), asyncio.Event()
        try:  # no compression, no server pings: Bela's seasocks server does neither
            server = await serve(self._handler, self.host, self.port, compression=None,
                                 ping_interval=None, close_timeout=1, process_request=_check_path)
        except OSError as err:
            self._error = OSError(f"Bela emulator: cannot listen on {self.host}:{self.port}: "
                                  f"{err.strerror or err}")
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        pump = asyncio.create_task(self._pump())
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait([pump, stop], return_when=asyncio.FIRST_COMPLETED)
        if pump.done() and pump.exception() is None:
            await stop  # the source ended (loop=False): stay connected, silent, until stop()
        pump.cancel()
        stop.cancel()
        for ws in self._ctrl | self._data:  # the program stops: no close handshake to wait for
            ws.transport.abort()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 3)
        if pump.done() and not pump.cancelled() and pump.exception():
            raise pump.exception()

    async def _handler(self, ws: ServerConnection) -> None:
        conns = self._data if ws.request.path == "/gui_data" else self._ctrl
        conns.add(ws)
        try:
            if conns is self._ctrl:
                await ws.send(json.dumps({"event": "connection", "projectName": self.project}))
            async for msg in ws:  # data: pybela's send_buffer (python to Bela), not emulated
                if conns is self._ctrl:
                    await self._control(ws, msg)
        except ConnectionClosed:
            pass
        finally:
            conns.discard(ws)
            self._active.discard(ws)

    async def _control(self, ws: ServerConnection, msg) -> None:
        try:
            root = json.loads(msg)
        except ValueError:
            root = None
        if not isinstance(root, dict):
            return self._warn("json", f"Bela emulator: ignoring control message {msg[:60]!r}")
        if root.get("event") in ("connection-reply", "active"):
            self._active.add(ws)
        elif root.get("event") == "inactive":
            self._active.discard(ws)
        for cmd in root.get("watcher", []) if isinstance(root.get("watcher"), list) else []:
            name = cmd.get("cmd") if isinstance(cmd, dict) else None
            if name == "list":
                await ws.send(json.dumps({"watcher": self._list()}))
                continue
            if name not in ("watch", "unwatch", "monitor"):
                self._warn(str(name), f"Bela emulator: command {name!r} is not emulated")
                continue
            wanted = [str(w) for w in cmd.get("watchers", [])]
            ids = [self.variables.index(w) if w in self.variables else None for w in wanted]
            if name == "watch":
                self._watched.update(i for i in ids if i is not None)
                self._start_clock()
            elif name == "unwatch":
                self._watched.difference_update(ids)
            else:
                for i, period in zip(ids, cmd.get("periods", [])):
                    if i is not None:
                        self._monitor[i] = int(period)
                self._monitor = {i: p for i, p in self._monitor.items() if p > 0}
                self._start_clock()

    def _list(self) -> dict:
        watchers = [{"name": n, "type": "f", "timestampMode": 0, "watched": i in self._watched,
                     "controlled": False, "logged": False, "monitor": self._monitor.get(i, 0),
                     "logFileName": "", "value": 0.0, "valueInput": 0.0}
                    for i, n in enumerate(self.variables)]
        return {"watchers": watchers, "sampleRate": self.sr, "timestamp": float(self._now())}

    def _now(self) -> int:
        if self.t0 is None:
            return 0
        return int((time.monotonic() - self.t0) * self.sr * min(self.speed, 1e9))

    def _start_clock(self) -> None:
        if self.t0 is not None:
            return
        self.t0 = time.monotonic()
        self._started.set()
        if self.faults.disconnect_after_s is not None:
            asyncio.get_running_loop().call_later(
                self.faults.disconnect_after_s,
                lambda: asyncio.ensure_future(self._drop_all(self.faults.abrupt)))

    async def _drop_all(self, abrupt: bool) -> None:
        self.disconnects += 1
        conns = list(self._ctrl | self._data)
        self._active.clear()
        if abrupt:
            for ws in conns:
                ws.transport.abort()
        else:
            await asyncio.gather(*(ws.close(1001, "emulated board disconnect") for ws in conns),
                                 return_exceptions=True)

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            print(message, file=sys.stderr)

    # ------------------------------------------------------------------ stream
    async def _pump(self) -> None:
        """Produce block after block on the frame clock; send those due, held or late."""
        f, rng = self.faults, np.random.default_rng(self.faults.seed)
        F = self.block_frames
        n_blocks = None if self.loop else -(-self.n_frames // F)
        await self._started.wait()
        held: list[tuple[int, np.ndarray]] = []
        b, send_at = 0, 0.0
        while n_blocks is None or b < n_blocks:
            start = b * F
            delay = f.late_s + (rng.uniform(0, f.jitter_s) if f.jitter_s else 0.0)
            send_at = max(send_at, self.frame_time(start + F) + delay)
            await asyncio.sleep(max(0.0, send_at - time.monotonic()))
            if self._active and (self._watched or self._monitor):
                held.append((start, self._block(b)))
            b += 1
            if held and (len(held) >= f.burst or b == n_blocks):
                for start_, x in held:
                    await self._send(start_, x)
                held.clear()
        self.finished.set()

    def _block(self, b: int) -> np.ndarray:
        """Frames ``[b*F, (b+1)*F)`` of every channel, float32 ``[C, F]`` (F =
        ``block_frames``)."""
        F = self.block_frames
        idx = np.arange(b * F, (b + 1) * F)
        if self.loop:
            x = self.emg[:, idx % self.n_frames]  # fancy indexing copies: the source stays intact
        else:
            x = np.zeros((len(self.names), F), np.float32)
            x[:, idx < self.n_frames] = self.emg[:, idx[idx < self.n_frames]]
        f = self.faults
        if f.nan_every and (b + 1) % f.nan_every == 0:
            rows = list(f.nan_channels) if f.nan_channels is not None else slice(None)
            x[rows, f.nan_offset:f.nan_offset + f.nan_len] = np.nan
            self.nan_frames.append((b * F + f.nan_offset, b * F + f.nan_offset + f.nan_len))
        return x

    async def _send(self, start: int, x: np.ndarray) -> None:
        msgs = []
        if self.interleaved and self._watched:  # frame-major: channels, then zero slots
            slots = np.zeros((x.shape[1], SLOTS), "<f4")
            slots[:, :x.shape[0]] = x.T
            msgs += [b"0/f", STAMP.pack(start) + slots.tobytes()]
        for i in () if self.interleaved else sorted(self._watched):
            msgs += [f"{i}/f".encode(), STAMP.pack(start) + x[i].astype("<f4").tobytes()]
        if self.interleaved and self._monitor:
            self._warn("monitor", "Bela emulator: monitoring the interleaved variable is not "
                                  "emulated")
        for i, period in () if self.interleaved else sorted(self._monitor.items()):
            for k in range(-start % period, BLOCK, period):  # frames that are multiples of period
                msgs += [f"{i}/f".encode(), STAMP.pack(start + k) + x[i, k:k + 1].tobytes()]
        for ws in list(self._data):
            try:
                for m in msgs:
                    await ws.send(m)
            except ConnectionClosed:
                self._data.discard(ws)
        self.blocks_sent += 1


def _check_path(connection: ServerConnection, request):
    if request.path not in PATHS:
        return connection.respond(404, f"Bela emulator serves {' and '.join(PATHS)} only\n")
    return None


if __name__ == "__main__":  # python -m mlmlmlm.live.emulator (the command line's own module)
    from mlmlmlm.live.emulator_cli import main

    raise SystemExit(main())
