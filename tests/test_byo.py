"""Bring your own recordings: the three layouts, with no corpus.json, no controls and no
test_real split, through `data check` and the chapter notebooks; the user's files are never
written, moved or deleted (checked byte for byte); only a corpus of ours is ever rebuilt."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlmlmlm.config import REPO_ROOT
from mlmlmlm.data.io import DataError, find_recordings, load_recording
from mlmlmlm.data.layouts import LAYOUTS, export


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) -> sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def user_folders(tmp_path_factory, smoke_corpus) -> dict[str, Path]:
    """The smoke corpus's three synthetic-driven recordings, re-exported in every layout, as a
    researcher would bring them (other names, no manifest, no controls, no test_real)."""
    refs = find_recordings(smoke_corpus)
    recs = [load_recording(r) for r in refs if r.split != "test_real"]
    for r in recs:
        r.name = "take-" + r.name.split("-")[0]
    # the paper's export is 6-s windows: one more (real-EMG-driven) recording gives the test
    # split the two windows the evaluation needs
    extra = load_recording(next(r for r in refs if r.split == "test_real"))
    extra.name = "take-real00"
    base = tmp_path_factory.mktemp("user")
    return {lay: (export(recs + ([extra] if lay == "windows" else []), base / lay, lay),
                  base / lay)[1] for lay in LAYOUTS}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlmlmlm.cli", *args], capture_output=True,
                          text=True, cwd=REPO_ROOT, check=False)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_data_check_accepts_each_layout_and_states_splits(user_folders, layout):
    folder = user_folders[layout]
    proc = cli("data", "check", str(folder))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK: ")
    splits = {r.split for r in find_recordings(folder)}
    assert splits == {"train", "val", "test"}, splits


# which chapters run on which layout: every chapter on the pairs; dataset + one codec elsewhere
PIPELINE = {
    "pairs": ["01_dataset/default", "02_audio_codec/a_rvq_vae_1", "03_emg_audio_codec/ea_vae_1",
              "04_emg_codec/emg_rvq_vae_native"],
    "windows": ["01_dataset/default", "03_emg_audio_codec/ea_vae_2"],
    "bela": ["01_dataset/default", "04_emg_codec/emg_rvq_vae"],
}


@pytest.fixture(scope="module")
def chapter_runs(user_folders, tmp_path_factory) -> dict[str, tuple[Path, dict, dict]]:
    """Every chapter of PIPELINE run on its layout's folder, two notebooks side by side as
    `mlmlmlm book` runs the smoke book (runbook.side_by_side): ``{layout: (book root, the
    folder's snapshot before, {run: card})}``. A failing run raises here, naming it."""
    from mlmlmlm.runbook import prepare_root, run_experiment, side_by_side

    roots = {lay: prepare_root(tmp_path_factory.mktemp(f"book-{lay}")) for lay in PIPELINE}
    before = {lay: snapshot(user_folders[lay]) for lay in PIPELINE}
    jobs = [(lay, run) for lay in PIPELINE for run in PIPELINE[lay]]
    cards = side_by_side(jobs, {}, lambda job: run_experiment(
        job[1], smoke=True, root=roots[job[0]], data_root=user_folders[job[0]],
        log=lambda m: None), workers=2)
    return {lay: (roots[lay], before[lay], {run: cards[(lay, run)] for run in PIPELINE[lay]})
            for lay in PIPELINE}


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_chapters_run_on_a_user_folder_and_leave_it_untouched(user_folders, chapter_runs, layout):
    folder = user_folders[layout]
    root, before, ran = chapter_runs[layout]
    for run, card in ran.items():
        assert card["status"] == "ok", (run, card["error"])
        assert card["data_root"] == str(folder)
        assert ".data-" in card["run_dir"]  # a user folder gets run folders of its own
        page = json.loads((root / card["page"]).read_text())
        text = json.dumps(page)
        assert "Traceback" not in text and '"output_type": "error"' not in text, run
    assert snapshot(folder) == before, "the user's folder changed"
    cards = {r: json.loads((root / "book" / r.split("/")[0] / "runs" /
                            f"{r.split('/')[1]}.json").read_text()) for r in PIPELINE[layout]}
    dataset = cards["01_dataset/default"]["metrics"]
    assert dataset["recordings"] == (len(list(folder.glob("*.wav"))) if layout == "windows"
                                     else 3)
    assert dataset["sound_source"] == "your recordings"
    assert dataset["not_computed"]["build_seconds"].startswith("a folder of your own")
    for run, card in cards.items():
        if run.startswith("01"):
            continue
        m = card["metrics"]
        assert m["steps"] > 0 and m["n_eval_windows"] >= 1, run
        assert (m["identifiability_audio"] or m["identifiability_emg"]) is not None, run


def test_notebook_given_a_user_folder_never_writes_there(user_folders, tmp_path):
    # the setup cell every notebook runs: with a folder given, nothing is built or written
    from mlmlmlm.notebook import setup

    folder = user_folders["pairs"]
    before = snapshot(folder)
    s = setup("04_emg_codec/emg_rvq_vae", "cpu", True, {}, str(tmp_path / "run"), str(folder))
    assert s.data_root == folder
    from mlmlmlm.data.dataset import WindowDataset
    from mlmlmlm.recipes.codec import data_config

    WindowDataset(data_config(s.cfg, folder), "train", train=True)  # computes the EMG scale
    assert snapshot(folder) == before


def test_only_a_corpus_of_ours_is_rebuilt(user_folders, smoke_corpus, tmp_path):
    import shutil

    from mlmlmlm.data.corpus import check_rebuildable, ensure_default_corpus

    folder = user_folders["bela"]
    before = snapshot(folder)
    with pytest.raises(DataError, match="is not a default corpus built by mlmlmlm"):
        ensure_default_corpus(folder, minutes=1.0, seed=0, progress=False)
    # a user's folder with a corpus.json of its own (splits) is not ours either
    theirs = tmp_path / "theirs"
    shutil.copytree(user_folders["pairs"], theirs)
    (theirs / "corpus.json").write_text(json.dumps({"recordings": []}))
    mine = snapshot(theirs)
    proc = cli("data", "build", "--out", str(theirs), "--smoke")
    assert proc.returncode == 2 and "is not a default corpus built by mlmlmlm" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert snapshot(theirs) == mine
    # our corpus with one file added by hand is refused as well, and the file stays
    ours = tmp_path / "ours"
    shutil.copytree(smoke_corpus, ours)
    (ours / "train" / "my-take.wav").write_bytes(b"RIFF")
    with pytest.raises(DataError, match=r"holds files the corpus builder did not write "
                                        r"\(train/my-take.wav\)"):
        check_rebuildable(ours)
    assert (ours / "train" / "my-take.wav").read_bytes() == b"RIFF"
    (ours / "train" / "my-take.wav").unlink()
    assert check_rebuildable(ours)["built_by"] == "mlmlmlm data build"
    assert snapshot(folder) == before


def test_one_recording_is_split_by_time_and_stated(user_folders, tmp_path):
    import shutil

    from mlmlmlm.data.stats import folder_info, load_all

    one = tmp_path / "one"
    one.mkdir()
    for f in sorted(user_folders["pairs"].glob("take-syn000.*")):
        shutil.copy2(f, one / f.name)
    refs = find_recordings(one)
    assert [(r.name, r.split, r.span) for r in refs] == [
        ("take-syn000#test", "test", (0.9, 1.0)), ("take-syn000#train", "train", (0.0, 0.8)),
        ("take-syn000#val", "val", (0.8, 0.9))]
    recs = load_all(one)
    whole = sum(r.duration_s for r in recs)
    assert abs(recs[1].duration_s - 0.8 * whole) < 0.01
    assert "split by time" in folder_info(one, recs).splits_note
    # 20 s of recording: the files are fine, but its 2-s test part holds no 6-s window, and
    # training says so before it starts
    proc = cli("data", "check", str(one))
    assert proc.returncode == 0 and proc.stdout.startswith("OK: 1 recordings"), proc.stdout
    proc = cli("train", "02_audio_codec/a_rvq_vae_1", "--data-root", str(one), "--run-dir",
               str(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"mlmlmlm: {one}: the held-out split 'test' has 0 window(s) of 6 s (a folder of fewer "
        "than three recordings holds out the last 10 % of each by time); the evaluation needs at "
        "least 2: bring more or longer recordings, or a corpus.json that puts more of them in "
        "that split")


def test_too_few_held_out_windows_is_one_line_before_training(user_folders, tmp_path):
    from mlmlmlm.data.layouts import export

    recs = [load_recording(r) for r in find_recordings(user_folders["pairs"])]
    small = tmp_path / "nine-windows"
    export(recs, small, "windows")  # 9 windows of 6 s: 7 train, 1 val, 1 test
    proc = cli("train", "02_audio_codec/a_rvq_vae_1", "--scale", "cpu", "--data-root",
               str(small), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"mlmlmlm: {small}: the held-out split 'test' has 1 window(s) of 6 s; the evaluation "
        "needs at least 2: bring more or longer recordings, or a corpus.json that puts more of "
        "them in that split")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_run_dirs_are_keyed_by_scale_data_and_overrides(tmp_path):
    from mlmlmlm import paths

    run = "02_audio_codec/a_rvq_vae_3"
    dirs = {paths.run_dir(run, s) for s in ("cpu", "paper", "smoke")}
    assert len(dirs) == 3 and paths.run_dir(run, "paper").parts[-3:] == (
        "paper", "02_audio_codec", "a_rvq_vae_3")
    default = paths.default_data_root()
    tags = {paths.set_tag({"train.lr": 1e-3}, s, d) for s in ("cpu", "paper")
            for d in (default, tmp_path)}
    assert len(tags) == 4 and all(t.startswith(".set-") for t in tags)
    assert paths.set_tag({}, "cpu", default) == "" and paths.data_tag(default) == ""
    assert paths.data_tag(tmp_path).startswith(".data-")


def test_refused_resume_is_one_line_and_force_starts_over(smoke_corpus, tmp_path):
    run_dir = tmp_path / "run"
    args = ("train", "02_audio_codec/a_rvq_vae_1", "--scale", "smoke", "--data-root",
            str(smoke_corpus), "--run-dir", str(run_dir), "--set", "train.max_steps=1")
    assert cli(*args, "--set", "model.latent_dim=4").returncode == 0
    refused = cli(*args, "--set", "model.latent_dim=8")
    assert refused.returncode == 2
    line = refused.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, refused.stderr
    assert line.startswith(f"mlmlmlm: {run_dir / 'checkpoint.pt'}: written with another "
                           "configuration (model.latent_dim)")
    assert "`mlmlmlm train ... --force` starts over" in line
    forced = cli(*args, "--set", "model.latent_dim=8", "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert (tmp_path / "run.superseded" / "checkpoint.pt").exists()  # the old run is kept
    from mlmlmlm.checkpoint import load_checkpoint

    assert load_checkpoint(run_dir / "checkpoint.pt")["config"]["model"]["latent_dim"] == 8
