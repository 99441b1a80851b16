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


def test_cli_run_smoke_writes_page_card_and_results(smoke_corpus, tmp_path):
    out = tmp_path / "root"
    # the book root starts with its default corpus already built (the builder is the
    # smoke_corpus fixture's and the smoke book's; building it again here would add 23 s)
    shutil.copytree(smoke_corpus, out / "data/smoke")
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
    # the page measured the corpus it was given: the smoke corpus's own manifest
    man = json.loads((out / "data/smoke/corpus.json").read_text())
    assert card["metrics"]["recordings"] == len(man["recordings"])
    paired = sum(r["duration_s"] for r in man["recordings"] if r["split"] != "test_real") / 60
    assert card["metrics"]["minutes_paired"] == pytest.approx(paired, rel=1e-3)
    assert card["metrics"]["windows_test"] > 0 and card["run_dir"].startswith("runs/smoke/")
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


def test_chapter_prose_quotes_this_builds_cards(smoke_book):
    import html as H
    import re

    from mlmlmlm.runs import fmt

    def text(chapter):
        page = (smoke_book / "_build/html/book" / chapter / "index.html").read_text()
        return re.sub(r"\s+", " ", H.unescape(re.sub(r"<[^>]+>", " ", page)))

    def card(phase, name):
        return json.loads((smoke_book / "book" / phase / "runs" / f"{name}.json").read_text())

    for chapter in ("01_dataset", "02_audio_codec", "03_emg_audio_codec", "04_emg_codec",
                    "05_transformer"):
        assert "{{" not in text(chapter), chapter  # every substitution was filled in
    m = card("02_audio_codec", "a_rvq_vae_3")["metrics"]
    row = f"A RVQ-VAE 3 {fmt(m['steps'])} {fmt(m['identifiability_audio'])} {m['inspection']}"
    assert row in text("02_audio_codec")
    m = card("04_emg_codec", "emg_rvq_vae_native_bands")["metrics"]
    assert (f"This build’s run of emg_rvq_vae_native_bands ({fmt(m['steps'])} steps) scores "
            f"{fmt(m['identifiability_emg'])}") in text("04_emg_codec")
    m = card("05_transformer", "te2")["metrics"]
    assert (f"margin of the true over the shuffled EMG in loudness correlation is "
            f"{fmt(m['cond_loudness_margin'])} at guidance 1") in text("05_transformer")
    m = card("01_dataset", "default")["metrics"]
    assert f"{m['recordings']} recordings, {fmt(m['minutes_paired'])} paired minutes" in \
        text("01_dataset")


def test_substitutions_fill_runs_without_a_card(tmp_path):
    from mlmlmlm.runs import NOT_RUN, substitutions

    runs = tmp_path / "book/02_audio_codec/runs"
    runs.mkdir(parents=True)
    (runs / "a_vae.json").write_text(json.dumps({
        "scale": "cpu", "status": "ok", "finished_at": "2026-12-01T10:00:00Z", "wall_s": 12.5,
        "metrics": {"steps": 2190, "identifiability_audio": 0.765625, "eval_f0_error_cents": None,
                    "n_eval_windows": 64,
                    "not_computed": {"eval_f0_error_cents": "no voiced frames"}}}))
    r = substitutions(tmp_path)["r"]
    assert r["a_vae"] | {} == {"steps": "2,190", "identifiability_audio": "0.766",
                               "eval_f0_error_cents": "n/a (no voiced frames)", "scale": "cpu",
                               "date": "2026-12-01", "wall_s": "12.5", "status": "ok",
                               "n_eval_windows": "64", "chance": "0.0156"}
    # a run of the same chapter without a card: every key the chapter quotes, marked
    assert r["a_rvq_vae_1"]["identifiability_audio"] == NOT_RUN
    assert r["a_rvq_vae_1"]["steps"] == NOT_RUN
    # a chapter none of whose runs has a card: the keys its prose quotes
    live = tmp_path / "book/06_live_demo"
    live.mkdir(parents=True)
    (live / "index.md").write_text("Per frame {{ r.live.default_frame_ms }} ms, {{r.te2_frame_ll.steps}}.")
    r = substitutions(tmp_path)["r"]
    assert r["live"]["default_frame_ms"] == r["te2_frame_ll"]["steps"] == NOT_RUN


