"""EMG sources of the live engine (Bela through pybela, its emulator, a file at real-time pace) and
the conditioning every block passes through (NaN repair, gaps, resampling). Introduced in 06_live_demo.

A source runs in its own thread and hands the engine :class:`EmgBlock` s (six channels at the
source's rate, stamped with the source's frame clock) and :class:`SourceEvent` s (connected,
disconnected, ended, error) through one ``sink`` callable. What happens to faulty EMG
(:class:`EmgConditioner`):

* NaN or Inf samples are replaced by the last good value of their channel (0 before any), counted.
* A gap (a block starting after the expected frame) of up to ``max_gap_s`` is filled by holding
  the last good values, counted; a longer gap, or a clock that jumps back (a restarted board),
  is a *dropout*: the stream restarts there and the engine ends the phrase in progress.
* Overlapping or repeated frames are dropped, counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import signal

from mlmlmlm.data.preprocess import resample_ratio
from mlmlmlm.live.audio_io import Clock
from mlmlmlm.live.emg_files import load_emg
from mlmlmlm.live.emulator import (
    BLOCK,
    DEFAULT_NAMES,
    DEFAULT_PORT,
    INTERLEAVED_NAME,
    SLOTS,
    BelaEmulator,
    Faults,
)

BELA_DEFAULT_HOST = "192.168.7.2"


@dataclass
class EmgBlock:
    """``emg`` float32 ``[6, n]`` at the source rate (may hold NaN), ``start`` its first frame on
    the source's clock, ``arrival`` the ``time.monotonic()`` it reached the engine."""

    start: int
    emg: np.ndarray
    arrival: float


@dataclass
class SourceEvent:
    """``kind``: connected | disconnected | ended | stopped | error; ``message`` one line."""

    kind: str
    message: str = ""
    time: float = field(default_factory=time.monotonic)


Sink = Callable[[object], None]


class FileEmgSource:
    """Six EMG channels from a WAV (or an array) replayed at the clock's pace, ``block`` frames at
    a time (Bela's 1024 by default); each block is handed over when its last frame is due."""

    def __init__(self, emg, sr: float | None = None, block: int = BLOCK) -> None:
        if isinstance(emg, np.ndarray):
            self.emg, self.sr = np.asarray(emg, np.float32), float(sr or 22050.0)
            self.name = "array"
        else:
            self.emg, self.sr = load_emg(emg)
            self.name = str(emg)
        self.block = int(block)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, sink: Sink, clock: Clock) -> None:
        self._thread = threading.Thread(target=self._run, args=(sink, clock), daemon=True,
                                        name="emg-file")
        self._thread.start()

    def _run(self, sink: Sink, clock: Clock) -> None:
        sink(SourceEvent("connected", f"file {self.name}"))
        n = self.emg.shape[1]
        for start in range(0, n, self.block):
            stop = min(n, start + self.block)
            if self._stop.wait(max(0.0, clock.time_of(stop / self.sr) - time.monotonic())):
                return
            sink(EmgBlock(start, self.emg[:, start:stop].copy(), time.monotonic()))
        sink(SourceEvent("ended", f"end of {self.name}"))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


