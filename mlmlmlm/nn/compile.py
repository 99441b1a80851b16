"""``torch.compile`` for frozen inference modules: one place for the options every compiled
streaming graph shares.

Introduced in notebook 06_live_demo: the compiled translator (``Translator(compile=True)``)
runs its transformer step and its codecs' one-frame graphs through :func:`compile_frozen`.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
from torch import nn


def compile_frozen(fn: Callable, fullgraph: bool = True) -> Callable:
    """``fn`` (a module or a bound method) compiled for fixed shapes (``dynamic=False``) with
    the C++ wrapper (no Python between its kernels).

    Its guards skip the attributes of nn modules (``skip_guard_on_all_nn_modules_unsafe``):
    before each call dynamo would otherwise re-check every weight and flag of the model, ~0.25
    ms a graph on a 2-core machine, a tenth of a frame of the cpu-scale translator over its four
    graphs. That is sound only for what stays fixed after the first call: the weights of a
    frozen inference copy and its Python flags. The tensors passed in (a chunk, a cache) keep
    their guards, and a streaming layer's state (one tensor a stream, written in place; a new
    one after a reset) is read afresh each time; a caller that changes a module's flags calls
    the eager module instead (as :class:`~mlmlmlm.models.frozen_codec.CompiledStream` does
    outside streaming).

    Dynamo keeps its compiled graphs per code object, and with those guards skipped a second
    model of the same class would run the first one's graph (a preset of another width in the
    same kernel: "expected size 64==128"). So each call compiles a copy of ``fn`` with a code
    object of its own (:func:`own_code`): one cache per compiled module, whatever else the
    process compiles."""
    return torch.compile(own_code(fn), fullgraph=fullgraph, dynamic=False,
                         options={"cpp_wrapper": True,
                                  "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})


def own_code(fn: Callable) -> Callable:
    """A bound method (or a module's ``forward``, bound to it) whose function is a copy of the
    original with a new, equal code object; anything else as it is. (A module called this way
    skips its hooks: a frozen inference module has none.)"""
    if isinstance(fn, nn.Module):
        fn = fn.forward
    if not isinstance(fn, types.MethodType):
        return fn
    f = fn.__func__
    copy = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__,
                              f.__closure__)
    copy.__kwdefaults__, copy.__qualname__ = f.__kwdefaults__, f.__qualname__
    return types.MethodType(copy, fn.__self__)
