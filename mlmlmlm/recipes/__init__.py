"""Recipes: what each phase kind does with the one training loop (``kind:`` in a phase's
``base.yaml`` picks one). A recipe module provides ``train(cfg, run_dir, data_root, progress)``
and ``summary(cfg, run_dir, data_root)``; everything around them (run folders, data roots,
``--force``, torchrun) is here, once, for every kind.

Introduced in notebook 02_audio_codec (``mlmlmlm train <phase>/<run>`` goes through it).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from mlmlmlm.config import ConfigError, RunConfig, load_run_config

# kind -> recipe module; a kind without one has nothing to train
RECIPES = {"codec": "mlmlmlm.recipes.codec", "transformer": "mlmlmlm.recipes.transformer"}


def recipe(cfg: RunConfig) -> ModuleType:
    """The recipe module of ``cfg``'s kind (a one-line ``ConfigError`` when it has none)."""
    if cfg.kind not in RECIPES:
        raise ConfigError(f"{cfg.run}: a {cfg.kind} phase has nothing to train "
                          f"(kinds with a recipe: {', '.join(sorted(RECIPES))})")
    return importlib.import_module(RECIPES[cfg.kind])


def train_run(run: str, scale: str = "cpu", run_dir: Path | None = None,
              data_root: Path | None = None, overrides: dict[str, Any] | None = None,
              evaluate: bool = False, force: bool = False) -> dict[str, Any] | None:
    """``mlmlmlm train <phase>/<run> [--set k=v ...] [--eval] [--force]``: train without a
    notebook (works under ``torchrun``), optionally evaluate, and return what the CLI prints
    (``None`` on the non-main ranks).

    The default run dir is ``runs/<scale>/<phase>/<run>`` (see :mod:`mlmlmlm.paths`); with
    ``overrides`` it is ``<run>.set-<hash>`` (the hash covers overrides, scale and data root), so a
    sweep never touches the runbook's run dir and the same overrides resume the same dir; on a
    data root other than the default corpus it is ``<run>.data-<hash>``. ``force`` moves a
    checkpoint written with another configuration aside and starts over.
    """
    from mlmlmlm import distributed, paths
    from mlmlmlm.data.io import DataError

    cfg = load_run_config(run, scale, overrides)
    rec = recipe(cfg)
    smoke = scale == "smoke"
    data_root = Path(data_root or paths.default_data_root(smoke=smoke))
    if run_dir is None:
        tag = paths.set_tag(overrides, scale, data_root) or paths.data_tag(data_root, smoke=smoke)
        run_dir = paths.run_dir(run, scale, tag=tag)
    run_dir = Path(run_dir)
    if not data_root.exists():
        hint = " (build it with `mlmlmlm data build" + (" --smoke" if smoke else "") + "`)" \
            if data_root == paths.default_data_root(smoke=smoke) else ""
        raise DataError(data_root, f"data folder does not exist{hint}")
    # Under torchrun the process group must exist before the model is built: ResidualVQ decides
    # at construction whether to share codebook statistics across processes.
    ctx = distributed.setup(cfg.train.device) if "WORLD_SIZE" in os.environ else None
    try:
        if force and (run_dir / "checkpoint.pt").exists() and (ctx is None or ctx.is_main):
            _start_over(run_dir, cfg)
        result = rec.train(cfg, run_dir, data_root, progress=ctx is None or ctx.is_main)
    finally:
        if ctx is not None:
            distributed.teardown(ctx)
    if ctx is not None and not ctx.is_main:
        return None
    out: dict[str, Any] = {"run": run, "run_dir": str(run_dir), "overrides": overrides or {},
                           "steps": result.steps, "wall_s": round(result.wall_s, 1)}
    if evaluate:
        out |= rec.summary(cfg, run_dir, data_root)
    return out


def _start_over(run_dir: Path, cfg: RunConfig) -> None:
    """``--force``: a checkpoint of another configuration is moved aside (as the runbook does,
    :func:`mlmlmlm.checkpoint.supersede_if_changed`); the run starts over."""
    from mlmlmlm import checkpoint as C

    moved = C.supersede_if_changed(run_dir, cfg.to_dict(), C.WEIGHT_SECTIONS)
    if moved:
        print(f"{run_dir}: written with another configuration; moved to {moved[0]}, "
              "starting over")