class BelaEmgSource:
    """EMG from a Bela board (or :class:`BelaEmulator`) through the real ``pybela.Streamer``.

    Every pybela call runs in this source's thread, on pybela's one event loop, under a deadline
    of our own (pybela's connect and list wait forever). The connection is watched: a closed
    socket, a finished pybela data task (exceptions inside it end it silently) or no data for
    ``stall_s`` seconds is a disconnect; the source then reconnects every ``retry_s`` seconds.
    Blocks are assembled from the per-variable buffers by timestamp (all six channels), or,
    when the board lists the interleaved variable ``emg`` (bela/render.cpp built with
    ``MLMLMLM_INTERLEAVED=1``: :data:`~mlmlmlm.live.emulator.SLOTS` values a frame, 128-frame
    buffers), read from its buffers alone; ``layout`` "auto" takes that one when it is there,
    "channels" or "interleaved" insists on one.
    pybela keeps one event loop per process: use one source at a time, and no other pybela
    client in the same process while it runs.
    """

    def __init__(self, host: str = BELA_DEFAULT_HOST, port: int = DEFAULT_PORT,
                 names=DEFAULT_NAMES, connect_timeout: float = 3.0, stall_s: float = 1.0,
                 retry_s: float = 0.5, quiet: bool = False, layout: str = "auto") -> None:
        if layout not in ("auto", "channels", "interleaved"):
            raise ValueError(f"layout must be auto, channels or interleaved, got {layout!r}")
        self.host, self.port, self.names, self.layout = host, int(port), tuple(names), layout
        self.interleaved = False  # known after the first connect
        self.quiet = quiet  # silence pybela's own "Connection successful" / "Started" lines
        self.connect_timeout, self.stall_s, self.retry_s = connect_timeout, stall_s, retry_s
        self.sr: float | None = None  # known after the first connect
        self.connects = 0
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: dict[int, dict[str, np.ndarray]] = {}
        self._last_data = 0.0
        self._said = ""  # the last connection error reported

    def wait_connected(self, timeout: float) -> bool:
        """Block until the first connection (the sample rate is then known)."""
        return self._connected.wait(timeout)

    def start(self, sink: Sink, clock: Clock | None = None) -> None:
        self._thread = threading.Thread(target=self._run, args=(sink,), daemon=True,
                                        name="emg-bela")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    # ------------------------------------------------------------------ pybela thread
    def _call(self, streamer, fn, timeout: float, what: str):
        """Run one pybela sync call; past ``timeout`` its loop is stopped and its tasks cancelled."""
        loop = streamer.loop
        handle = loop.call_later(timeout, loop.stop)
        try:
            return fn()
        except RuntimeError as err:
            if "stopped before Future completed" not in str(err):
                raise
            _cancel_all(loop)
            raise TimeoutError(f"{what} took over {timeout:g} s") from None
        finally:
            handle.cancel()

    def _run(self, sink: Sink) -> None:
        import pybela

        if self.quiet:  # pybela prints progress to stdout, over the engine's status line
            for mod in (sys.modules.get("pybela.Streamer"), sys.modules.get("pybela.Watcher")):
                for name in ("_print_ok", "_print_info"):
                    if hasattr(mod, name):
                        setattr(mod, name, lambda *a, **k: None)

        url = f"ws://{self.host}:{self.port}"
        while not self._stop.is_set():
            s = None
            try:
                # pybela's Watcher prints "Running in Jupyter notebook. Enabling nest_asyncio."
                # on every construction inside a kernel: console noise on a notebook's page
                with contextlib.redirect_stdout(io.StringIO()):
                    s = pybela.Streamer(ip=self.host, port=self.port)
                if self._call(s, s.connect, self.connect_timeout, f"connect to {url}") != 1:
                    raise ConnectionError(f"{url} refused the watcher handshake")
                self.sr = float(s.sample_rate)
                have = [v["name"] for v in s.watcher_vars]
                self.interleaved = self.layout == "interleaved" or (
                    self.layout == "auto" and INTERLEAVED_NAME in have)
                wanted = [INTERLEAVED_NAME] if self.interleaved else list(self.names)
                missing = [n for n in wanted if n not in have]
                if missing:
                    raise ConnectionError(f"{url} has no watcher variables {missing} (has {have})")
                s.streaming_buffers_queue_length = 4  # we take buffers from the block callback
                self._pending.clear()
                start = functools.partial(s.start_streaming, variables=wanted,
                                          on_block_callback=self._on_block, callback_args=(sink,))
                self._call(s, start, self.connect_timeout, "start_streaming")
                self.connects += 1
                self._last_data = time.monotonic()
                self._connected.set()
                sink(SourceEvent("connected", f"{url} ({s.project_name}, {self.sr:g} Hz"
                                 f"{', interleaved' if self.interleaved else ''})"))
                why = self._watch(s)
                sink(SourceEvent("stopped" if self._stop.is_set() else "disconnected",
                                 f"{url}: {why}"))
            except (OSError, ConnectionError, TimeoutError) as err:
                msg = f"no board at {url}: {' '.join(str(err).split())}; retrying"
                if msg != self._said and not self._stop.is_set():  # once, not every retry
                    self._said = msg
                    sink(SourceEvent("error", msg))
            except Exception as err:  # noqa: BLE001 (pybela raises bare exceptions)
                sink(SourceEvent("error", f"pybela: {type(err).__name__}: {err}"))
            finally:
                if s is not None:
                    try:
                        self._call(s, s.cleanup, 3.0, "cleanup")
                    except Exception:  # noqa: BLE001 (a dead socket may fail to close)
                        _cancel_all(s.loop)
            self._stop.wait(self.retry_s)

    def _watch(self, s) -> str:
        """Run pybela's loop until the connection fails or stop(); why it ended."""
        while not self._stop.is_set():
            s.wait(0.02)
            if not s.is_connected():
                return "connection closed"
            if s._process_received_data_msg_task is None or s._process_received_data_msg_task.done():
                return "pybela's data task ended"
            if time.monotonic() - self._last_data > self.stall_s:
                return f"no data for {self.stall_s:g} s"
        return "stopped"

    def _on_block(self, msgs: list, sink: Sink) -> None:
        """pybela's block callback: file each buffer by timestamp; hand over complete blocks."""
        self._last_data = time.monotonic()
        if self.interleaved:
            return self._on_interleaved(msgs, sink)
        for m in msgs:
            ts = int(m["buffer"]["ref_timestamp"])
            self._pending.setdefault(ts, {})[m["name"]] = np.asarray(m["buffer"]["data"],
                                                                     np.float32)
        for ts in sorted(self._pending):
            got = self._pending[ts]
            if len(got) < len(self.names):
                break
            del self._pending[ts]
            emg = np.stack([got[n] for n in self.names])
            sink(EmgBlock(ts, emg, time.monotonic()))
        if len(self._pending) > 8:  # incomplete blocks that will never complete
            for ts in sorted(self._pending)[:-8]:
                del self._pending[ts]


    def _on_interleaved(self, msgs: list, sink: Sink) -> None:
        """Buffers of the interleaved variable: SLOTS values a frame, channels first."""
        for m in msgs:
            if m["name"] != INTERLEAVED_NAME:
                continue
            data = np.asarray(m["buffer"]["data"], np.float32)
            if data.size % SLOTS:
                sink(SourceEvent("error", f"{INTERLEAVED_NAME}: a buffer of {data.size} values "
                                          f"is not whole frames of {SLOTS}; dropped"))
                continue
            emg = data.reshape(-1, SLOTS)[:, :len(self.names)].T  # [6, frames]
            sink(EmgBlock(int(m["buffer"]["ref_timestamp"]), np.ascontiguousarray(emg),
                          time.monotonic()))


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in tasks:
        t.cancel()
    if tasks and not loop.is_running():
        handle = loop.call_later(2.0, loop.stop)
        try:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        except RuntimeError:
            pass
        finally:
            handle.cancel()