def test_runs_without_a_page_get_a_placeholder_until_they_run(tmp_path):
    from mlmlmlm.config import list_runs
    from mlmlmlm.runs import NOT_RUN, write_placeholder_pages

    runs = tmp_path / "book/02_audio_codec/runs"
    runs.mkdir(parents=True)
    (runs / "a_vae.ipynb").write_text("{}")
    written = write_placeholder_pages(tmp_path)
    assert len(written) == len(list_runs()) - 1 and not (runs / "a_vae.md").exists()
    live = tmp_path / "book/06_live_demo/runs/live.md"
    assert NOT_RUN in live.read_text() and "mlmlmlm book --only 06_live_demo/live" in live.read_text()
    (live.parent / "live.ipynb").write_text("{}")  # the run page arrives: the placeholder goes
    write_placeholder_pages(tmp_path)
    assert not live.exists() and (runs.parent / "runs/a_vae.ipynb").exists()


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("Chromium is not installed (make install adds Debian's chromium and "
                "chromium-driver)")


LOAD_AUDIO = """
    const done = arguments[arguments.length - 1];
    const els = Array.from(document.querySelectorAll('audio'));
    Promise.all(els.map(a => new Promise(res => {
        if (a.readyState >= 1) return res({ok: true, d: a.duration});
        a.addEventListener('loadedmetadata', () => res({ok: true, d: a.duration}));
        a.addEventListener('error', () => res({ok: false, e: String(a.error && a.error.code)}));
        a.preload = 'metadata'; a.load();
    }))).then(done);
"""


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for every page of the module's browser tests."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = _chromium()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required",
                 "--window-size=1280,1000"):
        opts.add_argument(flag)
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def test_built_pages_open_in_headless_chromium_and_audio_loads(smoke_book, browser):
    driver = browser
    html = smoke_book / "_build/html"
    driver.get((html / "index.html").as_uri())
    assert "mlmlmlm" in driver.title
    assert "listening to muscles" in driver.page_source
    for page, least in (("book/01_dataset/runs/default.html", 2),
                        ("book/02_audio_codec/runs/a_rvq_vae_3.html", 2),
                        ("book/03_emg_audio_codec/runs/ea_vae_3.html", 2)):
        driver.get((html / page).as_uri())
        n = driver.execute_script("return document.querySelectorAll('audio').length")
        assert n >= least, f"{page} has {n} audio players"
        states = driver.execute_async_script(LOAD_AUDIO)
        assert all(s["ok"] for s in states), (page, states)
        assert all(s["d"] > 0.5 for s in states), (page, states)  # real sound, not empty
        imgs = driver.execute_script(
            "return Array.from(document.images).filter(i => i.naturalWidth > 0).length")
        assert imgs >= 3, f"{page}: figures did not render"


# Every image of the page loaded (lazy ones too: made eager, then awaited).
LOAD_IMAGES = """
    const done = arguments[arguments.length - 1];
    Promise.all(Array.from(document.images).map(img => new Promise(res => {
        const report = () => res({src: img.src.slice(-60), w: img.naturalWidth});
        if (img.complete) return report();
        img.loading = 'eager';
        img.addEventListener('load', report);
        img.addEventListener('error', report);
    }))).then(done);
"""

