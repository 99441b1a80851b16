"""The executed notebook of a run as a reader meets it: its title, its plumbing hidden, no folder
of the build machine in it.

Introduced in notebook 01_dataset: the runbook (:mod:`mlmlmlm.runbook`) executes every run page
with :func:`execute_page` and finishes it with :func:`finish_page`.
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


def execute_page(notebook: Path, page: Path, params: dict, cwd: Path) -> str | None:
    """Execute ``notebook`` into ``page`` with papermill; ``None`` when every cell ran, else the
    failure in one line, ``cell <n>: <Type>: <message>``.

    A failing cell and a kernel that dies (killed for memory, a segfault in a native library:
    nbclient's ``DeadKernelError``) both end here: the partly executed page is kept, and the
    cell the kernel died in is marked on it with what happened.
    """
    import papermill
    from nbclient.exceptions import DeadKernelError

    try:
        papermill.execute_notebook(str(notebook), str(page), parameters=params,
                                   kernel_name="python3", cwd=str(cwd), progress_bar=False,
                                   log_output=False)
    except papermill.PapermillExecutionError as exc:
        return f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}".splitlines()[0]
    except DeadKernelError as exc:
        return f"cell {_mark_dead_cell(page, exc)}: DeadKernelError: {exc}".splitlines()[0]
    return None


def _mark_dead_cell(page: Path, exc: Exception) -> int | str:
    """Mark, on the partly executed ``page``, the code cell the kernel died in (the last one
    papermill started) and return its number as the kernel would have counted it."""
    import nbformat

    if not page.exists():
        return "?"
    nb = nbformat.read(page, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    started = [c for c in code if (c.metadata.get("papermill") or {}).get("start_time")]
    if not started:
        return "?"
    cell = started[-1]  # its count, if the kernel sent it before dying; else the next one
    count = cell.get("execution_count") or max(
        (c.get("execution_count") or 0 for c in code), default=0) + 1
    cell.execution_count = count
    cell.metadata.setdefault("papermill", {}).update(status="failed", exception=True)
    cell.outputs.append(nbformat.v4.new_output(
        "error", ename="DeadKernelError", evalue=str(exc),
        traceback=[(f"DeadKernelError: {exc}: the kernel died while running this cell "
                   "(killed for memory, or a crash in a native library); the cells after it "
                   "did not run.")]))
    write_text_atomic(page, nbformat.writes(nb))
    return count


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
