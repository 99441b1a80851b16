"""The streaming translator in a process of its own, behind the engine's ``Translator`` protocol.
Introduced in notebook 06_live_demo.

Why. The engine's threads (the EMG source's pybela event loop, the instrument input, the output
clock, the recorder) share one interpreter with the translator. A translation step is hundreds of
small tensor operations, each of which gives up and takes back the interpreter lock; with the
other threads waking every few milliseconds the step waits at many of them. Measured with
``te2_frame`` in the engine at real time: 44 ms of compute per 46-ms Bela buffer, against 22 ms
for the same pushes offline (``mlmlmlm bench stream``). In its own process the translator has an
interpreter to itself, as the board has a machine to itself.

How. :class:`TranslatorProcess` starts ``python -m mlmlmlm.live.worker`` (a fresh interpreter,
which imports nothing of the caller's script, so no ``if __name__ == "__main__"`` guard is
needed) on one end of a socket pair; the child builds the translator by calling
``factory(*args, **kwargs)`` (a module-level function, so it pickles), then serves ``reset``,
``start``, ``push_emg``, ``flush``, attribute reads and ``apply`` (a function of the translator,
run there) over a pipe: one round trip per call,
arrays pickled (a Bela buffer's EMG and its audio: a few kilobytes). An exception in the child
comes back and is raised in the caller as itself (a ``StreamError`` stays a ``StreamError``).
The child's own compute per call is kept in :attr:`TranslatorProcess.compute_s` so a caller can
tell the step's cost from the pipe's. Between calls the child spins (:data:`SPIN_S`): it keeps
one core busy while a session runs.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import subprocess
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

# attributes read once after the child built its translator (those it has)
ATTRIBUTES = ("audio_sr", "emg_sr", "audio_hop", "emg_hop", "emg_channels", "frame_rate",
              "lookahead", "latency_ms", "min_prompt_samples")
METHODS = ("reset", "start", "push_emg", "flush")
# After each call the child polls for the next one this long before it blocks: a core left idle
# between Bela buffers comes back slow (te2_frame, 128-sample pushes back to back: 23 ms each;
# with 15 ms of sleep between them 34 ms; with 15 ms of spinning 26 ms), so a live translator
# keeps its core, as audio engines do; 0 blocks at once.
SPIN_S = 0.2


class WorkerError(RuntimeError):
    """The translator process died or could not be started (one line)."""


def _send_error(conn: Connection, err: BaseException) -> None:
    """The exception itself, or, if it does not pickle, a RuntimeError with its line."""
    try:
        conn.send(("error", err))
    except Exception:  # noqa: BLE001
        conn.send(("error", RuntimeError(f"{type(err).__name__}: {' '.join(str(err).split())}")))


def _serve(conn: Connection) -> None:
    """The child: build the translator, report its attributes, answer calls until ``close``."""
    import gc
    import time

    import torch

    try:
        factory, args, kwargs, threads, spin_s = conn.recv()
        torch.set_num_threads(threads)
        tr = factory(*args, **kwargs)
    except BaseException as err:  # noqa: BLE001 (reported to the parent, which raises it)
        _send_error(conn, err)
        return
    gc.collect()
    gc.freeze()  # the model's objects out of the collector's sight: no long pause mid-phrase
    conn.send(("ready", {a: getattr(tr, a) for a in ATTRIBUTES if hasattr(tr, a)}))
    while True:
        t_end = time.perf_counter() + spin_s
        while time.perf_counter() < t_end and not conn.poll(0):
            pass  # keep the core busy until the next call: idle, it comes back cold
        try:
            name, call_args = conn.recv()
        except EOFError:  # the parent went away
            return
        if name == "close":
            conn.send(("ok", None, 0.0))
            return
        t0 = time.perf_counter()
        try:
            if name == "set":
                setattr(tr, *call_args)
                out = None
            elif name == "apply":  # fn(translator, *args), fn a module-level function
                out = call_args[0](tr, *call_args[1:])
            else:
                out = getattr(tr, name)(*call_args)
        except Exception as err:  # noqa: BLE001
            _send_error(conn, err)
            continue
        conn.send(("ok", out, time.perf_counter() - t0))


class TranslatorProcess:
    """A translator built and run in a child process; the same calls as the translator itself.

    ``TranslatorProcess(factory, *args, threads=1, spin_s=SPIN_S, **kwargs)``: the child runs
    ``factory(*args, **kwargs)`` (e.g. :func:`mlmlmlm.live.app.load_translator`) with ``threads``
    torch threads and spins ``spin_s`` after each call. Attributes of :data:`ATTRIBUTES` are read once; ``push_emg([C, n]) -> [m]``
    and the other methods of :data:`METHODS` are remote calls. Close it (or use ``with``).
    """

    def __init__(self, factory: Callable, *args, threads: int = 1, spin_s: float = SPIN_S,
                 start_timeout_s: float = 300.0, **kwargs):
        self._conn, child = mp.Pipe()  # a socket pair; the child gets the other end's descriptor
        self._proc = subprocess.Popen([sys.executable, "-m", "mlmlmlm.live.worker",
                                       str(child.fileno())], pass_fds=[child.fileno()])
        child.close()
        self._conn.send((factory, args, kwargs, threads, spin_s))
        self.compute_s = 0.0  # the child's own time inside calls, summed
        self.calls = 0
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise WorkerError(f"the translator process gave no answer in {start_timeout_s:g} s")
        kind, payload = self._receive()
        if kind == "error":
            self.close()
            raise payload
        self._attrs: dict[str, Any] = payload

    def _receive(self):
        try:
            return self._conn.recv()
        except (EOFError, OSError) as err:
            code = None if self._proc is None else self._proc.poll()
            raise WorkerError(f"the translator process ended (exit code {code})") from err

    def _call(self, name: str, *args):
        if self._proc is None:
            raise WorkerError("the translator process is closed")
        try:
            self._conn.send((name, args))
        except (BrokenPipeError, OSError) as err:
            raise WorkerError(f"the translator process ended (exit code "
                              f"{self._proc.poll()})") from err
        reply = self._receive()
        if reply[0] == "error":
            raise reply[1]
        _, out, spent = reply
        self.compute_s += spent
        self.calls += 1
        return out

    def __getattr__(self, name: str):
        attrs = self.__dict__.get("_attrs", {})
        if name in attrs:
            return attrs[name]
        if name in METHODS:
            return lambda *args: self._call(name, *args)
        raise AttributeError(name)

    def set(self, name: str, value) -> None:
        """Set an attribute of the translator in the child (e.g. ``guidance``)."""
        self._call("set", name, value)

    def apply(self, fn: Callable, *args):
        """``fn(translator, *args)`` run in the child on its translator, its result returned
        (``fn`` module-level, so it pickles): a measurement of the translator where it runs,
        e.g. :func:`mlmlmlm.live.latency.compute_per_frame`."""
        return self._call("apply", fn, *args)

    def push_emg(self, emg: np.ndarray) -> np.ndarray:
        return self._call("push_emg", np.ascontiguousarray(emg, np.float32))

    def close(self) -> None:
        """End the child (politely, then by force); idempotent."""
        proc, self._proc = self.__dict__.get("_proc"), None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                self._conn.send(("close", ()))
                if self._conn.poll(5.0):
                    self._conn.recv()
        except (BrokenPipeError, EOFError, OSError):
            pass
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown
            self.close()


if __name__ == "__main__":  # the child: python -m mlmlmlm.live.worker FD
    _serve(Connection(int(sys.argv[1])))
