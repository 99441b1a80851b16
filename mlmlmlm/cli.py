"""The ``mlmlmlm`` command: run experiments, build the book, check and build data, benchmark.

Introduced in notebook 01_dataset (README shows each command).

    mlmlmlm list                                  every <phase>/<run>
    mlmlmlm run <phase>/<run> [--smoke] [--force] [--scale cpu|paper] [--data-root DIR]
    mlmlmlm book [--smoke] [--out DIR] [--only RUN ...] [--force] [--jobs N]
    mlmlmlm data check PATH [--window-s 6]
    mlmlmlm data build [--out data/default] [--minutes N] [--seed S] [--smoke]
    mlmlmlm train <phase>/<run> [--scale cpu|paper|smoke] [--run-dir DIR] [--data-root DIR]
                  [--set KEY=VALUE ...] [--eval] [--force]     (no notebook; torchrun-able)
    mlmlmlm bench codec|stream|transformer [--json] [--run <phase>/<run>] [--compile]
                  [--interleaved] [--playout-ms MS] [--real-time-s S]
    mlmlmlm translate --emg EMG.wav --prompt PROMPT.wav --out OUT.wav [--run 05_transformer/te2]
                  [--scale cpu] [--seconds N] [--temperature T] [--guidance W] [--seed S]
    mlmlmlm live --emg bela[:HOST]|file:PATH|emulator --audio-in device|file:PATH
                 --out device|file:PATH --threshold-db X --run <phase>/<run> [--record DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlmlmlm", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    sub.add_parser("list", help="list every experiment as <phase>/<run>")

    r = sub.add_parser("run", help="execute one experiment's notebook with papermill")
    r.add_argument("run", help="<phase>/<run>, e.g. 02_audio_codec/a_rvq_vae_3")
    r.add_argument("--smoke", action="store_true", help="tiny sizes, written to a temp folder")
    r.add_argument("--force", action="store_true", help="run even if the card is up to date")
    r.add_argument("--scale", default="cpu", choices=["cpu", "paper"])
    r.add_argument("--out", type=Path, help="book root to write to (default: repo, or temp)")
    r.add_argument("--data-root", type=Path,
                   help="your recordings (read only; default: the book root's default corpus)")

    b = sub.add_parser("book", help="run every experiment, then build the Jupyter Book")
    b.add_argument("--smoke", action="store_true", help="tiny sizes, written to a temp folder")
    b.add_argument("--out", type=Path, help="book root to write to")
    b.add_argument("--only", nargs="+", metavar="RUN", help="run only these <phase>/<run>")
    b.add_argument("--force", action="store_true", help="re-run up-to-date experiments too")
    b.add_argument("--jobs", type=int, help="notebooks side by side, each after the runs it "
                   "is built on (default: 2 with --smoke, else 1)")

    d = sub.add_parser("data", help="check or build datasets")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    c = dsub.add_parser("check", help="validate a recording file or folder (exit 2 on problems)")
    c.add_argument("path", type=Path)
    c.add_argument("--window-s", type=float, default=6.0, help="window length (s)")
    bd = dsub.add_parser("build", help="build the embedded default corpus (never over a folder "
                                      "that is not one)")
    bd.add_argument("--out", type=Path, help="default data/default (data/smoke with --smoke)")
    bd.add_argument("--minutes", type=float, help="default: experiments/01_dataset/base.yaml")
    bd.add_argument("--seed", type=int, help="default: experiments/01_dataset/base.yaml")
    bd.add_argument("--smoke", action="store_true", help="the smoke-size corpus")

    t = sub.add_parser("train", help="train one experiment without a notebook (torchrun-able)")
    t.add_argument("run")
    t.add_argument("--scale", default="cpu", choices=["cpu", "paper", "smoke"])
    t.add_argument("--run-dir", type=Path,
                   help="default runs/<phase>/<run>, or runs/<phase>/<run>.set-<hash> with --set")
    t.add_argument("--data-root", type=Path)
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key for this training (YAML value), e.g. "
                        "--set train.lr=3e-3; repeatable")
    t.add_argument("--eval", action="store_true",
                   help="then evaluate on the held-out windows and print the metrics")
    t.add_argument("--force", action="store_true",
                   help="start over when the run dir holds a checkpoint of another configuration")

    be = sub.add_parser("bench", help="benchmarks that print JSON")
    be.add_argument("what", choices=["codec", "stream", "transformer"])
    be.add_argument("--json", action="store_true", help="print JSON only")
    be.add_argument("--run", help="stream: a trained translation run (default: random weights)")
    be.add_argument("--seconds", type=float, default=62.0,
                    help="stream: length of each real-time run (62 s: 55 onsets, >= 60 s)")
    be.add_argument("--real-time-s", type=float,
                    help="stream: length of the underrun run alone (default --seconds; the "
                         "issue's figure is 600)")
    be.add_argument("--playout-ms", type=float, default=40.0, help="stream: playout delay")
    be.add_argument("--compile", action="store_true",
                    help="stream, transformer: also measure the torch.compile'd translator (its "
                         "compute beside the eager one's, in one run; the underrun run with it; "
                         "transformer: with float32 and with bfloat16 weights)")
    be.add_argument("--interleaved", action="store_true",
                    help="stream: the board's one-variable EMG layout (128-frame buffers, 5.8 "
                         "ms, instead of 1024: bela/render.cpp with MLMLMLM_INTERLEAVED=1)")

    tr = sub.add_parser("translate", help="EMG file + audio prompt -> viola WAV (streaming path)")
    tr.add_argument("--emg", type=Path, required=True, help="6-channel EMG WAV, any rate >= 1 kHz")
    tr.add_argument("--prompt", type=Path, required=True, help="audio prompt WAV (start tokens)")
    tr.add_argument("--out", type=Path, required=True, help="output WAV (written whole or not)")
    tr.add_argument("--run", default="05_transformer/te2", help="<phase>/<run> or a run folder")
    tr.add_argument("--scale", default="cpu", choices=["cpu", "paper", "smoke"])
    tr.add_argument("--seconds", type=float, help="translate only the first N seconds of EMG")
    tr.add_argument("--temperature", type=float, help="default: the run's generate section")
    tr.add_argument("--guidance", type=float, help="classifier-free guidance weight (1: none)")
    tr.add_argument("--seed", type=int, help="sampling seed (default: the run's)")
    tr.add_argument("--data-root", type=Path,
                    help="the corpus the run was trained on (its EMG scale; default corpus)")

    from mlmlmlm.live.app import add_arguments

    add_arguments(sub.add_parser("live", help="the live instrument: EMG in, viola out"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from mlmlmlm.config import ConfigError

    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"mlmlmlm: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlmlmlm: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the known error types, traceback otherwise
        from mlmlmlm.checkpoint import ResumeError
        from mlmlmlm.data.io import DataError
        from mlmlmlm.runbook import RunbookError

        if isinstance(exc, (DataError, RunbookError, ResumeError)):
            print(f"mlmlmlm: {exc}", file=sys.stderr)
            return 1 if isinstance(exc, RunbookError) else 2
        raise


def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "list":
        from mlmlmlm.config import list_runs

        print("\n".join(list_runs()))
        return 0
    if args.cmd == "run":
        import tempfile

        from mlmlmlm.config import REPO_ROOT
        from mlmlmlm.data.corpus import ensure_default
        from mlmlmlm.runbook import prepare_root, run_experiment

        root = args.out or (Path(tempfile.mkdtemp(prefix="mlmlmlm-smoke-")) if args.smoke
                            else REPO_ROOT)
        if root != REPO_ROOT:
            prepare_root(root)
        data_root = args.data_root or ensure_default(root, args.smoke, progress=not args.smoke)
        card = run_experiment(args.run, smoke=args.smoke, force=args.force, root=root,
                              data_root=data_root, scale=args.scale)
        print(f"{args.run}: {card['status']} in {card['wall_s']:.0f} s -> {root / card['page']}")
        return 0
    if args.cmd == "book":
        from mlmlmlm.runbook import run_book

        run_book(smoke=args.smoke, out=args.out, only=args.only, force=args.force,
                 jobs=args.jobs)
        return 0
    if args.cmd == "data":
        if args.data_cmd == "check":
            from mlmlmlm.data.check import run_check

            return run_check(args.path, window_s=args.window_s)
        from mlmlmlm import paths
        from mlmlmlm.data.corpus import default_settings, ensure_default_corpus

        minutes, seed = default_settings(args.smoke)
        minutes = minutes if args.minutes is None else args.minutes
        seed = seed if args.seed is None else args.seed
        out = args.out or paths.default_data_root(smoke=args.smoke)
        ensure_default_corpus(out, minutes, seed, log=lambda m: print(m, file=sys.stderr))
        from mlmlmlm.data.stats import manifest

        man = manifest(out)
        print(json.dumps({"out": str(out), "recordings": len(man["recordings"]),
                          "minutes": man["minutes"], "seed": man["seed"],
                          "seconds": man.get("build", {}).get("seconds")}))
        return 0
    if args.cmd == "train":
        from mlmlmlm.config import parse_overrides
        from mlmlmlm.recipes import train_run

        out = train_run(args.run, scale=args.scale, run_dir=args.run_dir,
                        data_root=args.data_root, overrides=parse_overrides(args.set),
                        evaluate=args.eval, force=args.force)
        if out is not None:  # None on the non-main ranks of torchrun
            print(json.dumps(out))
        return 0
    if args.cmd == "translate":
        from mlmlmlm.translate import run_translate

        return run_translate(args)
    if args.cmd == "live":
        from mlmlmlm.live.app import run_live

        return run_live(args)
    if args.cmd == "bench":
        from mlmlmlm import bench
        from mlmlmlm.live.app import LiveError

        try:
            if args.what == "transformer":  # generation speed, random weights
                out = bench.bench_transformer(compile=args.compile)
            else:
                out = bench.bench_codec() if args.what == "codec" else bench.bench_stream(
                    args.run, seconds=args.seconds, real_time_s=args.real_time_s,
                    playout_ms=args.playout_ms, compile=args.compile,
                    interleaved=args.interleaved)
        except LiveError as err:
            print(f"mlmlmlm bench: {err}", file=sys.stderr)
            return 2
        print(json.dumps(out, indent=None if args.json else 2))
        return 0
    raise AssertionError(args.cmd)


if __name__ == "__main__":
    sys.exit(main())
