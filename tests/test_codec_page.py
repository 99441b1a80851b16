"""The codec run pages' model table (mlmlmlm.codec_page.model_rows): named for readers."""

from mlmlmlm import codec_page
from mlmlmlm.config import load_run_config
from mlmlmlm.recipes import codec as recipe
from mlmlmlm.report import markdown_table


def _rows(run):
    desc = recipe.build_codec(load_run_config(run, "smoke")).describe()
    return {r["property"]: r["value"] for r in codec_page.model_rows(desc)}, desc


def test_model_table_names_its_rows_for_readers():
    rows, desc = _rows("02_audio_codec/audio_codec")  # causal RVQ
    assert rows["channel multipliers"] == ", ".join(map(str, desc["config"]["c_mults"]))
    assert rows["strides (per encoder block)"] == ", ".join(map(str, desc["config"]["strides"]))
    assert rows["parameters"] == desc["params"] and rows["sample rate (Hz)"] == 22050.0
    assert rows["padding"] == "causal (streams chunk by chunk)"
    assert rows["algorithmic latency (ms)"] == desc["latency_ms"]
    assert "RVQ levels" in rows and "KL weight β" not in rows
    table = markdown_table(codec_page.model_rows(desc))
    assert table.startswith("| property | value |")
    # no code name of a key is shown: every label reads as words
    assert not any("_" in line.split("|")[1] for line in table.splitlines()[2:])
    assert "| sample rate (Hz) | 22,050 |" in table


def test_a_vae_has_no_codebooks_and_a_centred_codec_no_latency():
    rows, _ = _rows("02_audio_codec/a_vae")
    assert rows["bottleneck"] == "vae" and "KL weight β" in rows
    assert "RVQ levels" not in rows and "codebook size" not in rows
    assert rows["padding"] == "centred (offline only)" and "algorithmic latency (ms)" not in rows