class EmulatorEmgSource(BelaEmgSource):
    """:class:`BelaEmulator` on loopback (a file, or synthetic EMG) read through pybela, at the
    clock's speed; ``faults`` switch its disconnect, late/bursty buffers and NaN samples;
    ``interleaved`` serves the one-variable layout of 128-frame buffers."""

    def __init__(self, emg=None, sr: float | None = None, faults: Faults | None = None,
                 loop: bool = True, interleaved: bool = False, **kw) -> None:
        super().__init__(host="127.0.0.1", port=0, **kw)
        self._interleave = interleaved
        from mlmlmlm.live.emg_files import synthetic_emg

        self._emg = synthetic_emg(20.0) if emg is None else emg
        self._emg_sr, self._faults, self._loop = sr, faults, loop
        self.emulator: BelaEmulator | None = None

    def start(self, sink: Sink, clock: Clock | None = None) -> None:
        speed = clock.speed if clock is not None else 1.0
        self.emulator = BelaEmulator(self._emg, self._emg_sr, speed=speed, loop=self._loop,
                                     faults=self._faults, interleaved=self._interleave).start()
        self.port = self.emulator.port
        super().start(sink, clock)

    def stop(self) -> None:
        super().stop()
        if self.emulator is not None:
            self.emulator.stop()


def open_emg_source(spec: str, **kw):
    """``bela`` | ``bela:HOST[:PORT]`` | ``file:PATH`` | ``emulator`` | ``emulator:PATH`` |
    ``emulator-interleaved[:PATH]`` (the emulator serving the board's interleaved layout)."""
    kind, _, rest = spec.partition(":")
    if kind == "bela":
        host, _, port = rest.partition(":")
        return BelaEmgSource(host or BELA_DEFAULT_HOST, int(port or DEFAULT_PORT), **kw)
    if kind == "file" and rest:
        return FileEmgSource(rest)
    if kind in ("emulator", "emulator-interleaved"):
        return EmulatorEmgSource(rest or None, interleaved=kind != "emulator", **kw)
    raise ValueError(f"--emg {spec!r}: expected bela[:HOST[:PORT]], file:PATH, emulator[:PATH] "
                     "or emulator-interleaved[:PATH]")


