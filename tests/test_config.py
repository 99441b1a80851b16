"""Config merge order, typed checking and error messages (mlmlmlm.config)."""

from pathlib import Path

import pytest
import yaml

from mlmlmlm.config import (
    ConfigError,
    config_from_dict,
    differs_from_base,
    list_runs,
    load_run_config,
    merged_dict,
)


def _write(root: Path, rel: str, text: str) -> None:
    path = root / "experiments" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def exp(tmp_path):
    _write(tmp_path, "09_toy/base.yaml", """
runs: [b_run, a_run]
table: [{key: metrics.x, label: X}]
kind: dataset
title: toy
corpus: {minutes: 10.0, seed: 1}
eval: {n_windows: 64, split: test}
scales:
  cpu: {corpus: {minutes: 5.0}}
  smoke: {corpus: {minutes: 0.5}, eval: {n_windows: 8}}
  paper: {corpus: {minutes: 130.0}}
""")
    _write(tmp_path, "09_toy/a_run.yaml", """
title: A
corpus: {seed: 2}
eval: {inspection_threshold: 1e-1}
scales:
  cpu: {eval: {n_examples: 2}}
""")
    _write(tmp_path, "09_toy/b_run.yaml", "title: B\n")
    return tmp_path


def test_merge_order_base_scale_run(exp):
    cpu = load_run_config("09_toy/a_run", "cpu", root=exp)
    assert cpu.corpus.minutes == 5.0  # base.scales.cpu over base
    assert cpu.corpus.seed == 2  # run over base
    assert cpu.eval.n_examples == 2  # run.scales.cpu
    assert cpu.eval.inspection_threshold == pytest.approx(0.1)  # 1e-1 parsed as a float
    smoke = load_run_config("09_toy/a_run", "smoke", root=exp)
    assert smoke.corpus.minutes == 0.5 and smoke.eval.n_windows == 8
    assert smoke.eval.n_examples == 2  # smoke is layered on cpu
    paper = load_run_config("09_toy/a_run", "paper", root=exp)
    assert paper.corpus.minutes == 130.0 and paper.eval.n_examples == 4


def test_smoke_is_layered_last(exp):
    # a run's cpu block (here a longer corpus) never outlives the base's smoke sizes
    _write(exp, "09_toy/long.yaml", "scales: {cpu: {corpus: {minutes: 60.0}}}\n")
    assert load_run_config("09_toy/long", "cpu", root=exp).corpus.minutes == 60.0
    assert load_run_config("09_toy/long", "smoke", root=exp).corpus.minutes == 0.5
    # ... while the run's own smoke block still wins over the base's
    _write(exp, "09_toy/long.yaml", "scales: {cpu: {corpus: {minutes: 60.0}}, "
                                    "smoke: {corpus: {minutes: 0.25}}}\n")
    assert load_run_config("09_toy/long", "smoke", root=exp).corpus.minutes == 0.25


def test_runs_listed_in_declared_order(exp):
    assert list_runs("09_toy", root=exp) == ["09_toy/b_run", "09_toy/a_run"]


def test_book_keys_are_not_config(exp):
    merged = merged_dict("09_toy/a_run", "cpu", root=exp)
    assert "table" not in merged and "runs" not in merged


def test_unknown_key_names_file_and_key(exp):
    _write(exp, "09_toy/bad.yaml", "corpus: {minuts: 3.0}\n")
    with pytest.raises(ConfigError, match=r"09_toy/bad.yaml: unknown key 'corpus.minuts' "
                                          r"\(did you mean 'corpus.minutes'\?\)"):
        load_run_config("09_toy/bad", root=exp)


def test_error_names_the_layer_the_key_came_from(exp):
    # a bad key in a run's scales block names that file and block; a good run file whose base
    # is fine names nothing else; --set names the override
    _write(exp, "09_toy/bad.yaml", "corpus: {minutes: 3.0}\nscales: {cpu: {corpus: {seed: x}}}\n")
    with pytest.raises(ConfigError) as info:
        load_run_config("09_toy/bad", root=exp)
    assert str(info.value).startswith(f"{exp / 'experiments/09_toy/bad.yaml'} (scales.cpu): ")
    assert "'corpus.seed' expects int, got str 'x'" in str(info.value)
    _write(exp, "09_toy/ok.yaml", "corpus: {minutes: 3}\n")
    with pytest.raises(ConfigError, match=r"^--set corpus.seeds=1: unknown key 'corpus.seeds' "
                                          r"\(did you mean 'corpus.seed'\?\)"):
        load_run_config("09_toy/ok", overrides={"corpus.seeds": 1}, root=exp)
    with pytest.raises(ConfigError, match=r"^--set corpus.minutes='a': 'corpus.minutes' expects"):
        load_run_config("09_toy/ok", overrides={"corpus.minutes": "a"}, root=exp)


def test_set_with_bad_yaml_says_it_came_from_set():
    from mlmlmlm.config import parse_overrides

    with pytest.raises(ConfigError, match=r"^--set 'train.lr=\[1': the value is not valid YAML"):
        parse_overrides(["train.lr=[1"])
    with pytest.raises(ConfigError, match=r"^--set 'lr': expected KEY=VALUE"):
        parse_overrides(["lr"])


