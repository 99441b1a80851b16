"""Shared fixtures: one smoke book built once per session (runbook + papermill + jupyter-book)."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory) -> Path:
    """A book root with every experiment run at smoke size and the book built with -W."""
    from mlmlmlm.runbook import run_book

    root = tmp_path_factory.mktemp("smoke-book")
    lines: list[str] = []
    index = run_book(smoke=True, out=root, log=lines.append)
    assert index.exists(), "\n".join(lines)
    return root


@pytest.fixture(scope="session")
def smoke_corpus(tmp_path_factory) -> Path:
    """The real default-corpus builder at smoke size (the 01_dataset smoke settings)."""
    from mlmlmlm.runbook import ensure_corpus

    return ensure_corpus(tmp_path_factory.mktemp("corpus") / "smoke", smoke=True,
                         log=lambda m: None)
