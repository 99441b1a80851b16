"""Run pages carry no "IProgress not found" warning: in a Jupyter kernel without ipywidgets,
the notebooks' setup settles tqdm.auto quietly before a library (pooch, via librosa) imports it."""

import importlib.util
import subprocess
import sys

import pytest

# tqdm.autonotebook takes a process with ipykernel's shell module loaded for a Jupyter kernel
KERNEL = """
import warnings
import ipykernel.zmqshell
{settle}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from tqdm.auto import tqdm
bars = "widgets" if any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__) else "text"
print(sum("IProgress" in str(w.message) for w in caught), bars)
"""


def _in_kernel(settle: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", KERNEL.format(settle=settle)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


@pytest.mark.skipif(importlib.util.find_spec("ipykernel") is None, reason="no ipykernel")
def test_setup_settles_tqdm_auto_without_the_ipywidgets_warning():
    widgets = importlib.util.find_spec("ipywidgets") is not None
    # without it, the first import of tqdm.auto in a kernel warns (unless ipywidgets is there)
    assert _in_kernel("") == (["0", "widgets"] if widgets else ["1", "text"])
    settled = _in_kernel("from mlmlmlm.notebook import text_progress_bars; text_progress_bars()")
    assert settled == (["0", "widgets"] if widgets else ["0", "text"])