def test_unknown_section(exp):
    _write(exp, "09_toy/bad.yaml", "corpuss: {minutes: 3.0}\n")
    with pytest.raises(ConfigError, match="unknown key 'corpuss'"):
        load_run_config("09_toy/bad", root=exp)


def test_wrong_type_names_key(exp):
    _write(exp, "09_toy/bad.yaml", "corpus: {seed: 'zero'}\n")
    with pytest.raises(ConfigError, match=r"'corpus.seed' expects int, got str 'zero'"):
        load_run_config("09_toy/bad", root=exp)
    _write(exp, "09_toy/bad.yaml", "eval: {n_windows: true}\n")
    with pytest.raises(ConfigError, match=r"'eval.n_windows' expects int, got bool"):
        load_run_config("09_toy/bad", root=exp)


def test_int_is_accepted_for_float(exp):
    _write(exp, "09_toy/ok.yaml", "corpus: {minutes: 3}\n")
    cfg = load_run_config("09_toy/ok", root=exp)
    assert cfg.corpus.minutes == 3.0 and isinstance(cfg.corpus.minutes, float)


def test_unknown_scale_and_missing_file(exp):
    _write(exp, "09_toy/bad.yaml", "scales: {laptop: {}}\n")
    with pytest.raises(ConfigError, match="unknown scale 'scales.laptop'"):
        load_run_config("09_toy/bad", root=exp)
    with pytest.raises(ConfigError, match="no such experiment file"):
        load_run_config("09_toy/nope", root=exp)
    with pytest.raises(ConfigError, match="run must be '<phase>/<run>'"):
        load_run_config("nophase", root=exp)


def test_invalid_yaml_is_one_line(exp):
    _write(exp, "09_toy/bad.yaml", "corpus: {minutes: [\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_run_config("09_toy/bad", root=exp)
    assert "\n" not in str(info.value)


def test_overrides_and_round_trip(exp):
    cfg = load_run_config("09_toy/b_run", "cpu", overrides={"corpus.seed": 7}, root=exp)
    assert cfg.corpus.seed == 7
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="unknown key"):
        load_run_config("09_toy/b_run", overrides={"corpus.nope": 1}, root=exp)


def test_differs_from_base(exp, monkeypatch):
    from mlmlmlm import config

    monkeypatch.setattr(config, "REPO_ROOT", exp)
    cfg = load_run_config("09_toy/a_run", "cpu", root=exp)
    diff = differs_from_base(cfg)
    assert diff == {"corpus.seed": {"base": 1, "run": 2},
                    "eval.inspection_threshold": {"base": 0.5, "run": 0.1},
                    "eval.n_examples": {"base": 4, "run": 2}}


def test_every_repository_experiment_resolves_at_every_scale():
    for run in list_runs():
        for scale in ("cpu", "smoke", "paper"):
            cfg = load_run_config(run, scale)
            assert cfg.run == run and cfg.title, run


def test_run_overrides_do_not_leak_paper_values_into_cpu_scale():
    """Merge order is base, base.scales.cpu, run, run.scales.cpu: a key that the base's cpu scale
    shrinks and a run changes at paper scale must be given again in the run's cpu scale."""
    from mlmlmlm.config import experiments_dir, flatten, read_yaml

    for run in list_runs():
        phase, name = run.split("/")
        base = read_yaml(experiments_dir() / phase / "base.yaml")
        doc = read_yaml(experiments_dir() / phase / f"{name}.yaml")
        run_cpu = flatten((doc.get("scales") or {}).get("cpu") or {})
        base_cpu = flatten((base.get("scales") or {}).get("cpu") or {})
        top = flatten({k: v for k, v in doc.items() if k not in ("scales", "paper")})
        leaked = [k for k in top if k in base_cpu and k not in run_cpu]
        assert not leaked, f"{run}: set {leaked} for the paper scale but not for cpu"


def test_kind_picks_the_sections_and_the_recipe(exp):
    from mlmlmlm.recipes import recipe

    _write(exp, "09_toy/bad.yaml", "model: {channels: 4}\n")  # the toy phase is kind: dataset
    with pytest.raises(ConfigError, match=r"09_toy/bad.yaml: unknown key 'model' .*"
                                          r"\(a dataset phase has no 'model' section\)"):
        load_run_config("09_toy/bad", root=exp)
    ds = load_run_config("01_dataset/default")
    assert ds.kind == "dataset" and "model" not in ds.sections
    with pytest.raises(ConfigError, match="01_dataset/default: a dataset phase has nothing to "
                                          "train"):
        recipe(ds)
    codec = load_run_config("02_audio_codec/a_rvq_vae_3")
    assert type(codec.model).__name__ == "CodecConfig"
    assert recipe(codec).__name__ == "mlmlmlm.recipes.codec"
    with pytest.raises(ConfigError, match=r"'kind' must be one of"):
        load_run_config("02_audio_codec/a_rvq_vae_3", overrides={"kind": "vocoder"})