# What a reader sees first under the page's title: the first rendered element after the h1 in
# document order (descending into sections; anchors and empty boxes skipped). "code" when it
# shows a cell's source or a code block (a folded hide-input toggle shows only its summary).
FIRST_AFTER_TITLE = """
    const h1 = document.querySelector('article.bd-article h1');  // not the print-only copy
    if (!h1) return {tag: 'no h1'};
    // rendered, and not folded away in a closed <details> (a hide-input toggle)
    const folded = el => { const d = el.closest('details:not([open])');
                           return d && !el.closest('summary'); };
    const shown = el => el.getClientRects().length > 0 && el.offsetHeight > 0 && !folded(el);
    const code = el => Array.from(el.querySelectorAll('.cell_input, pre, div.highlight'))
        .concat(el.matches('.cell_input, pre, div.highlight') ? [el] : []).some(shown);
    let el = h1;
    for (;;) {
        while (el && !el.nextElementSibling) el = el.parentElement;
        if (!el) return {tag: 'nothing'};
        el = el.nextElementSibling;
        while (el.tagName === 'SECTION' && el.firstElementChild) el = el.firstElementChild;
        if (!shown(el) || !el.textContent.trim() && !el.querySelector('img, audio')) continue;
        return {tag: el.tagName, cls: el.className, code: code(el),
                text: el.textContent.trim().slice(0, 80)};
    }
"""

# Code a reader meets before the page's first figure, table or player (a cell's source shown
# unfolded, or a code block): the plumbing a run page must not open with.
CODE_BEFORE_RESULTS = """
    // rendered, and not folded away in a closed <details> (a hide-input toggle)
    const folded = el => { const d = el.closest('details:not([open])');
                           return d && !el.closest('summary'); };
    const shown = el => el.getClientRects().length > 0 && el.offsetHeight > 0 && !folded(el);
    const article = document.querySelector('article.bd-article');
    const result = Array.from(article.querySelectorAll('img, table, audio')).find(shown);
    const code = '.cell_input, div.highlight:not(.cell_input div.highlight)';
    return Array.from(article.querySelectorAll(code)).filter(shown)
        .filter(el => !result || (el.compareDocumentPosition(result) & 4))
        .map(el => el.textContent.trim().slice(0, 60));
"""

REPRS = ("PosixPath(", "WindowsPath(", "tensor(", "<mlmlmlm.", " object at 0x",
         "<IPython.core.display")
# warnings a reader should never meet (tqdm's, in a kernel without ipywidgets)
WARNINGS = ("IProgress not found", "TqdmWarning")


