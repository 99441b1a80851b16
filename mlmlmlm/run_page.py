"""The executed notebook of a run as a reader meets it: its title, its plumbing hidden, no folder
of the build machine in it.

Introduced in notebook 01_dataset: the runbook (:mod:`mlmlmlm.runbook`) finishes every run page
with :func:`finish_page` after papermill has executed it.
"""

from __future__ import annotations

import re
from pathlib import Path

from mlmlmlm.atomic import write_text_atomic
from mlmlmlm.config import REPO_ROOT, RunConfig

# How a run page shows its plumbing: the parameter cells go (the run card keeps the values);
# every other cell shows its output with its code one click away (Jupyter Book's toggle).
PLUMBING_TAGS = ("parameters", "injected-parameters")

# Folders of Python's libraries that outputs name (a warning's ``.../site-packages/tqdm/auto.py``).
_PYTHON_LIB = re.compile(r"/(?:(?:site-packages|dist-packages|lib/python3\.\d+)/)+")
_PATH_START = re.compile(r"[\s\"'\\:<>=(\[]")  # what precedes an absolute path in text


def finish_page(page: Path, cfg: RunConfig, root: Path) -> None:
    """The executed page as a reader meets it: the run's title in its first heading, the
    parameter cells removed and code inputs hidden, no folder of the build machine in it."""
    import nbformat

    if not page.exists():
        return
    nb = nbformat.read(page, as_version=4)
    retitle(nb, cfg)
    hide_plumbing(nb)
    text = scrub_paths(nbformat.writes(nb), (root, REPO_ROOT))
    write_text_atomic(page, text)


def retitle(nb, cfg: RunConfig) -> None:
    """Put the run's title in the page's first heading, so the book's sidebar tells the runs of
    a chapter apart (``# Audio codec run`` -> ``# A RVQ-VAE 1 — Audio codec run``)."""
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("# "):
            head, _, rest = cell.source.partition("\n")
            title = head[2:].split(" — ", 1)[-1]
            cell.source = f"# {cfg.title or cfg.name} — {title}\n{rest}"
            break


def hide_plumbing(nb) -> None:
    """Tag the cells for Jupyter Book: ``remove-cell`` on the parameters cell and papermill's
    injected one (the paths and config they hold are on the run card), ``hide-input`` on every
    other code cell (setup and imports first): the page opens with the run's description and
    its figures, and a reader unfolds the code that made them."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = list(cell.metadata.get("tags", []))
        want = "remove-cell" if any(t in tags for t in PLUMBING_TAGS) else "hide-input"
        if want not in tags:
            cell.metadata["tags"] = tags + [want]


def scrub_paths(text: str, roots) -> str:
    """``text`` with the book root's and the repository's absolute folders made relative and
    Python's library folders (a warning's ``.../site-packages/tqdm/auto.py``) cut off."""
    # from each library folder back to where its path starts (a literal search: the pages
    # hold megabytes of base64 that a backtracking pattern would crawl)
    cuts, last = [], 0
    for m in _PYTHON_LIB.finditer(text):
        start = m.start()
        while start > last and not _PATH_START.match(text, start - 1):
            start -= 1
        cuts.append(text[last:start])
        last = m.end()
    text = "".join(cuts) + text[last:]
    for r in sorted({str(Path(r).resolve()) for r in roots}, key=len, reverse=True):
        text = re.sub(re.escape(r) + r"(?![\w.-])", ".", text.replace(r + "/", ""))
    return text
