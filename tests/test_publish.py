"""`make publish` pushes the built book to the gh-pages branch: tried against a local bare
repository as the remote, from a clone holding the real Makefile and a small built book."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlmlmlm.config import REPO_ROOT

BIN = Path(sys.executable).parent  # this interpreter's venv: the one with ghp-import


def _git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)


@pytest.fixture
def clone(tmp_path):
    """``(clone, remote)``: a clone of an empty bare repository, with the repository's Makefile
    committed and a built book in ``_build/html``."""
    if not shutil.which("make") or not (BIN / "ghp-import").exists():
        pytest.fail("make and ghp-import are needed (make install adds ghp-import, the docs extra)")
    remote = tmp_path / "remote.git"
    _git("init", "--bare", "-q", str(remote), cwd=tmp_path)
    _git("clone", "-q", str(remote), "clone", cwd=tmp_path)
    clone = tmp_path / "clone"
    for key, value in (("user.name", "test"), ("user.email", "test@example.invalid")):
        _git("config", key, value, cwd=clone)
    shutil.copy2(REPO_ROOT / "Makefile", clone / "Makefile")
    _git("add", "Makefile", cwd=clone)
    _git("commit", "-q", "-m", "the book's sources", cwd=clone)
    html = clone / "_build/html"
    (html / "_static").mkdir(parents=True)
    (html / "book/02_audio_codec").mkdir(parents=True)
    (html / "index.html").write_text("<h1>mlmlmlm</h1>")
    (html / "_static/mlmlmlm.css").write_text("table { width: auto; }")
    (html / "book/02_audio_codec/results.html").write_text("<h1>Results</h1>")
    return clone, remote


def _publish(clone):
    return subprocess.run(["make", "-s", "publish", f"BIN={BIN}"], cwd=clone,
                          capture_output=True, text=True, check=False)


def _published(remote) -> dict[str, str]:
    names = _git("ls-tree", "-r", "--name-only", "gh-pages", cwd=remote).stdout.split()
    return {n: _git("show", f"gh-pages:{n}", cwd=remote).stdout for n in names}


def test_publish_pushes_the_built_book_to_gh_pages(clone):
    clone, remote = clone
    proc = _publish(clone)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _published(remote) == {
        ".nojekyll": "", "index.html": "<h1>mlmlmlm</h1>",
        "_static/mlmlmlm.css": "table { width: auto; }",
        "book/02_audio_codec/results.html": "<h1>Results</h1>"}
    head = _git("rev-parse", "--short", "HEAD", cwd=clone).stdout.strip()
    log = _git("log", "--format=%s", "gh-pages", cwd=remote).stdout
    assert log.strip() == f"Book built from {head}"
    # the source branch is untouched: gh-pages holds only the book
    assert _git("ls-tree", "--name-only", "HEAD", cwd=clone).stdout.split() == ["Makefile"]
    # a rebuilt book replaces the published one: a page gone from the build is gone there
    (clone / "_build/html/book/02_audio_codec/results.html").unlink()
    (clone / "_build/html/index.html").write_text("<h1>mlmlmlm, rebuilt</h1>")
    proc = _publish(clone)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _published(remote) == {".nojekyll": "", "index.html": "<h1>mlmlmlm, rebuilt</h1>",
                                  "_static/mlmlmlm.css": "table { width: auto; }"}


def test_publish_refuses_in_one_line_without_a_built_book(clone):
    clone, remote = clone
    shutil.rmtree(clone / "_build")
    proc = _publish(clone)
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("make publish:")]
    assert ours == ["make publish: no built book in _build/html/ (run make book first)"]
    assert "ghp-import" not in proc.stdout + proc.stderr  # it never ran
    branches = _git("branch", "--list", "gh-pages", cwd=remote).stdout
    assert branches == ""