def test_every_page_reads_like_a_research_book(smoke_book, browser):
    """A reader's pass over every built page of the book: no folder of the build machine, no
    Python repr, every player and image loads, and the page opens with prose or a figure under
    its title, not code. Screenshots of a run page and a results page stay in the build."""
    import re

    html = smoke_book / "_build/html"
    pages = sorted((html / "book").rglob("*.html"))
    assert len(pages) >= len(list_runs()) + 8, [str(p) for p in pages]
    machine = ("/tmp/", "/root/", "/home/", str(REPO_ROOT), str(smoke_book))
    shots = smoke_book / "_build/screenshots"
    shots.mkdir(exist_ok=True)
    problems = []
    for path in pages:
        page = str(path.relative_to(html))
        browser.get(path.as_uri())
        # attributes too (links, sources), but not embedded data (base64 can spell anything)
        source = re.sub(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+", "data:",
                        browser.execute_script("return document.documentElement.outerHTML"))
        problems += [f"{page}: build-machine path {m!r}" for m in machine if m in source]
        text = browser.execute_script("return document.body.textContent")
        problems += [f"{page}: Python repr {r!r}" for r in REPRS if r in text]
        problems += [f"{page}: warning {w!r}" for w in WARNINGS if w in text]
        states = browser.execute_async_script(LOAD_AUDIO)
        problems += [f"{page}: audio {i} did not load ({s})" for i, s in enumerate(states)
                     if not s["ok"] or not s["d"] > 0]
        imgs = browser.execute_async_script(LOAD_IMAGES)
        problems += [f"{page}: image {i['src']} did not load" for i in imgs if not i["w"] > 0]
        first = browser.execute_script(FIRST_AFTER_TITLE)
        if first.get("code") or first["tag"] not in ("P", "FIGURE", "IMG", "DIV", "UL", "OL",
                                                     "TABLE", "BLOCKQUOTE", "DL"):
            problems.append(f"{page}: the title is followed by {first}")
        problems += [f"{page}: code before the first result: {c!r}"
                     for c in browser.execute_script(CODE_BEFORE_RESULTS)]
        if page in ("book/02_audio_codec/runs/a_rvq_vae_3.html", "book/02_audio_codec/results.html"):
            browser.save_screenshot(str(shots / (page.replace("/", "_")[:-5] + ".png")))
    assert not problems, "\n".join(problems)
    assert len(list(shots.glob("*.png"))) == 2


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
    # the columns the chapter argues from lead; columns no run measured are left out
    assert header.startswith("| run | steps | identifiability (EMG, mean) ↑ | inspection | "
                             "paper's inspection | training (s) | epochs | MRSTFT ↓ |")
    assert "audio" not in header and "KL" not in header
    # numbers for people: three significant figures
    assert ("| [EMG RVQ-VAE](runs/emg_rvq_vae.ipynb) | 300 | 0.250 | unsuccessful | successful "
            "| 194 | 3.60 | 1.30 |") in ours
    paper_header = next(line for line in papers.splitlines() if line.startswith("| run"))
    for label in ("steps", "training (s)", "identifiability", "paper's inspection"):
        assert label not in paper_header
    assert "| EMG RVQ-VAE | successful | 160 | 0.711 |" in papers


def test_markdown_table_formats_numbers_for_people():
    import numpy as np

    from mlmlmlm.report import markdown_table

    table = markdown_table([{"sample_rate": 44100.0, "params": 43131, "kl": 0.0002078,
                             "rate_hz": np.float32(22050), "f0": None, "causal": False,
                             "config": {"in_channels": 1}}])
    assert table.splitlines()[0] == "| sample rate | params | kl | rate hz | f0 | causal |"
    assert table.splitlines()[2] == "| 44,100 | 43,131 | 0.000208 | 22,050 | — | false |"
    # a fixed format is kept, an exponent never
    assert markdown_table([{"a": 0.3333, "b": 44100.0}], floatfmt=".3g").endswith(
        "| 0.333 | 44,100 |")


def test_run_page_hides_plumbing_and_names_no_build_folder(tmp_path):
    import nbformat

    from mlmlmlm.config import load_run_config
    from mlmlmlm.run_page import finish_page

    root = tmp_path / "smoke-root"
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Audio codec run\n\nWhat it is."),
        nbformat.v4.new_code_cell('run = "x"  # which', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(f'run_dir = "{root}/runs/smoke/a"',
                                  metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("S = setup()", outputs=[nbformat.v4.new_output(
            "stream", name="stderr",
            text=f"{REPO_ROOT}/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: Warn\n")]),
        nbformat.v4.new_code_cell("S", outputs=[nbformat.v4.new_output(
            "execute_result", data={"text/plain": f"PosixPath('{root}/data/smoke')"})]),
    ])
    page = tmp_path / "page.ipynb"
    nbformat.write(nb, page)
    finish_page(page, load_run_config("02_audio_codec/a_rvq_vae_3", "smoke"), root)
    text = page.read_text()
    assert str(root) not in text and str(REPO_ROOT) not in text and "site-packages" not in text
    cells = nbformat.read(page, as_version=4).cells
    assert cells[0].source.startswith("# A RVQ-VAE 3 — Audio codec run")
    assert [c.metadata.get("tags") for c in cells[1:]] == [
        ["parameters", "remove-cell"], ["injected-parameters", "remove-cell"], ["hide-input"],
        ["hide-input"]]
    assert cells[2].source == 'run_dir = "runs/smoke/a"'
    assert cells[3].outputs[0].text == "tqdm/auto.py:21: Warn\n"
    # a page holds megabytes of base64 (players, figures): scrubbing it stays a literal search
    import time

    from mlmlmlm.run_page import scrub_paths

    t0 = time.perf_counter()
    assert scrub_paths("ab/" * 2_000_000, [root]) == "ab/" * 2_000_000
    assert time.perf_counter() - t0 < 5


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


