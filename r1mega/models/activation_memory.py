"""Measure the activation memory a forward pass leaves for backward, per token and layer.

Every tensor an op returns during the forward is recorded by storage; whatever storage is still
alive once the forward has returned is held by autograd for backward (or by the outputs). This is
the measured number `r1mega plan` builds on, for each `train.recompute` mode.
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


def _layer_bytes_per_token(m, recompute: str, modules, tokens: int) -> dict[str, float]:
    """Measured bytes per token a dense and a MoE decoder layer of config `m` hold for backward."""
    from r1mega.models.deepseek_v3.model import DecoderLayer
    from r1mega.models.rope import RotaryEmbedding
    from r1mega.parallel.recompute import set_recompute
    from r1mega.parallel.layout import single_process_state

    ps = single_process_state()
    rope = RotaryEmbedding(m.qk_rope_head_dim, m.rope_theta, m.rope_scaling, m.max_position_embeddings,
                           m.rope_interleave)
    cos, sin = rope.cos_sin(torch.arange(tokens))
    out = {}
    kinds = {"dense": 0} if m.n_routed_experts == 0 else {"dense": 0, "moe": max(m.first_k_dense_replace, 0)}
    for kind, idx in kinds.items():
        if kind == "dense" and m.n_routed_experts and m.first_k_dense_replace == 0:
            continue
        layer = DecoderLayer(m, ps, idx).train()
        set_recompute(layer, recompute, modules)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in layer.parameters():
                p.normal_(0, 0.05, generator=g)
        h = torch.randn(tokens, 1, m.hidden_size, generator=g, requires_grad=True)
        out[kind] = saved_bytes(lambda: layer(h, rope, cos, sin).sum(), layer) / tokens
    return out


def layer_activation_bytes(m, recompute: str = "none", modules=None, tokens: int = 64) -> dict[str, float]:
    """Bytes per token per layer held for backward ({"dense": .., "moe": ..}) for model config `m`
    at float32 and tp = 1, *measured* by running one layer of each kind.

    A full-width layer of a large model does not fit a quick CPU run, so the layer is measured at
    two narrower widths: every width (hidden, LoRA ranks, heads, FFN sizes, expert count) divided
    by f and by f/2. Each saved tensor's per-token size is either proportional to a width or
    constant (top-k weights, norm statistics), so bytes(f) = A / f + C, solved from the two runs
    and read at f = 1. Tiny configs (f = 1) are measured as they are."""
    from dataclasses import replace

    from r1mega.parallel.recompute import SELECTIVE_RECOMPUTE_MODULES

    modules = list(SELECTIVE_RECOMPUTE_MODULES if modules is None else modules)
    moe = m.n_routed_experts > 0

    def widths_ok(f: int) -> bool:
        dims = [m.hidden_size, m.kv_lora_rank, m.num_heads, m.intermediate_size]
        dims += [m.q_lora_rank] if m.q_lora_rank else []
        dims += [m.moe_intermediate_size, m.n_routed_experts] if moe else []
        return all(d % f == 0 for d in dims) and (not moe or m.n_routed_experts // f >= m.num_experts_per_tok)

    f = 1
    while f < 64 and widths_ok(2 * f):
        f *= 2

    def scaled(k: int):
        return replace(m, hidden_size=m.hidden_size // k, kv_lora_rank=m.kv_lora_rank // k,
                       q_lora_rank=m.q_lora_rank // k if m.q_lora_rank else m.q_lora_rank,
                       num_heads=m.num_heads // k, intermediate_size=m.intermediate_size // k,
                       moe_intermediate_size=m.moe_intermediate_size // k if moe else m.moe_intermediate_size,
                       n_routed_experts=m.n_routed_experts // k if moe else 0, n_group=1, topk_group=1,
                       num_layers=2, first_k_dense_replace=min(m.first_k_dense_replace, 1), num_mtp_layers=0)

    if f == 1:
        return _layer_bytes_per_token(scaled(1), recompute, modules, tokens)
    narrow, wide = (_layer_bytes_per_token(scaled(k), recompute, modules, tokens) for k in (f, f // 2))
    # bytes(k) = A / k + C  =>  A = (wide - narrow) * f,  bytes(1) = A + C = narrow + A (1 - 1 / f)
    return {kind: narrow[kind] + (wide[kind] - narrow[kind]) * f * (1 - 1 / f) for kind in narrow}
