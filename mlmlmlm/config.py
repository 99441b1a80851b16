"""Typed run configuration: YAML base + override merge per phase, checked against dataclasses.

Introduced in notebook 01_dataset; every notebook's `parameters` cell is resolved through
:func:`load_run_config` (the runbook) or :func:`config_from_dict` (papermill-injected dicts).

A run is addressed as ``<phase>/<run>``: ``experiments/<phase>/base.yaml`` holds the phase's
defaults (the paper's values), ``experiments/<phase>/<run>.yaml`` the few keys that change.
Each file may carry a ``scales:`` block (``cpu``, ``smoke``, ``paper``) merged on top of it:

    base  ->  base.scales[cpu]  ->  run  ->  run.scales[cpu]   (cpu; paper likewise)
    ... then base.scales[smoke]  ->  run.scales[smoke]        (smoke)

``smoke`` is layered on ``cpu`` (it is the cpu architecture at toy sizes, for tests), last, so
a run's cpu block never outlives the smoke sizes. Unknown keys and wrong types are errors that
name the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SCALES = ("cpu", "paper", "smoke")
BOOK_KEYS = ("runs", "table", "chapter_title", "paper_table")
REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration problem; the message names the file (when known) and the dotted key.

    ``key`` is the dotted key at fault (when there is one) and ``detail`` the message without
    its source, so :func:`load_run_config` can name the file the key came from.
    """

    def __init__(self, message: str, key: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.key, self.detail = key, detail


def _error(source: str, key: str | None, detail: str) -> ConfigError:
    return ConfigError(f"{source}: {detail}", key=key, detail=detail)


@dataclass
class CorpusConfig:
    """How the embedded default corpus is built (``mlmlmlm data build``)."""

    minutes: float = 24.0  # paired minutes of synthetic-driven material (plus the test_real split)
    seed: int = 0  # same seed -> byte-identical corpus


@dataclass
class EvalConfig:
    """Held-out evaluation: which windows, how many, and the inspection threshold."""

    split: str = "test"  # held-out split the metrics and players use
    n_windows: int = 64  # N for reconstruction identifiability (a collapsed model scores ~1/N)
    n_examples: int = 4  # windows shown as players / spectrograms (a fixed list)
    window_s: float = 6.0  # length of each held-out window: the paper's 6-s windows
    inspection_threshold: float = 0.5  # identifiability >= this -> "successful"
    # EMG channels are measured at this rate (22050/8 Hz: the 20-500 Hz EMG band with room to
    # spare), whatever rate the codec runs at, so upsampled and native codecs compare fairly
    emg_sr: float = 2756.25
    # further held-out splits measured the same way (e.g. [test_real], the real-EMG-driven
    # recordings); their figures go in the card with the split's name as suffix
    also_splits: list[str] = field(default_factory=list)


# Sections whose dataclass lives beside the code that uses it (nanoGPT-style small configs),
# per phase kind: a phase's base.yaml says `kind:`, which picks its sections and its recipe
# (mlmlmlm.recipes). Imported lazily so that `mlmlmlm data check` never pays for torch.
_COMMON = {
    "corpus": "mlmlmlm.config:CorpusConfig",
    "data": "mlmlmlm.data.dataset:DataConfig",
    "eval": "mlmlmlm.config:EvalConfig",
}
KINDS: dict[str, dict[str, str]] = {
    "dataset": _COMMON,
    "codec": {**_COMMON, "model": "mlmlmlm.models.codec:CodecConfig",
              "loss": "mlmlmlm.losses:LossConfig", "train": "mlmlmlm.train:TrainConfig"},
    "transformer": {**_COMMON, "model": "mlmlmlm.models.transformer:TransformerConfig",
                    "train": "mlmlmlm.train:TrainConfig",
                    # token crops; the frozen codecs by name; generation defaults
                    "data": "mlmlmlm.data.tokens:TokenDataConfig",
                    "codecs": "mlmlmlm.data.tokens:CodecsConfig",
                    "generate": "mlmlmlm.recipes.transformer:GenerateConfig"},
    # the live record: trains nothing, plays the presets' translation runs (no recipe)
    "live": {**_COMMON, "presets": "mlmlmlm.live.presets:PresetsConfig"},
}
DEFAULT_KIND = "codec"  # configs saved before `kind:` existed are codec runs


def section_type(name: str, kind: str = DEFAULT_KIND) -> type:
    module, _, attr = KINDS[kind][name].partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass
class RunConfig:
    """One resolved experiment: identity, the paper's reference row, and typed sections."""

    run: str = ""  # "<phase>/<run>"
    kind: str = DEFAULT_KIND  # the phase's kind (KINDS): its sections and its recipe
    scale: str = "cpu"  # "cpu" | "paper" | "smoke"
    title: str = ""  # the paper's row label, e.g. "A RVQ-VAE 3"
    description: str = ""  # one or two sentences: what this run changes and why
    paper: dict[str, Any] = field(default_factory=dict)  # the paper's reported values for this row
    sections: dict[str, Any] = field(default_factory=dict)  # name -> typed section dataclass

    @property
    def phase(self) -> str:
        return self.run.split("/")[0]

    @property
    def name(self) -> str:
        return self.run.split("/")[1]

    def __getattr__(self, item: str) -> Any:
        sections = self.__dict__.get("sections", {})
        if item in sections:
            return sections[item]
        raise AttributeError(f"run config {self.__dict__.get('run', '')!r} has no section {item!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "run": self.run,
            "kind": self.kind,
            "scale": self.scale,
            "title": self.title,
            "description": self.description,
            "paper": dict(self.paper),
        }
        for key, value in self.sections.items():
            out[key] = dataclasses.asdict(value)
        return out


# ---------------------------------------------------------------------------------------------
# YAML with floats like 1e-4 (YAML 1.1 would read them as strings)

class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(Path(path).read_text(), Loader=_Loader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such experiment file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Merge ``over`` into a copy of ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _layers(doc: dict[str, Any], scale: str, path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``[(scale or "", layer)]``: the file's own keys, then its ``scales:`` blocks for
    ``scale`` (``smoke`` = the ``cpu`` block, then the ``smoke`` block)."""
    doc = dict(doc)
    scales = doc.pop("scales", {}) or {}
    if not isinstance(scales, dict):
        raise ConfigError(f"{path}: 'scales' must be a mapping")
    for key in scales:
        if key not in SCALES:
            raise ConfigError(f"{path}: unknown scale 'scales.{key}' (expected one of {SCALES})")
    wanted = {"cpu": ["cpu"], "smoke": ["cpu", "smoke"], "paper": ["paper"]}[scale]
    return [("", doc)] + [(s, scales[s] or {}) for s in wanted if s in scales]


def experiments_dir(root: Path | None = None) -> Path:
    return (root or REPO_ROOT) / "experiments"


def list_runs(phase: str | None = None, root: Path | None = None) -> list[str]:
    """All ``<phase>/<run>`` names, in phase order, then the order of the phase's ``runs:`` key."""
    exp = experiments_dir(root)
    phases = [phase] if phase else sorted(p.name for p in exp.iterdir() if p.is_dir())
    out = []
    for ph in phases:
        base = read_yaml(exp / ph / "base.yaml")
        names = base.get("runs") or sorted(p.stem for p in (exp / ph).glob("*.yaml"))
        out += [f"{ph}/{n}" for n in names if n != "base"]
    return out


def merged_dict(run: str, scale: str = "cpu", root: Path | None = None,
                origins: list[tuple[str, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The merged (untyped) mapping for ``run`` at ``scale``; ``run`` may be ``<phase>/base``.

    ``origins``, when given, receives ``(file label, layer)`` for every layer merged, in order
    (how :func:`load_run_config` names the file a bad key came from).
    """
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r} (expected one of {SCALES})")
    if run.count("/") != 1:
        raise ConfigError(f"run must be '<phase>/<run>', got {run!r}")
    phase, name = run.split("/")
    exp = experiments_dir(root)
    paths = [exp / phase / "base.yaml"] + ([exp / phase / f"{name}.yaml"] if name != "base" else [])
    # smoke is the cpu architecture at toy sizes: its blocks go last, so that a run's cpu block
    # (e.g. a longer schedule) never outlives the base's smoke sizes
    ordered = []
    for path in paths:
        ordered += [(path, s, layer) for s, layer in _layers(read_yaml(path), scale, path)]
    ordered = [o for o in ordered if o[1] != "smoke"] + [o for o in ordered if o[1] == "smoke"]
    merged: dict[str, Any] = {}
    for path, block, layer in ordered:
        merged = deep_merge(merged, layer)
        if origins is not None:
            origins.append((_display(path) + (f" (scales.{block})" if block else ""), layer))
    for key in BOOK_KEYS:  # phase-level keys the runbook reads; not part of a run's config
        merged.pop(key, None)
    merged["run"], merged["scale"] = run, scale
    return merged


def _display(path: Path) -> str:
    from mlmlmlm.paths import relative  # paths imports this module: import here

    return relative(path)


def load_run_config(run: str, scale: str = "cpu", overrides: dict[str, Any] | None = None,
                    root: Path | None = None) -> RunConfig:
    """Resolve ``experiments/<phase>/<run>.yaml`` at ``scale`` into a checked :class:`RunConfig`.

    ``overrides`` maps dotted keys to values (``{"train.lr": 1e-3}``, from ``--set``) and is
    applied last. An error names the YAML file (or the ``--set`` item) its key came from.
    """
    origins: list[tuple[str, dict[str, Any]]] = []
    merged = merged_dict(run, scale, root, origins)
    for dotted, value in (overrides or {}).items():
        layer = _nest(dotted, value)
        merged = deep_merge(merged, layer)
        origins.append((f"--set {dotted}={value!r}", layer))
    try:
        return config_from_dict(merged, source=run)
    except ConfigError as exc:
        if exc.key is None:
            raise
        label = _origin(exc.key, origins) or run
        raise ConfigError(f"{label}: {exc.detail}", key=exc.key, detail=exc.detail) from None


def _origin(key: str, origins: list[tuple[str, dict[str, Any]]]) -> str | None:
    """The label of the last layer that sets ``key``, a key under it or a key above it."""
    head = key.split("[")[0]
    for label, layer in reversed(origins):
        for k in flatten(layer):
            if k == head or k.startswith(head + ".") or head.startswith(k + "."):
                return label
    return None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=3e-3", "loss.fft_sizes=[512, 128]"]`` -> ``{"train.lr": 0.003, ...}``
    (values parsed as YAML, floats like ``3e-3`` included). Raises :class:`ConfigError`."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=3e-3")
        try:
            out[key.strip()] = yaml.load(value, Loader=_Loader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML "
                              f"({str(exc).splitlines()[0]})") from None
    return out


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def config_from_dict(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Build a :class:`RunConfig` from a plain mapping (e.g. a papermill parameter), checking it."""
    data = dict(data)
    top = {f.name for f in dataclasses.fields(RunConfig) if f.name != "sections"}
    kind = data.get("kind", DEFAULT_KIND)
    if kind not in KINDS:
        raise _error(source, "kind", f"'kind' must be one of {sorted(KINDS)}, got {kind!r}")
    types_ = KINDS[kind]
    sections = {}
    for key, value in data.items():
        if key in top:
            continue
        if key not in types_:
            hint = f" (a {kind} phase has no '{key}' section)" if any(
                key in t for t in KINDS.values()) else ""
            raise _error(source, key, f"unknown key {_suggest(key, top | set(types_))}{hint}")
        if not isinstance(value, dict):
            raise _error(source, key, f"'{key}' must be a mapping, got {type(value).__name__}")
        sections[key] = build_dataclass(section_type(key, kind), value, key, source)
    kwargs = {k: data[k] for k in top if k in data}
    for key, expected in (("run", str), ("kind", str), ("scale", str), ("title", str),
                          ("description", str), ("paper", dict)):
        if key in kwargs and not isinstance(kwargs[key], expected):
            raise _error(source, key, f"'{key}' must be {expected.__name__}, "
                                      f"got {type(kwargs[key]).__name__} {kwargs[key]!r}")
    if kwargs.get("scale", "cpu") not in SCALES:
        raise _error(source, "scale", f"'scale' must be one of {SCALES}, got {kwargs['scale']!r}")
    return RunConfig(sections=sections, **kwargs)


def _suggest(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")


def build_dataclass(cls: type, data: dict[str, Any], prefix: str, source: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, checking names and types recursively."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            known = {f"{prefix}.{n}" for n in names}
            raise _error(source, f"{prefix}.{key}",
                         f"unknown key {_suggest(f'{prefix}.{key}', known)}")
        kwargs[key] = _check(value, hints[key], f"{prefix}.{key}", source)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # the dataclass's own checks (__post_init__)
        raise _error(source, prefix, f"'{prefix}': {exc}") from None


def _check(value: Any, tp: Any, key: str, source: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check(value, arg, key, source)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _type_error(value, tp, key, source)
        return build_dataclass(tp, value, key, source)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _type_error(value, tp, key, source)
        item = args[0] if args else Any
        return [_check(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(value, tp, key, source)
        vt = args[1] if len(args) == 2 else Any
        return {k: _check(v, vt, f"{key}.{k}", source) for k, v in value.items()}
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _type_error(value, tp, key, source)
    if tp is int or tp is str or tp is bool:
        if type(value) is tp:
            return value
        raise _type_error(value, tp, key, source)
    return value


def _type_error(value: Any, tp: Any, key: str, source: str) -> ConfigError:
    name = getattr(tp, "__name__", str(tp))
    return _error(source, key, f"'{key}' expects {name}, got {type(value).__name__} {value!r}")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (lists stay values)."""
    out = {}
    for key, value in d.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def differs_from_base(cfg: RunConfig, root: Path | None = None) -> dict[str, dict[str, Any]]:
    """Keys whose value differs from the phase base at the same scale: ``{key: {base, run}}``."""
    base = config_from_dict(merged_dict(f"{cfg.phase}/base", cfg.scale, root)).to_dict()
    run = cfg.to_dict()
    fb, fr = flatten(base), flatten(run)
    skip = {"run", "kind", "title", "description"}
    return {
        k: {"base": fb.get(k), "run": fr.get(k)}
        for k in sorted(set(fb) | set(fr))
        if k not in skip and k != "paper" and not k.startswith("paper.")
        and fb.get(k) != fr.get(k)
    }
