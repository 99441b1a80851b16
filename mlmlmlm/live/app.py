"""``mlmlmlm live``: open the ports named on the command line, run the engine with a status line.
Introduced in notebook 06_live_demo.

    mlmlmlm live --emg bela[:HOST]|file:PATH|emulator[:PATH] --audio-in device|file:PATH
                 --out device|file:PATH --threshold-db X (--run <phase>/<run> | --envelope)
                 [--record DIR] [--phrase-s S] [--playout-ms MS] [--duration S] [--speed X]

Problems the performer can fix (a missing run, no sound card, no board) are one line on stderr.
Without a sound card, ``--out device`` falls back to the session recording (said in one line) and
the engine keeps running; ``--audio-in device`` without one stops cleanly (nothing can trigger).
"""

from __future__ import annotations

import sys
from pathlib import Path


class LiveError(RuntimeError):
    """A one-line problem of ``mlmlmlm live`` (exit status 2)."""


LIVE_RECORD = "06_live_demo/live"  # its presets: section names each preset's run and playout


def playout_ms(run: str | None, scale: str, given: float | None) -> float:
    """``--playout-ms`` if given, else the playout of the preset that plays ``run`` (the live
    record's ``presets:``), else the engine's default (``EngineConfig.playout_ms``)."""
    if given is not None:
        return given
    from mlmlmlm.config import load_run_config
    from mlmlmlm.live.engine import EngineConfig

    preset = load_run_config(LIVE_RECORD, scale).presets.playout_for(run) if run else None
    return EngineConfig.playout_ms if preset is None else preset


def add_arguments(p) -> None:
    p.add_argument("--emg", required=True,
                   help="bela[:HOST[:PORT]] | file:PATH (.emg.wav or 7-ch window) | emulator[:PATH]"
                        " | emulator-interleaved[:PATH] (the board's 128-frame-buffer layout; a "
                        "real board's layout is found by itself)")
    p.add_argument("--audio-in", required=True, help="device | file:PATH (instrument audio)")
    p.add_argument("--out", required=True, help="device | file:PATH (generated audio)")
    p.add_argument("--threshold-db", type=float, default=12.0,
                   help="trigger: RMS rise in dB that starts a phrase (default 12)")
    p.add_argument("--run", help="trained translation run: <phase>/<run> or its folder")
    p.add_argument("--scale", default="cpu", choices=["cpu", "paper"])
    p.add_argument("--envelope", action="store_true",
                   help="no model: a sine that follows the EMG level (tests the rig)")
    p.add_argument("--record", type=Path, help="session folder (EMG, audio in/out, events)")
    p.add_argument("--phrase-s", type=float, help="phrase length (default: until silence)")
    p.add_argument("--playout-ms", type=float,
                   help="fixed playout delay (default: the preset's, from "
                        f"{LIVE_RECORD}.yaml, for a preset's run: 80 ms for te2_frame, which "
                        "underran at 40 on a loaded 2-core machine; else the engine's 40)")
    p.add_argument("--prompt-s", type=float, default=0.1, help="prompt: latest S s of audio")
    p.add_argument("--duration", type=float, help="stop after S s (default: Ctrl-C or file end)")
    p.add_argument("--speed", type=float, default=1.0, help="file clock speed (tests)")
    p.add_argument("--block", type=int, default=256, help="audio I/O block in samples")
    p.add_argument("--window-s", default="crop",
                   help="the translator's sliding window over its caches, in seconds, or crop "
                        "(default: the run's training crop, 1.5 s at the cpu scale: what the "
                        "model saw in training, and a per-frame cost that stays flat)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer step and the codecs' streaming graphs "
                        "(about a minute at start on 2 cores; ~40 %% less compute per frame)")
    p.add_argument("--in-process", action="store_true",
                   help="run the translator in the engine's process, not its own (debugging: "
                        "the engine's threads then slow it, see mlmlmlm/live/worker.py)")


def load_translator(run: str | None, scale: str, envelope: bool, in_process: bool = True,
                    window_s: float | str | None = "crop", data_root: str | None = None,
                    compile: bool = False):
    """The translator of ``--run`` (or the envelope stand-in): a one-line :class:`LiveError` for
    a missing run; with ``in_process=False`` a trained run's translator is built and run in a
    process of its own (:class:`~mlmlmlm.live.worker.TranslatorProcess`). ``window_s``: see
    :func:`mlmlmlm.translate.translator_from_run`; ``data_root``: the corpus whose EMG scale
    prepares the EMG (None: the default corpus); ``compile``: see :class:`mlmlmlm.stream.Translator`."""
    if envelope:
        from mlmlmlm.live.latency import EnvelopeTranslator

        return EnvelopeTranslator()
    if not run:
        raise LiveError("give --run <phase>/<run> (a trained translation run) or --envelope")
    from mlmlmlm import paths

    folder = Path(run) if Path(run).is_dir() or run.count("/") != 1 else paths.run_dir(run, scale)
    if not (folder / "checkpoint.pt").is_file():
        raise LiveError(f"no trained run at {folder} (train it: mlmlmlm run {run})")
    if window_s not in (None, "crop"):
        try:
            window_s = float(window_s)
        except ValueError:
            raise LiveError(f"--window-s {window_s!r}: expected seconds or crop") from None
    if not in_process:
        from mlmlmlm.live.worker import TranslatorProcess

        return TranslatorProcess(load_translator, str(folder), scale, False, True, window_s,
                                 data_root, compile)
    from mlmlmlm.stream import Translator

    return Translator.from_run(folder, window_s=window_s, data_root=data_root, compile=compile)