# ----------------------------------------------------------------------------- conditioning
class StreamResampler:
    """Causal polyphase resampling by ``up/down`` for chunks ``[C, n]`` of any size (the FIR of
    ``scipy.signal.resample_poly``, run with state; delay ``delay`` output samples)."""

    def __init__(self, sr_from: float, sr_to: float, channels: int) -> None:
        # a WAV holds whole hertz: a 2756 Hz file is the 2756.25 Hz codec rate, not 11025/11024
        same = abs(sr_from - sr_to) <= 1e-3 * sr_to
        self.up, self.down = (1, 1) if same else resample_ratio(sr_from, sr_to)
        self.channels = channels
        if self.up == self.down == 1:
            self.h, self.delay = None, 0.0
        else:
            half = 10 * max(self.up, self.down)
            self.h = self.up * signal.firwin(2 * half + 1, 1.0 / max(self.up, self.down),
                                             window=("kaiser", 5.0))
            self.delay = half / self.down
        self.reset()

    def reset(self) -> None:
        self._zi = None if self.h is None else np.zeros((self.channels, len(self.h) - 1))
        self._phase = 0  # index, in the upsampled stream, of the next output sample

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.h is None:
            return np.asarray(x, np.float32)
        n = x.shape[1]
        xu = np.zeros((self.channels, n * self.up))
        xu[:, :: self.up] = x  # zero-stuffed: up-1 zeros after every sample
        y, self._zi = signal.lfilter(self.h, 1.0, xu, axis=1, zi=self._zi)
        out = y[:, self._phase :: self.down]
        self._phase = (self._phase - n * self.up) % self.down
        return out.astype(np.float32)


@dataclass
class Conditioned:
    """One block after :class:`EmgConditioner`: ``emg`` float32 ``[6, m]`` at the target rate,
    ``repaired`` = the source-rate block with NaN filled (for the recorder, gaps included),
    ``origin`` the source frame of ``repaired[:, 0]``, and what was done."""

    emg: np.ndarray
    repaired: np.ndarray
    origin: int
    nan: int = 0
    gap: int = 0
    dropped: int = 0
    dropout: bool = False


class EmgConditioner:
    """NaN repair, gap fill, overlap drop and resampling to ``sr_to`` (see the module doc)."""

    def __init__(self, sr_from: float, sr_to: float, channels: int = 6,
                 max_gap_s: float = 0.25) -> None:
        self.sr_from, self.sr_to, self.channels = float(sr_from), float(sr_to), channels
        self.max_gap = max(0, int(max_gap_s * sr_from))
        self.resampler = StreamResampler(sr_from, sr_to, channels)
        self.next: int | None = None  # source frame expected next
        self.last = np.zeros(channels, np.float32)  # last good value per channel
        self.out_count = 0  # target-rate samples given since the stream (re)started
        self.origin = 0  # source frame of the stream's first sample

    def __call__(self, block: EmgBlock) -> Conditioned:
        x, start, dropped, gap, dropout = block.emg, int(block.start), 0, 0, False
        if self.next is not None and start < self.next:
            if start + x.shape[1] <= self.next and self.next - start < 16 * max(1, x.shape[1]):
                return Conditioned(x[:, :0], x[:, :0], self.next, dropped=x.shape[1])
            if self.next - start >= 16 * max(1, x.shape[1]):  # the clock went back: a new board run
                self.next, dropout = None, True
            else:
                dropped = self.next - start
                x, start = x[:, dropped:], self.next
        if self.next is not None and start > self.next:
            gap = start - self.next
            if gap > self.max_gap:
                self.next, dropout, gap = None, True, 0
            else:
                x = np.concatenate([np.repeat(self.last[:, None], gap, 1), x], axis=1)
                start = self.next
        if self.next is None:
            self.resampler.reset()
            self.out_count, self.origin = 0, start
        bad = ~np.isfinite(x)
        n_bad = int(bad.sum())
        if n_bad:
            x = _hold_last(x, bad, self.last)
        if x.shape[1]:
            self.last = x[:, -1].copy()
        self.next = start + x.shape[1]
        y = self.resampler(x)
        self.out_count += y.shape[1]
        return Conditioned(y, x, start, nan=n_bad, gap=gap, dropped=dropped, dropout=dropout)


def _hold_last(x: np.ndarray, bad: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Each non-finite sample of ``x [C, n]`` becomes the last finite one before it (or ``last``)."""
    x = np.concatenate([last[:, None], x], axis=1)
    bad = np.concatenate([np.zeros((x.shape[0], 1), bool), bad], axis=1)
    idx = np.where(bad, 0, np.arange(x.shape[1])[None])
    np.maximum.accumulate(idx, axis=1, out=idx)
    return np.take_along_axis(x, idx, axis=1)[:, 1:].astype(np.float32)

