"""The runbook: execute a phase notebook with papermill for one experiment, write its run card,
regenerate the phase's results table, and build the Jupyter Book.

Introduced in notebook 01_dataset (every chapter's run pages are written by it).

Output layout under a *book root* (the repository, or a temporary folder with ``--smoke``)::

    <root>/book/<phase>/runs/<run>.ipynb   executed notebook (the run page)
    <root>/book/<phase>/runs/<run>.json    run card
    <root>/book/<phase>/results.md         table regenerated from all cards of the phase
    <root>/runs/<scale>/<phase>/<run>/     checkpoints, metrics.jsonl, final_metrics.json
    <root>/data/default, data/smoke        the default corpus the runs read (see paths.py)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlmlmlm import checkpoint as C
from mlmlmlm import jit_cache, paths
from mlmlmlm.atomic import write_json_atomic, write_text_atomic
from mlmlmlm.config import (
    REPO_ROOT,
    RunConfig,
    differs_from_base,
    list_runs,
    load_run_config,
    read_yaml,
)
from mlmlmlm.data.corpus import ensure_default
from mlmlmlm.figures import FIGURE_DIR, results_figures
from mlmlmlm.report import METRICS_FILE, TABLES, markdown_table
from mlmlmlm.run_page import execute_page, finish_page
from mlmlmlm.runs import write_placeholder_pages
from mlmlmlm.schedule import run_in_order


class RunbookError(RuntimeError):
    """A run failed; the message is one line naming the run and where to look."""


# Runs side by side (``run_book(jobs=2)``) regenerate their phase's table and figures one at a
# time: matplotlib's pyplot is not thread-safe.
_RESULTS_LOCK = threading.Lock()


def git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, check=False).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def upstream_checkpoints(cfg: RunConfig, run_dir: Path) -> list[Path]:
    """The checkpoints a run is built on: every run its sections declare (``upstream_runs()``:
    a translation run's frozen ``codecs:``, the live record's ``presets:``), resolved beside its
    own folder at the same scale and data (a path stays a path). Their bytes enter its config
    hash, so a retrained codec or translator makes the run stale."""
    tag = run_dir.name[len(cfg.name):]
    out = []
    for section in cfg.sections.values():
        for ref in getattr(section, "upstream_runs", list)():
            phase, _, name = ref.partition("/")
            d = Path(ref) if ref.count("/") != 1 else run_dir.parent.parent / phase / (name + tag)
            out.append(d / "checkpoint.pt")
    return out


def _config_hash(cfg: RunConfig, notebook: Path, data_root: Path,
                 upstream: list[Path] | None = None) -> str:
    from mlmlmlm.data.tokens import file_sha256

    h = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    h.update(notebook.read_bytes())
    for p in upstream or []:  # a run on frozen checkpoints is stale once they change
        h.update(file_sha256(p).encode() if p.is_file() else f"missing {p.name}".encode())
    manifest = data_root / "corpus.json"
    if manifest.exists():
        h.update(manifest.read_bytes())
    else:  # a user's folder: its files' names, sizes and times (a changed take reruns)
        for p in sorted(data_root.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(data_root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _supersede_stale(run_dir: Path, cfg: RunConfig, log: Callable[[str], None]) -> None:
    """A checkpoint written with another configuration is moved aside, and the run starts over
    (:func:`mlmlmlm.checkpoint.supersede_if_changed`); a killed run of the same one resumes."""
    moved = C.supersede_if_changed(run_dir, cfg.to_dict(), C.TRAINING_SECTIONS)
    if moved:
        old, changed = moved
        log(f"{cfg.run}: configuration changed since its checkpoint ({', '.join(changed[:3])}"
            f"{' ...' if len(changed) > 3 else ''}); starting over, old run kept in {old}")


def run_experiment(run: str, *, smoke: bool = False, force: bool = False,
                   root: Path | None = None, data_root: Path | None = None,
                   scale: str = "cpu", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Execute ``notebooks/<phase>.ipynb`` for ``run`` and write its page, card and results.

    Skips the run (returns the existing card) when a card with the same config, notebook and
    corpus already exists, unless ``force``. Raises :class:`RunbookError` when the notebook fails;
    the partly executed page is kept for inspection.
    """
    root = Path(root or REPO_ROOT)
    scale = "smoke" if smoke else scale
    cfg = load_run_config(run, scale)
    data_root = Path(data_root or paths.default_data_root(root, smoke)).resolve()
    notebook = REPO_ROOT / "notebooks" / f"{cfg.phase}.ipynb"
    out_dir = root / "book" / cfg.phase / "runs"
    out_nb, card_path = out_dir / f"{cfg.name}.ipynb", out_dir / f"{cfg.name}.json"
    run_dir = paths.run_dir(run, scale, root, paths.data_tag(data_root, root, smoke)).resolve()
    chash = _config_hash(cfg, notebook, data_root, upstream_checkpoints(cfg, run_dir))
    if card_path.exists() and out_nb.exists() and not force:
        card = json.loads(card_path.read_text())
        if card.get("config_hash") == chash and card.get("status") == "ok":
            log(f"{run}: up to date (card {card_path}); --force to run again")
            return card
    out_dir.mkdir(parents=True, exist_ok=True)
    if force and run_dir.exists():  # --force starts over; otherwise a killed run resumes
        shutil.rmtree(run_dir)
    _supersede_stale(run_dir, cfg, log)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / METRICS_FILE).unlink(missing_ok=True)
    # paths inside the repository go in relative (the kernel runs there): the page shows no
    # build machine's folders
    params = {"run": run, "scale": scale, "smoke": smoke, "config": cfg.to_dict(),
              "run_dir": paths.relative(run_dir), "data_root": paths.relative(data_root)}
    # The kernel must be this interpreter's: put its bin folder first on PATH.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    t0 = time.time()
    error = execute_page(notebook, out_nb, params, REPO_ROOT)
    status = "ok" if error is None else "failed"
    wall = time.time() - t0
    finish_page(out_nb, cfg, root)
    metrics_path = run_dir / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    if status == "ok" and not metrics:
        status, error = "failed", f"notebook wrote no {METRICS_FILE} in {run_dir}"
    card = {
        "run": run, "phase": cfg.phase, "name": cfg.name, "title": cfg.title,
        "description": cfg.description, "scale": scale, "smoke": smoke, "status": status,
        "error": error, "params": cfg.to_dict(), "differs_from_base": differs_from_base(cfg),
        "metrics": metrics, "paper": cfg.paper, "git_sha": git_sha(), "device": device_name(),
        "wall_s": round(wall, 2), "versions": C.package_versions(), "config_hash": chash,
        "page": str(out_nb.relative_to(root)), "run_dir": paths.relative(run_dir, root),
        "data_root": paths.relative(data_root, root),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json_atomic(card_path, card)
    with _RESULTS_LOCK:
        write_results(cfg.phase, root)
    if status != "ok":
        raise RunbookError(f"{run}: notebook failed at {error} (see {out_nb})")
    return card


def write_results(phase: str, root: Path | None = None) -> Path:
    """Regenerate ``book/<phase>/results.md`` from every run card of the phase.

    Columns come from the ``table:`` list in ``experiments/<phase>/base.yaml``
    (``- {key: metrics.mrstft, label: MRSTFT}``); the figures that compare the runs follow
    (:func:`mlmlmlm.figures.results_figures`, drawn into ``book/<phase>/_figures/``), then the
    paper's own values for the same rows in a second table so the two can be read side by side.
    """
    root = Path(root or REPO_ROOT)
    base = read_yaml(REPO_ROOT / "experiments" / phase / "base.yaml")
    columns = base.get("table") or []
    if isinstance(columns, str):
        columns = TABLES[columns]
    cards = []
    for run in list_runs(phase):
        path = root / "book" / phase / "runs" / f"{run.split('/')[1]}.json"
        if path.exists():
            cards.append(json.loads(path.read_text()))
    labels = ["run"] + [c["label"] for c in columns]
    # the paper's rows have only the paper's columns (its inspection is in its own column)
    paper_labels = ["run"] + [c["label"] for c in columns if not c.get("ours")]
    ours, paper = [], []
    for card in cards:
        row = {"run": f"[{card['title'] or card['name']}](runs/{card['name']}.ipynb)"}
        prow = {"run": card["title"] or card["name"]}
        for col in columns:
            section, _, key = col["key"].partition(".")
            row[col["label"]] = card.get(section, {}).get(key) if section != "paper" else None
            prow[col["label"]] = card.get("paper", {}).get(key)
        if card.get("status") != "ok":
            row["run"] += " (failed)"
        ours.append(row)
        paper.append(prow)
    title = base.get("chapter_title", phase)
    lines = [f"# Results: {title}", "",
             "Generated by the runbook from the run cards of this chapter; do not edit by hand.",
             ""]
    if not cards:
        lines += ["No runs have been executed yet: `mlmlmlm run <phase>/<run>` writes them.", ""]
    else:
        scales = sorted({c["scale"] for c in cards})
        lines += [f"## Our runs ({', '.join(scales)} scale)", "",
                  markdown_table(ours, _filled(ours, labels)), ""]
        lines += results_figures(cards, root, root / "book" / phase)
        if len(_filled(paper, paper_labels)) > 1:
            lines += ["## The paper's values for the same rows", "",
                      (f"As reported in {base.get('paper_table', 'the paper')} "
                       "(full scale, GPU, about 100–186 epochs)."), "",
                      markdown_table(paper, _filled(paper, paper_labels)), ""]
        lines += ["## Run cards", ""]
        for card in cards:
            diff = ", ".join(f"`{k}`={v['run']!r}" for k, v in card["differs_from_base"].items()
                             if k != "paper")
            lines.append(f"- **{card['title'] or card['name']}** ({card['status']}, "
                         f"{card['wall_s']:.0f} s on {card['device']}, git {card['git_sha'][:12]}):"
                         f" differs from base in {diff or 'nothing'}.")
        lines.append("")
    out = root / "book" / phase / "results.md"
    write_text_atomic(out, "\n".join(lines))
    return out


def _filled(rows: list[dict], labels: list[str]) -> list[str]:
    """``labels`` without the columns no row has a value in (a chapter's runs without audio
    have no audio identifiability): the table keeps to the width of what was measured."""
    return [c for c in labels if c == "run" or any(r.get(c) is not None for r in rows)]


def prepare_root(out: Path) -> Path:
    """Copy the hand-written book sources into ``out`` (a fresh book root for ``--smoke``)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(REPO_ROOT / name, out / name)
    shutil.copytree(REPO_ROOT / "book", out / "book", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("runs", "results.md", "_build", FIGURE_DIR))
    return out


def book_config(root: Path) -> Path:
    """``<root>/_config.yml`` plus the run cards as MyST substitutions (see :mod:`mlmlmlm.runs`),
    written to ``<root>/_build/config.yml``: the chapters quote their runs' figures through it."""
    import yaml

    from mlmlmlm.atomic import write_text_atomic
    from mlmlmlm.runs import substitutions

    cfg = read_yaml(root / "_config.yml")
    parse = cfg.setdefault("parse", {})
    exts = parse.setdefault("myst_enable_extensions", [])
    if "substitution" not in exts:
        exts.append("substitution")
    parse["myst_substitutions"] = substitutions(root)
    out = root / "_build" / "config.yml"
    write_text_atomic(out, "# generated by mlmlmlm.runbook.book_config: do not edit\n"
                      + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return out


def build_book(root: Path, log: Callable[[str], None] = print) -> Path:
    """``jupyter-book build <root> -W -n --keep-going`` with :func:`book_config`; returns
    ``_build/html/index.html``."""
    exe = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(root), "--config",
           str(book_config(root)), "-W", "-n", "--keep-going"]
    log("building the book: " + " ".join(cmd[1:]))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise RunbookError(f"jupyter-book build failed for {root}:\n{tail}")
    return root / "_build" / "html" / "index.html"


def run_book(*, smoke: bool = False, out: Path | None = None, only: list[str] | None = None,
             force: bool = False, jobs: int | None = None,
             log: Callable[[str], None] = print) -> Path:
    """Run every experiment of every phase (or ``only`` these), then build the book.

    With ``smoke`` everything goes to ``out`` (default: a new temporary folder), not ``book/``.
    ``jobs`` notebooks run side by side, each after the runs it is built on
    (:func:`run_needs`); by default 2 at the smoke size (its notebooks spend their time starting
    kernels and importing, one core each) and 1 otherwise (a cpu-scale training takes every
    core). Prints one line per run with its elapsed time. Returns the path of ``index.html``.
    """
    if smoke:
        root = prepare_root(Path(out) if out else Path(tempfile.mkdtemp(prefix="mlmlmlm-smoke-")))
    else:
        root = Path(out) if out else REPO_ROOT
        if root != REPO_ROOT:
            prepare_root(root)
    runs = only or list_runs()
    jobs = jobs or (min(2, os.cpu_count() or 1) if smoke else 1)
    data_root = ensure_default(root, smoke, progress=not smoke, log=log)
    failures: list[str] = []
    t_all, started, notes = time.time(), {}, {}

    def one(run: str) -> None:
        started[run] = time.time()
        try:
            skipped: list[str] = []
            run_experiment(run, smoke=smoke, force=force, root=root, data_root=data_root,
                           log=skipped.append)
            notes[run] = "up to date" if skipped else "ok"
        except Exception as exc:  # noqa: BLE001 - a RunbookError names its run; others (a dead
            # kernel) get the run's name here, one line each, and the other runs still go
            failures.append(str(exc) if isinstance(exc, RunbookError)
                            else f"{run}: {type(exc).__name__}: {exc}")
            notes[run] = "FAILED"

    def finished(run: str, _result) -> None:
        log(f"[{len(notes)}/{len(runs)}] {run}: {notes[run]} in {time.time() - started[run]:.0f}"
            f" s (total {time.time() - t_all:.0f} s)")

    side_by_side(runs, run_needs(runs, "smoke" if smoke else "cpu"), one, jobs, finished)
    for phase in sorted({r.split("/")[0] for r in list_runs()}):
        write_results(phase, root)
    write_placeholder_pages(root)  # runs not in this build: their links still resolve
    if failures:
        raise RunbookError(f"{len(failures)} run(s) failed:\n" + "\n".join(failures))
    index = build_book(root, log)
    log(f"book: {index}")
    return index


def side_by_side(jobs: list, needs: dict, work: Callable, workers: int,
                 done: Callable | None = None) -> dict:
    """:func:`~mlmlmlm.schedule.run_in_order` for notebooks: with ``workers`` > 1, librosa's
    numba cache is compiled first, alone (:mod:`mlmlmlm.jit_cache`: kernels compiling it at once
    leave a cache that segfaults the next), and each kernel gets its share of the cores unless
    ``OMP_NUM_THREADS`` is set (two torch pools on two cores spin against each other)."""
    threads = os.environ.get("OMP_NUM_THREADS")
    if workers > 1:
        jit_cache.warm()
        if threads is None:
            os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    try:
        return run_in_order(jobs, needs, work, workers, done)
    finally:
        if workers > 1 and threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)


def run_needs(runs: list[str], scale: str) -> dict[str, set[str]]:
    """``{run: the runs it is built on}``: the ``<phase>/<run>`` names its sections declare
    (:func:`upstream_checkpoints`), a translation run's codecs and the live record's presets."""
    needs = {}
    for run in runs:
        cfg = load_run_config(run, scale)
        needs[run] = {ref for s in cfg.sections.values()
                      for ref in getattr(s, "upstream_runs", list)() if ref.count("/") == 1}
    return needs
