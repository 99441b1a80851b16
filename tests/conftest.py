"""Shared fixtures: one smoke book built once per session (runbook + papermill + jupyter-book)."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _cache_outside_the_repo(tmp_path_factory):
    """Derived data (EMG scales) of the test runs goes to a temporary cache, for every child
    process too (papermill kernels, torchrun)."""
    import os

    os.environ["MLMLMLM_CACHE"] = str(tmp_path_factory.mktemp("cache"))


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
    from mlmlmlm.data.corpus import default_settings, ensure_default_corpus

    # the default corpus's own builder and settings, in a folder of the test's
    return ensure_default_corpus(tmp_path_factory.mktemp("corpus") / "smoke",
                                 *default_settings(smoke=True), progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from a second torch thread, and on a busy 2-core machine two
    threads spin against each other (1-frame streaming took 330 ms a chunk instead of 7)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smoke_codecs(smoke_corpus, tmp_path_factory) -> dict[str, Path]:
    """The production audio and EMG codecs (02_audio_codec/audio_codec, 04_emg_codec/emg_codec)
    trained at smoke size (2 steps) on the smoke corpus: ``{"audio": run dir, "emg": run dir}``.
    Their frames align one to one, as at the cpu scale. Copy a run dir before changing it."""
    import torch

    from mlmlmlm.config import load_run_config
    from mlmlmlm.recipes.codec import train_codec

    root, out = tmp_path_factory.mktemp("smoke-codecs"), {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for what, run in (("audio", "02_audio_codec/audio_codec"), ("emg", "04_emg_codec/emg_codec")):
            out[what] = root / what
            train_codec(load_run_config(run, "smoke"), out[what], smoke_corpus, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out
