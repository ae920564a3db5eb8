"""Measure the activation memory a forward pass leaves for backward, per token and layer.

Every tensor an op returns during the forward is recorded by storage; whatever storage is still
alive once the forward has returned is held by autograd for backward (or by the outputs). A family
measures its layers with it (e.g. models/deepseek_v3/activation_memory.py): the number `r1mega plan`
builds on, for each `train.recompute` mode.
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LiveStorages(TorchDispatchMode):
    """Records (weakly) the storage of every tensor created under it; `live_bytes()` sums those
    still referenced."""

    def __init__(self):
        super().__init__()
        self.refs: list[weakref.ref] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.refs.append(weakref.ref(t))
        return out

    def live_bytes(self, exclude: frozenset = frozenset()) -> int:
        """Sum over distinct live storages (views share one; a freed address may be reused),
        leaving out the storages at the `exclude` addresses (parameters: a saved weight view)."""
        storages = {}
        for ref in self.refs:
            t = ref()
            if t is not None:
                st = t.untyped_storage()
                if st.data_ptr() not in exclude:
                    storages[st.data_ptr()] = st.nbytes()
        return sum(storages.values())


def saved_bytes(run_forward, module: torch.nn.Module) -> int:
    """Bytes of the tensors created by `run_forward()` (which returns what it keeps: the loss)
    that are still alive after it returns, i.e. activations held for backward, not counting
    views of `module`'s parameters and buffers."""
    rec = LiveStorages()
    with rec:
        kept = run_forward()
    live = rec.live_bytes(frozenset(t.untyped_storage().data_ptr()
                                    for t in [*module.parameters(), *module.buffers()]))
    del kept
    return live


class PeakLiveBytes(TorchDispatchMode):
    """Peak bytes of tensors created under it and alive at once (forward and backward), counting
    each storage once: a portable stand-in for an allocator's peak that works on CPU."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list] = {}  # storage address -> [bytes, live tensors on it]
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                key = st.data_ptr()
                if key not in self.live:
                    self.live[key] = [st.nbytes(), 0]
                    self.current += st.nbytes()
                self.live[key][1] += 1
                weakref.finalize(t, self._release, key)
        self.peak = max(self.peak, self.current)
        return out
