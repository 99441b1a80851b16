"""Audio in and out of the live engine: the playout ring, the sound card (PortAudio through
``sounddevice``) or files at the clock's pace. Introduced in notebook 06_live_demo.

The output is an :class:`OutputRing` indexed by absolute output sample: the engine's worker writes
each generated sample at the position where it is due (its EMG frame's arrival plus a fixed
playout delay); the audio callback only copies the next block out under a lock. A sample that
is not there when its position is read is an *underrun* (counted, played as silence); a sample
that arrives after its position has been read is dropped (counted), so late compute never shifts
the timing of what follows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np


class AudioDeviceError(RuntimeError):
    """No usable sound card; ``str`` is one line starting with "no audio device"."""


class Clock:
    """The session's time: stream second ``s`` is due at ``t0 + s / speed`` (``time.monotonic``).
    ``speed`` > 1 runs files faster than real time (tests and benchmarks)."""

    def __init__(self, speed: float = 1.0, t0: float | None = None) -> None:
        if not (0 < speed < float("inf")):
            raise ValueError(f"clock speed must be finite and > 0, got {speed}")
        self.speed = float(speed)
        self.t0 = time.monotonic() if t0 is None else t0

    def time_of(self, seconds: float) -> float:
        return self.t0 + seconds / self.speed

    def seconds(self, t: float | None = None) -> float:
        return ((time.monotonic() if t is None else t) - self.t0) * self.speed


class OutputRing:
    """Output samples by absolute position (see the module doc). ``size`` samples of room.

    Writer (worker): :meth:`expect` at a phrase start, :meth:`write`, :meth:`close_span` at its
    end. Reader (callback): :meth:`read`. Counters: ``underrun_samples``, ``underrun_blocks``,
    ``late_samples`` (written after being due), ``overflow_samples`` (beyond the room).
    """

    def __init__(self, size: int, sr: float, clock: Clock) -> None:
        self.size, self.sr, self.clock = int(size), float(sr), clock
        self._buf = np.zeros(self.size, np.float32)
        self._lock = threading.Lock()
        self.read_pos = 0
        self._read_t = clock.t0
        self._span = (0, 0)  # positions where samples are expected: [start, stop)
        self._written = 0  # samples of the span written so far end here
        self.underrun_samples = self.underrun_blocks = 0
        self.late_samples = self.overflow_samples = 0

    @property
    def written_until(self) -> int:
        """The end of the latest phrase's samples written so far (an output position)."""
        return self._written

    def position_at(self, t: float) -> float:
        """The output position being played at ``time.monotonic()`` ``t`` (interpolated)."""
        return self.read_pos + (t - self._read_t) * self.sr * self.clock.speed

    def fade_out(self, stop: int, n: int) -> None:
        """A linear fade to zero over the ``n`` samples before ``stop`` (those not yet read), so a
        phrase cut there ends without a click."""
        with self._lock:
            lo = max(stop - n, self.read_pos)
            i = lo - (stop - n)
            ramp = np.linspace(1.0, 0.0, n + 1, dtype=np.float32)[1:]
            for a, b in self._slices(lo, stop):
                self._buf[a:b] *= ramp[i : i + b - a]
                i += b - a

    def expect(self, start: int) -> None:
        """A phrase starts at ``start``: samples are due from there on (open-ended); anything an
        earlier phrase left at or after ``start`` is discarded (fade it out before: ``fade_out``).
        A start already played past (``start`` < the read position) is an underrun of the
        samples between: due, and read as silence before they were expected."""
        with self._lock:
            missed = self.read_pos - start
            if missed > 0:
                self.underrun_samples += missed
                self.underrun_blocks += 1
            for a, b in self._slices(max(start, self.read_pos), max(start, self._written)):
                self._buf[a:b] = 0.0
            self._span, self._written = (start, 1 << 62), start

    def close_span(self, stop: int) -> None:
        """The phrase ends at ``stop``: nothing more is due after it."""
        with self._lock:
            self._span = (self._span[0], min(self._span[1], stop))

    def write(self, pos: int, x: np.ndarray) -> None:
        """Samples ``x [n]`` at positions ``pos .. pos + n``."""
        with self._lock:
            lo, hi = pos, pos + len(x)
            self._written = max(self._written, hi)
            late = min(hi, self.read_pos) - lo
            if late > 0:
                self.late_samples += late
                x, lo = x[late:], self.read_pos
            over = hi - (self.read_pos + self.size)
            if over > 0:
                self.overflow_samples += over
                x, hi = x[: len(x) - over], hi - over
            i = 0
            for a, b in self._slices(lo, hi):
                self._buf[a:b] = x[i : i + b - a]
                i += b - a

    def read(self, n: int, t: float | None = None) -> np.ndarray:
        """The next ``n`` samples (float32, a copy); counts an underrun for missing due samples."""
        out = np.empty(n, np.float32)
        with self._lock:
            r, i = self.read_pos, 0
            for a, b in self._slices(r, r + n):
                out[i : i + b - a] = self._buf[a:b]
                self._buf[a:b] = 0.0
                i += b - a
            missing = min(r + n, self._span[1]) - max(r, self._span[0], self._written)
            if missing > 0:
                self.underrun_samples += missing
                self.underrun_blocks += 1
            self.read_pos = r + n
            self._read_t = time.monotonic() if t is None else t
        return out

    def _slices(self, lo: int, hi: int):
        """Buffer index ranges ``[a, b)`` holding positions ``[lo, hi)`` (at most two)."""
        if hi <= lo:
            return []
        a, b = lo % self.size, (hi - 1) % self.size + 1
        return [(a, b)] if a < b else [(a, self.size), (0, b)]