def test_runbook_run_killed_mid_training_resumes_to_the_same_card(smoke_book, tmp_path):
    """`mlmlmlm run` killed (SIGKILL to papermill and its kernel) after the first checkpoint;
    the same command again resumes it, and the card's metrics equal an uninterrupted run's:
    the smoke book's, run as this one is (one torch thread, the smoke corpus of seed 0)."""
    import os
    import signal
    import time

    from mlmlmlm import checkpoint as C

    run = "02_audio_codec/a_rvq_vae_1"  # smoke: 2 steps, a checkpoint after each
    cmd = [sys.executable, "-m", "mlmlmlm.cli", "run", run, "--smoke", "--out", str(tmp_path)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # as the smoke book runs its kernels
    ckpt = tmp_path / "runs/smoke/02_audio_codec/a_rvq_vae_1/checkpoint.pt"
    shutil.copytree(smoke_book / "data/smoke", tmp_path / "data/smoke")  # the same corpus
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, start_new_session=True, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = C.load_checkpoint(ckpt)["step"]
    assert killed_at == 1, "the kill came too late to test a resume"
    assert not (tmp_path / "book/02_audio_codec/runs/a_rvq_vae_1.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                           check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    cards = [json.loads((r / "book/02_audio_codec/runs/a_rvq_vae_1.json").read_text())
             for r in (smoke_book, tmp_path)]
    timing = {"train_wall_s"}
    a, b = ({k: v for k, v in c["metrics"].items() if k not in timing} for c in cards)
    assert a == b and a["steps"] == 2
    log = (ckpt.parent / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2]


def test_a_key_added_since_a_checkpoint_at_its_default_is_not_a_change():
    from mlmlmlm import checkpoint as C
    from mlmlmlm.config import load_run_config

    cfg = load_run_config("02_audio_codec/a_rvq_vae_3", "smoke").to_dict()
    old = {**cfg, "model": {k: v for k, v in cfg["model"].items() if k != "causal"}}
    assert C.section_changes(old, cfg, C.WEIGHT_SECTIONS) == []
    flipped = {**cfg, "model": {**cfg["model"], "causal": True}}
    assert C.section_changes(flipped, cfg, C.WEIGHT_SECTIONS) == ["model.causal"]


def _book_without_its_runs(runbook, monkeypatch, tmp_path):
    """run_book's own logic only: no corpus, no run graph, no results pages (the runs are the
    test's stand-in for run_experiment)."""
    monkeypatch.setattr(runbook, "ensure_default", lambda *a, **k: tmp_path)
    monkeypatch.setattr(runbook, "run_needs", lambda runs, scale: {r: set() for r in runs})
    monkeypatch.setattr(runbook, "write_results", lambda *a, **k: None)
    monkeypatch.setattr(runbook, "write_placeholder_pages", lambda *a, **k: None)


def test_a_run_that_dies_fails_the_book_in_one_line_naming_it(tmp_path, monkeypatch):
    """A kernel that dies (papermill's DeadKernelError, not a RunbookError) is reported as that
    run's failure after the others ran, not as a KeyError from the progress line."""
    from mlmlmlm import runbook

    ran = []

    def fake_run(run, **_):
        ran.append(run)
        if run == "a/dies":
            raise RuntimeError("Kernel died")

    monkeypatch.setattr(runbook, "run_experiment", fake_run)
    _book_without_its_runs(runbook, monkeypatch, tmp_path)
    lines = []
    with pytest.raises(runbook.RunbookError, match="a/dies: RuntimeError: Kernel died"):
        runbook.run_book(out=tmp_path / "root", only=["a/first", "a/dies", "a/last"],
                         jobs=1, log=lines.append)
    assert ran == ["a/first", "a/dies", "a/last"]
    assert any("a/dies: FAILED" in line for line in lines), lines


def test_a_kernel_that_dies_fails_its_run_like_a_failing_cell(tmp_path, monkeypatch):
    """A notebook whose kernel dies (here it SIGKILLs itself, as the OOM killer or a segfault in
    a native library would) is a failed run, not a traceback: a one-line RunbookError naming the
    cell, a failed card with that error, and the partial page finished with the cell marked."""
    from mlmlmlm import runbook

    fake_repo = tmp_path / "repo"
    (fake_repo / "notebooks").mkdir(parents=True)
    (fake_repo / "experiments").symlink_to(REPO_ROOT / "experiments")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell("run = None\nconfig = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# Dataset run"), params,
                nbformat.v4.new_code_cell("print('before')"),
                nbformat.v4.new_code_cell("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"),
                nbformat.v4.new_code_cell("print('never')")]
    nbformat.write(nb, fake_repo / "notebooks" / "01_dataset.ipynb")
    monkeypatch.setattr(runbook, "REPO_ROOT", fake_repo)
    root = tmp_path / "root"
    with pytest.raises(runbook.RunbookError) as err:
        runbook.run_experiment("01_dataset/default", smoke=True, root=root,
                               data_root=tmp_path / "data", log=lambda m: None)
    message = str(err.value)
    assert "\n" not in message
    # papermill's injected-parameters cell is 2, the markdown cell has no count: the kill is in 4
    assert "01_dataset/default: notebook failed at cell 4: DeadKernelError" in message, message
    card = json.loads((root / "book/01_dataset/runs/default.json").read_text())
    assert card["status"] == "failed" and card["error"].startswith("cell 4: DeadKernelError")
    page = nbformat.read(root / "book/01_dataset/runs/default.ipynb", as_version=4)
    code = [c for c in page.cells if c.cell_type == "code"]
    dead = next(c for c in code if "SIGKILL" in c.source)
    assert dead.execution_count == 4
    assert [o.ename for o in dead.outputs if o.output_type == "error"] == ["DeadKernelError"]
    assert "hide-input" in dead.metadata["tags"]  # finished: plumbing tags put on
    assert page.cells[0].source.startswith("# ")
    never = next(c for c in code if "never" in c.source)
    assert not never.outputs
    assert "(failed)" in (root / "book/01_dataset/results.md").read_text()


def test_side_by_side_runs_start_after_numbas_cache_is_warm(tmp_path, monkeypatch):
    """With jobs > 1 the runbook compiles librosa's numba functions alone first
    (mlmlmlm/jit_cache.py: two kernels compiling them at once leave a cache that segfaults the
    next), before any notebook starts; one job at a time needs no warm-up."""
    from mlmlmlm import jit_cache, runbook

    events = []
    monkeypatch.setattr(jit_cache, "warm", lambda: events.append("warm"))
    monkeypatch.setattr(runbook, "run_experiment", lambda run, **_: events.append(run))
    _book_without_its_runs(runbook, monkeypatch, tmp_path)
    monkeypatch.setattr(runbook, "build_book", lambda root, log: root / "index.html")
    runbook.run_book(out=tmp_path / "two", only=["a/x", "a/y"], jobs=2, log=lambda m: None)
    assert events[0] == "warm" and sorted(events[1:]) == ["a/x", "a/y"]
    events.clear()
    runbook.run_book(out=tmp_path / "one", only=["a/x"], jobs=1, log=lambda m: None)
    assert events == ["a/x"]
