"""Activation recompute (`train.recompute`): trade backward-pass compute for activation memory.

  none       every tensor autograd needs is kept from forward to backward
  full       each decoder layer keeps only its input; the layer runs again in backward
  selective  only the listed parts (`train.recompute_modules`) run again; each model family names
             the parts its layers can recompute (its `recompute_units`, Megatron's names where they
             exist, e.g. `layernorm`: RMSNorm internals, keeping only the input)
Recompute uses torch.utils.checkpoint without reentrancy, so gradients are identical; a module
opts in by reading `self.recompute` (a set of these names, set by `set_recompute`).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
from torch.utils.checkpoint import checkpoint

from r1mega.kernels import batch_invariant
from r1mega.kernels.linear import active_backend, use_backend

RECOMPUTE_MODES = ("none", "selective", "full")  # train.recompute


def recomputed(enabled: bool, fn: Callable, *args):
    """fn(*args), run again in backward when `enabled` and autograd is recording. The rerun uses the
    kernels backend of the forward: backward may run on another thread (a GPU's autograd worker),
    where the forward's `use_backend` scope does not hold."""
    if enabled and torch.is_grad_enabled():
        backend, exact = active_backend(), batch_invariant.enabled()

        @contextlib.contextmanager
        def rerun():  # the forward's kernels backend and exact mode (rl.exact_rollouts)
            with use_backend(backend), batch_invariant.exact_mode(exact):
                yield
        return checkpoint(fn, *args, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), rerun()))
    return fn(*args)


def recompute_set(mode: str, modules: Iterable[str] = ()) -> frozenset:
    if mode == "none":
        return frozenset()
    if mode == "full":
        return frozenset({"full"})
    return frozenset(modules)


def set_recompute(model: torch.nn.Module, mode: str, modules: Iterable[str] = ()) -> None:
    """Give every module that can recompute (those with a `recompute` attribute) the selection;
    modules: the parts selective recompute runs again (the family's `recompute_units` name them)."""
    which = recompute_set(mode, modules)
    for m in model.modules():
        if hasattr(m, "recompute"):
            m.recompute = which