# ----------------------------------------------------------------------------- ports
Sink = Callable[[object], None]


def import_sounddevice():
    """``sounddevice``, or :class:`AudioDeviceError` (PortAudio missing raises OSError)."""
    try:
        import sounddevice
    except (OSError, ImportError) as err:
        raise AudioDeviceError(f"no audio device: {' '.join(str(err).split())} "
                               "(install PortAudio: apt-get install libportaudio2)") from None
    return sounddevice


def load_audio(path, sr: float) -> np.ndarray:
    """A mono instrument-audio file at ``sr``, float32 ``[T]`` (a 7-channel window: channel 0)."""
    import soundfile as sf

    from mlmlmlm.data.preprocess import resample
    from mlmlmlm.data.records import DataError

    try:
        x, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise DataError(path, f"cannot be read as audio: {err}") from None
    return resample(x[:, 0], file_sr, sr) if file_sr != sr else x[:, 0].copy()


class FileInput:
    """Instrument audio from a file, handed over ``block`` samples at a time at the clock's pace;
    an ``("audio_end",)`` item follows the last block."""

    def __init__(self, path, sr: float, block: int = 256) -> None:
        self.audio, self.sr, self.block, self.name = load_audio(path, sr), sr, block, str(path)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sr

    def start(self, sink: Sink, clock: Clock) -> None:
        def run():
            for a in range(0, len(self.audio), self.block):
                b = min(len(self.audio), a + self.block)
                if self._stop.wait(max(0.0, clock.time_of(b / self.sr) - time.monotonic())):
                    return
                sink(("audio", self.audio[a:b].copy(), time.monotonic()))
            sink(("audio_end",))

        self._thread = threading.Thread(target=run, daemon=True, name="audio-in-file")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


class DeviceInput:
    """Instrument audio from the sound card (mono, at the translator's rate)."""

    def __init__(self, sr: float, block: int = 256, device=None) -> None:
        self.sr, self.block, self.device, self.name = sr, block, device, "device"
        self._stream = None

    def start(self, sink: Sink, clock: Clock) -> None:
        sd = import_sounddevice()

        def callback(indata, frames, time_info, status):
            sink(("audio", indata[:, 0].copy(), time.monotonic()))

        try:
            self._stream = sd.InputStream(samplerate=self.sr, blocksize=self.block, channels=1,
                                          dtype="float32", device=self.device, callback=callback)
            self._stream.start()
        except Exception as err:  # noqa: BLE001 (PortAudioError, ValueError: no such device)
            raise AudioDeviceError(f"no audio device: input: {' '.join(str(err).split())}") from None

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()


class ClockOutput:
    """Plays the ring into ``tap`` (a file writer, the recorder) at the clock's pace, ``block``
    samples at a time: the stand-in sound card for file output and tests."""

    def __init__(self, ring: OutputRing, block: int = 256, tap: Callable | None = None) -> None:
        self.ring, self.block, self.tap, self.name = ring, block, tap, "clock"
        self.latency_s = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        clock, sr = self.ring.clock, self.ring.sr

        def run():
            k = 0
            while not self._stop.wait(max(0.0, clock.time_of((k + 1) * self.block / sr)
                                          - time.monotonic())):
                out = self.ring.read(self.block, clock.time_of((k + 1) * self.block / sr))
                k += 1
                if self.tap is not None:
                    self.tap(out)

        self._thread = threading.Thread(target=run, daemon=True, name="audio-out-clock")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


class DeviceOutput:
    """The ring played through the sound card (mono); the callback copies one block and taps it."""

    def __init__(self, ring: OutputRing, block: int = 256, tap: Callable | None = None,
                 device=None) -> None:
        self.ring, self.block, self.tap, self.device, self.name = ring, block, tap, device, "device"
        self.latency_s = 0.0
        self._stream = None

    def start(self) -> None:
        sd = import_sounddevice()

        def callback(outdata, frames, time_info, status):
            out = self.ring.read(frames)
            outdata[:, 0] = out
            if self.tap is not None:
                self.tap(out)

        try:
            self._stream = sd.OutputStream(samplerate=self.ring.sr, blocksize=self.block,
                                           channels=1, dtype="float32", device=self.device,
                                           callback=callback, latency="low")
            self._stream.start()
            self.latency_s = float(self._stream.latency)
        except Exception as err:  # noqa: BLE001 (PortAudioError, ValueError: no such device)
            raise AudioDeviceError(f"no audio device: output: {' '.join(str(err).split())}") from None

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
