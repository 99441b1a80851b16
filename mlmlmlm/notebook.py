"""The first cell after every notebook's ``parameters`` cell: check the parameters, resolve the
run's configuration and folders, seed, and fix the look of figures.

Introduced in notebook 01_dataset; used by every notebook.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlmlmlm import paths
from mlmlmlm.config import ConfigError, RunConfig, config_from_dict, load_run_config

# The names (and types) a notebook's parameters cell may define; papermill injects the same.
PARAMETERS: dict[str, type | tuple[type, ...]] = {
    "run": str,  # "<phase>/<run>"
    "scale": str,  # "cpu" | "paper" | "smoke"
    "smoke": bool,  # tiny sizes (tests, --smoke)
    "config": dict,  # resolved config from the runbook; {} = resolve `run` here
    "run_dir": str,  # where checkpoints and metrics go; "" = runs/<scale>/<phase>/<run>
    "data_root": str,  # data folder (read only); "" = data/default, built there when missing
}


@dataclass
class Setup:
    """What a notebook needs after its parameters cell."""

    cfg: RunConfig
    run_dir: Path
    data_root: Path
    smoke: bool


def check_parameters(params: dict[str, Any]) -> None:
    """Unknown parameter names and wrong types are errors naming the parameter."""
    for name, value in params.items():
        if name not in PARAMETERS:
            raise ConfigError(f"notebook parameters: unknown parameter {name!r} "
                              f"(known: {', '.join(PARAMETERS)})")
        if not isinstance(value, PARAMETERS[name]):
            raise ConfigError(f"notebook parameters: {name!r} expects "
                              f"{PARAMETERS[name].__name__}, got {type(value).__name__} {value!r}")
    missing = set(PARAMETERS) - set(params)
    if missing:
        raise ConfigError(f"notebook parameters: missing {sorted(missing)}")


def setup(run: str, scale: str, smoke: bool, config: dict, run_dir: str, data_root: str,
          **unknown: Any) -> Setup:
    """Check the parameters cell, resolve the run, seed everything and set the figure style.

    Parameters are the notebook's ``parameters`` cell, passed by name. With ``config == {}`` the
    run is resolved from ``experiments/`` here (stepping through in JupyterLab); otherwise the
    runbook's resolved mapping is checked against the dataclasses and used as is.

    ``data_root`` is only ever read. With ``data_root == ""`` the default corpus is used, and
    built at ``data/default`` (``data/smoke``) when it is not there yet: that folder is ours.
    A run on another folder gets its own run folder (``runs/<scale>/<phase>/<run>.data-<hash>``).
    """
    params = dict(run=run, scale=scale, smoke=smoke, config=config, run_dir=run_dir,
                  data_root=data_root, **unknown)
    check_parameters(params)
    text_progress_bars()
    scale = "smoke" if smoke else scale
    cfg = config_from_dict(config, source="papermill parameters") if config else \
        load_run_config(run, scale)
    if cfg.run != run:
        raise ConfigError(f"notebook parameters: config is for {cfg.run!r} but run is {run!r}")
    if data_root:
        dr = Path(data_root)
        if not dr.exists():
            raise ConfigError(f"notebook parameters: data_root {data_root!r} does not exist")
    else:
        from mlmlmlm.data.corpus import ensure_default

        dr = ensure_default(smoke=smoke, progress=False)
    rd = Path(run_dir) if run_dir else \
        paths.run_dir(cfg.run, cfg.scale, tag=paths.data_tag(dr, smoke=smoke))
    rd.mkdir(parents=True, exist_ok=True)
    from mlmlmlm.checkpoint import seed_everything

    seed_everything(_seed_of(cfg))
    _style()
    return Setup(cfg=cfg, run_dir=rd, data_root=dr, smoke=smoke)


def text_progress_bars() -> None:
    """Settle ``tqdm.auto`` quietly before anything imports it. In a kernel without ipywidgets
    (the runbook's papermill kernel), its first import warns "IProgress not found" (pooch, which
    librosa loads for its pitch tracker, imports it in the evaluation), and the warning lands on
    the run page. Imported here with that one warning ignored, it falls back to tqdm's text bars
    for the whole session; where ipywidgets is installed it picks the widget bars, as before."""
    import warnings

    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
        import tqdm.autonotebook  # noqa: F401


def _seed_of(cfg: RunConfig) -> int:
    for name in ("train", "data", "corpus"):
        section = cfg.sections.get(name)
        if section is not None and hasattr(section, "seed"):
            return int(section.seed)
    return 0


def _style() -> None:
    import matplotlib

    matplotlib.rcParams.update({"figure.dpi": 90, "savefig.dpi": 90, "font.size": 8,
                                "axes.titlesize": 9, "figure.max_open_warning": 0})
