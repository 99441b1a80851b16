"""``torch.compile`` for frozen inference modules: one place for the options every compiled
streaming graph shares.

Introduced in notebook 06_live_demo: the compiled translator (``Translator(compile=True)``)
runs its transformer step and its codecs' one-frame graphs through :func:`compile_frozen`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def compile_frozen(fn: Callable, fullgraph: bool = True) -> Callable:
    """``fn`` (a module or a bound method) compiled for fixed shapes (``dynamic=False``) with
    the C++ wrapper (no Python between its kernels).

    Its guards skip the attributes of nn modules (``skip_guard_on_all_nn_modules_unsafe``):
    before each call dynamo would otherwise re-check every weight and flag of the model, ~0.25
    ms a graph on a 2-core machine, a tenth of a frame of the cpu-scale translator over its four
    graphs. That is sound only for what stays fixed after the first call: the weights of a
    frozen inference copy and its Python flags. The tensors passed in (a chunk, a cache) keep
    their guards, and a streaming layer's state, an attribute that is replaced every call, is
    read afresh each time; a caller that changes a module's flags calls the eager module
    instead (as :class:`~mlmlmlm.models.frozen_codec.CompiledFrames` does outside streaming)."""
    return torch.compile(fn, fullgraph=fullgraph, dynamic=False,
                         options={"cpp_wrapper": True,
                                  "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})