def _make_output(spec: str, block: int, log):
    from mlmlmlm.live.audio_io import (
        AudioDeviceError,
        ClockOutput,
        DeviceOutput,
        import_sounddevice,
    )
    from mlmlmlm.live.session import WavAppender

    kind, _, path = spec.partition(":")
    if kind not in ("device", "file") or (kind == "file" and not path):
        raise LiveError(f"--out {spec!r}: expected device or file:PATH")

    def make(ring, tap):
        if kind == "device":
            try:
                import_sounddevice()
                return DeviceOutput(ring, block, tap)
            except AudioDeviceError as err:
                log(f"{err}; playing into the recording only")
                return ClockOutput(ring, block, tap)
        writer = WavAppender(path, ring.sr, 1)

        def both(x):
            writer.write(x)
            if tap is not None:
                tap(x)

        out = ClockOutput(ring, block, both)
        stop = out.stop
        out.stop = lambda: (stop(), writer.close())
        return out

    return make


def _open_input(spec: str, sr: float, block: int):
    from mlmlmlm.live.audio_io import DeviceInput, FileInput

    kind, _, path = spec.partition(":")
    if kind == "file" and path:
        return FileInput(path, sr, block)
    if kind == "device":
        from mlmlmlm.live.audio_io import import_sounddevice

        import_sounddevice()  # AudioDeviceError now, not after the board connected
        return DeviceInput(sr, block)
    raise LiveError(f"--audio-in {spec!r}: expected device or file:PATH")


def run_live(args, log=None) -> int:
    """The ``mlmlmlm live`` command; returns the exit status."""
    from mlmlmlm.live.audio_io import AudioDeviceError
    from mlmlmlm.live.engine import Engine, EngineConfig
    from mlmlmlm.live.session import SessionRecorder
    from mlmlmlm.live.sources import open_emg_source
    from mlmlmlm.live.trigger import TriggerConfig
    from mlmlmlm.live.worker import WorkerError

    log = log or (lambda m: print(f"\nmlmlmlm live: {m}", file=sys.stderr))
    tr = None
    try:
        if args.speed != 1 and (args.emg.startswith("bela") or "device" in (args.audio_in,
                                                                             args.out)):
            raise LiveError("--speed is for files and the emulator: a board and a sound card "
                            "keep their own time")
        if args.compile and not args.envelope:
            print("compiling the translator (about a minute on 2 cores) ...", flush=True)
        tr = load_translator(args.run, args.scale, args.envelope, args.in_process,
                             args.window_s, compile=args.compile)
        need = getattr(tr, "min_prompt_samples", 1)
        if args.prompt_s * tr.audio_sr < need:
            raise LiveError(f"--prompt-s {args.prompt_s:g} is under the model's shortest prompt, "
                            f"{need} samples ({1000 * need / tr.audio_sr:.1f} ms)")
        cfg = EngineConfig(trigger=TriggerConfig(threshold_db=args.threshold_db),
                           phrase_s=args.phrase_s, prompt_s=args.prompt_s,
                           playout_ms=playout_ms(None if args.envelope else args.run,
                                                 args.scale, args.playout_ms),
                           block=args.block, speed=args.speed)
        audio_in = _open_input(args.audio_in, tr.audio_sr, args.block)
        kw = {"quiet": True} if not args.emg.startswith("file") else {}
        src = open_emg_source(args.emg, **kw)
        make_out = _make_output(args.out, args.block, log)
    except (LiveError, AudioDeviceError, ValueError, WorkerError) as err:
        print(f"mlmlmlm live: {' '.join(str(err).split())}", file=sys.stderr)
        getattr(tr, "close", lambda: None)()
        return 2
    rec = None
    if args.record:
        rec = SessionRecorder(args.record, tr.audio_sr, {
            "emg": args.emg, "audio_in": args.audio_in, "out": args.out, "run": args.run,
            "envelope": args.envelope, "engine": {k: v for k, v in vars(cfg).items()
                                                  if k != "trigger"} | {
                "trigger": vars(cfg.trigger)}})
    engine = Engine(tr, src, audio_in, make_out, cfg, rec, log=log)
    tty = sys.stderr.isatty()
    try:
        engine.start()
        engine.wait(args.duration, until_end=args.duration is None,
                    status=lambda line: print(f"\r{line}", end="" if tty else "\n",
                                              file=sys.stderr, flush=True),
                    every_s=0.25 if tty else 2.0)
    except AudioDeviceError as err:
        log(str(err))
        engine.stop()
        getattr(tr, "close", lambda: None)()
        return 2
    except KeyboardInterrupt:
        pass
    summary = engine.stop()
    getattr(tr, "close", lambda: None)()
    print(f"\nmlmlmlm live: {summary['phrases']} phrases, {summary['underrun_blocks']} underruns, "
          f"{summary['nan_samples']} NaN samples repaired, {summary['disconnects']} disconnects"
          + (f"; session in {args.record}" if args.record else ""), file=sys.stderr)
    return 0
