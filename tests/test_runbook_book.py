"""End to end: the runbook (papermill) in --smoke mode writes pages, cards and results tables; the
book builds with -W; headless Chromium opens the built pages and their audio players load."""

import json
import shutil
import subprocess
import sys

import nbformat
import pytest

from mlmlmlm.config import REPO_ROOT, list_runs

pytestmark = pytest.mark.slow


def test_cli_run_smoke_writes_page_card_and_results(tmp_path):
    out = tmp_path / "root"
    proc = subprocess.run([sys.executable, "-m", "mlmlmlm.cli", "run", "01_dataset/default",
                           "--smoke", "--out", str(out)], capture_output=True, text=True,
                          cwd=REPO_ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = out / "book/01_dataset/runs/default.ipynb"
    card = json.loads((out / "book/01_dataset/runs/default.json").read_text())
    results = (out / "book/01_dataset/results.md").read_text()
    nb = nbformat.read(page, as_version=4)
    assert any(o.get("output_type") == "display_data" for c in nb.cells if c.cell_type == "code"
               for o in c.outputs), "executed page has no figures/tables"
    assert not any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
    assert card["status"] == "ok" and card["smoke"] is True
    for key in ("params", "differs_from_base", "metrics", "git_sha", "device", "wall_s",
                "versions"):
        assert key in card, key
    assert card["params"]["corpus"]["minutes"] == 1.0
    assert card["metrics"]["recordings"] > 0
    assert card["metrics"]["windows_test"] > 0
    assert "[Default corpus](runs/default.ipynb)" in results
    # nothing went to the repository's book/
    assert not (REPO_ROOT / "book/01_dataset/runs/default.json").exists() or \
        json.loads((REPO_ROOT / "book/01_dataset/runs/default.json").read_text())["smoke"] is False
    # a second run is up to date and skipped
    again = subprocess.run([sys.executable, "-m", "mlmlmlm.cli", "run", "01_dataset/default",
                            "--smoke", "--out", str(out)], capture_output=True, text=True,
                           cwd=REPO_ROOT, check=False)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_smoke_book_has_every_run(smoke_book):
    for run in list_runs():
        phase, name = run.split("/")
        card = json.loads((smoke_book / "book" / phase / "runs" / f"{name}.json").read_text())
        assert card["status"] == "ok", run
        assert (smoke_book / "_build/html/book" / phase / "runs" / f"{name}.html").exists(), run
    assert (smoke_book / "_build/html/index.html").exists()


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("Chromium is not installed (make install adds Debian's chromium and "
                "chromium-driver)")


def test_built_pages_open_in_headless_chromium_and_audio_loads(smoke_book):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = _chromium()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(flag)
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        html = smoke_book / "_build/html"
        driver.get((html / "index.html").as_uri())
        assert "mlmlmlm" in driver.title
        assert "listening to muscles" in driver.page_source
        driver.get((html / "book/01_dataset/runs/default.html").as_uri())
        n = driver.execute_script("return document.querySelectorAll('audio').length")
        assert n >= 2, "the dataset page has no audio players"
        driver.set_script_timeout(60)
        states = driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const els = Array.from(document.querySelectorAll('audio'));
            Promise.all(els.map(a => new Promise(res => {
                if (a.readyState >= 1) return res({ok: true, d: a.duration});
                a.addEventListener('loadedmetadata', () => res({ok: true, d: a.duration}));
                a.addEventListener('error', () => res({ok: false, e: String(a.error && a.error.code)}));
                a.preload = 'metadata'; a.load();
            }))).then(done);
        """)
        assert all(s["ok"] for s in states), states
        assert all(s["d"] > 1.0 for s in states), states  # real seconds of sound, not empty
        imgs = driver.execute_script(
            "return Array.from(document.images).filter(i => i.naturalWidth > 0).length")
        assert imgs >= 3, "figures did not render"
    finally:
        driver.quit()


def test_results_table_keeps_our_columns_out_of_the_papers_rows(tmp_path):
    from mlmlmlm.runbook import write_results

    runs = tmp_path / "book/04_emg_codec/runs"
    runs.mkdir(parents=True)
    card = {"name": "emg_rvq_vae", "title": "EMG RVQ-VAE", "status": "ok", "scale": "cpu",
            "wall_s": 200.0, "device": "cpu", "git_sha": "0" * 40, "differs_from_base": {},
            "metrics": {"steps": 300, "train_wall_s": 193.5, "epochs": 3.6, "mrstft": 1.3,
                        "identifiability_emg": 0.25, "inspection": "unsuccessful",
                        "paper_inspection": "successful"},
            "paper": {"epochs": 160, "mrstft": 0.711383, "inspection": "successful"}}
    (runs / "emg_rvq_vae.json").write_text(json.dumps(card))
    text = write_results("04_emg_codec", tmp_path).read_text()
    ours, papers = text.split("## The paper's values")
    header = next(line for line in ours.splitlines() if line.startswith("| run"))
    assert "steps" in header and "training (s)" in header and "identifiability (EMG" in header
    assert "| [EMG RVQ-VAE](runs/emg_rvq_vae.ipynb) | 300 | 193.5 | 3.6 | 1.3 |" in ours
    paper_header = next(line for line in papers.splitlines() if line.startswith("| run"))
    for label in ("steps", "training (s)", "identifiability", "paper's inspection"):
        assert label not in paper_header
    assert "| EMG RVQ-VAE | 160 | 0.7114 |" in papers


def test_runbook_moves_a_checkpoint_of_another_config_aside(tmp_path):
    from mlmlmlm import checkpoint as C
    from mlmlmlm.config import load_run_config
    from mlmlmlm.runbook import _supersede_stale

    cfg = load_run_config("02_audio_codec/a_rvq_vae_3", "smoke")
    run_dir = tmp_path / "a_rvq_vae_3"
    run_dir.mkdir()
    C.save_atomic({"format": C.FORMAT, "config": cfg.to_dict()}, run_dir / "checkpoint.pt")
    logs = []
    _supersede_stale(run_dir, cfg, logs.append)  # same config: a killed run, kept to resume
    assert (run_dir / "checkpoint.pt").exists() and logs == []
    retitled = load_run_config("02_audio_codec/a_rvq_vae_3", "smoke", {"title": "renamed"})
    _supersede_stale(run_dir, retitled, logs.append)  # a new title alone keeps the checkpoint
    assert (run_dir / "checkpoint.pt").exists() and logs == []
    changed = load_run_config("02_audio_codec/a_rvq_vae_3", "smoke", {"model.latent_dim": 4})
    _supersede_stale(run_dir, changed, logs.append)
    assert not run_dir.exists()
    assert (tmp_path / "a_rvq_vae_3.superseded" / "checkpoint.pt").exists()
    assert "configuration changed since its checkpoint (model.latent_dim)" in logs[0]
