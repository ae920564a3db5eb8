"""A compiled decoding step for the rollout engine's few-row steps (`GenerationConfig.compile_decode`).

The tail of a long-tailed rollout is a few rows decoding alone for hundreds of steps, and such a
step of a small model is almost all fixed per-op cost (~530 aten ops and the Python around them,
README "Rollout engine"). Here the model's decoding forward and the sampler run as one graph
(torch.compile, inductor: fused C++ kernels on CPU, one call a step); the engine's bookkeeping and the
noise stay outside; the cache view (block-table gather) is built in the graph. (The noise drawn in
the graph, fused into the sampler's kernel, crashed inductor's 1-row kernel on the tiny model.)
Shapes are dynamic (rows, cached length, pool size), so the step compiles once for one row and once
for more (torch specialises size 1), not per step; and once per model object, whose ~1,300 guards
dynamo then need not check on every call (`compiled_step`, `_guards_kept`).

Not bitwise the eager step: the fused kernels sum in another order, and the sampler's top-p runs
its 48 bisection rounds in the graph (eager decides few rows on the host). Tokens match eager's on
greedy workloads and log-probs within float tolerance (tests/test_decode_compiled.py); sampled
tokens may differ where a logit change of ~1e-6 flips a draw. Hence it is off under
`rl.exact_rollouts` (batch-invariant kernels; the engine takes the eager step) and only in one
process (no collectives in the graph), on the plain torch kernels.
"""
from __future__ import annotations

import logging
import re
import types
import weakref
from typing import Optional

import torch

from r1mega.inference.paged_cache import decode_view
from r1mega.inference.sampling import sample
from r1mega.kernels import active_backend, batch_invariant
from r1mega.kernels.linear import TorchBackend

log = logging.getLogger(__name__)

# Rows up to which a step runs compiled (more take the eager step, where per-row work outweighs the
# fixed per-op cost). In the graph the MoE layers run each (row, expert) choice as one row of a
# batched GEMM over gathered expert weights (`GroupedExperts.by_choice`, within its byte budget).
COMPILED_MAX_ROWS = 64


def _step(model, ps, pool, layer_view, packed, table, longest: int, gumbel, temperature: float, top_p: float,
          top_k: int, vocab: int):
    """packed [b, 3] int64: each row's (slot, cached length, last token); table: the engine's block
    table; longest: max(length) + 1; gumbel: the rows' noise (None when greedy). The cache view is built
    in the graph (as eager ops it was ~12 small ops a step). (tokens [b], log-probs [b], routing
    {layer: experts}, the view's slots [b, L]: returned, and dropped by the caller, so that inductor
    writes them once a step; otherwise every layer's gather recomputed each cached token's slot with
    integer divisions, half of a 54-row step at 480 cached tokens: 10.1 -> 5.6 ms)."""
    slots, lengths, ids = packed.unbind(1)
    view = decode_view(pool, layer_view, table[slots], lengths, longest=longest)
    logits = model(ids[:, None], position_ids=lengths[:, None], cache=view, last_logits_only=True).logits[-1]
    tok, lp = sample(logits, ps, temperature, top_p, top_k, vocab_size=vocab, gumbel=gumbel)
    return tok, lp, view.routing, view.read


def _guards_kept(entries) -> list[bool]:
    """torch.compile's guard_filter_fn: which of dynamo's guards a compiled step checks on each call.
    Dropped: the ~1,300 on the model's modules and parameters (its structure, each tensor's dtype and
    shape) and the identities of the modules and functions the graph inlined. Checking them cost ~60 us
    a call (a 1-row step of the tiny model 0.43 -> 0.37 ms, bench/decode_step.py), and what they guard
    is fixed by `compiled_step`'s key instead: a graph serves one model object in one mode, reading
    its parameters at each call (an update in place is seen; a model re-shaped in place is not
    supported). Kept: the shapes' guards (a graph is valid for a range of rows, lengths and pool sizes:
    outside it dynamo compiles another), grad/inference mode, the module constants the graph read,
    and every guard on the other arguments (the pool's and noise's dtypes, the sampling settings)."""
    keep = []
    for e in entries:  # e.name: "model._modules['layers']...", "dict(type(model).__dict__)[...]", "packed"
        model_side = not {"model", "ps"}.isdisjoint(re.findall(r"\w+", re.split(r"[.\[]", e.name, maxsplit=1)[0]))
        constant = e.is_global and e.guard_type in ("EQUALS_MATCH", "CONSTANT_MATCH")
        keep.append(e.guard_type in ("SHAPE_ENV", "GLOBAL_STATE") or constant or not (model_side or e.is_global))
    return keep


# model -> {(ps, one row, training): the compiled step}; weak: a graph does not keep its model alive
_compiled: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def compiled_step(model, ps, one_row: bool):
    """The compiled `_step` for this model object, layout and mode, and for one row or more (torch
    specialises size 1, and with the dropped guards the two must not share a cache). Each is its own
    copy of `_step`'s code: dynamo keeps its graphs on the code object, so a copy's graphs are only
    ever called with what its key says (compiling a second copy of the same model structure reuses
    inductor's cached kernels)."""
    steps = _compiled.get(model)  # (called every step: setdefault built a weakref and a dict each time)
    if steps is None:
        steps = _compiled[model] = {}
    key = (id(ps), one_row, model.training)
    if key not in steps:
        # sizes equal by chance (a pool of 16 blocks, a 16-token prompt) would otherwise share one
        # symbol, and the step recompile once they part. Process-wide (a patch around each call cost
        # ~50 us a step); it only makes graphs assume less
        torch.fx.experimental._config.use_duck_shape = False
        # floats (norm eps, softmax scale, temperature) as constants: as symbols each took a Python
        # guard a call (~100 of them, ~0.3 ms a step)
        torch._dynamo.config.specialize_float = True
        code = _step.__code__.replace()  # a new code object: its own dynamo cache
        fn = types.FunctionType(code, _step.__globals__, _step.__name__, _step.__defaults__)
        # inductor's C++ wrapper: the graph's buffers, views and extern GEMM calls made in C++, not a
        # Python function of ~180 tensor reinterprets and ~160 allocations a call (bench/decode_step.py:
        # a 1-row step 0.81 -> 0.64 ms CPU, 64 rows 2.7 -> 2.3). Scoped to this graph's compile
        options = {"cpp_wrapper": True, "guard_filter_fn": _guards_kept}
        if one_row:  # its GEMVs as fused multiply-sums, not library calls (~3 us each; 1 row of the tiny
            # model: 0.37 -> 0.30 ms a call). Inductor's pass takes only a first dimension of 1 on CPU,
            # and only weights up to 2048 x 2048 (a real model's GEMVs stay library calls)
            options["post_grad_fusion_options"] = {"decompose_mm_pass": {}}
        steps[key] = (ps, torch.compile(fn, dynamic=True, options=options))
    return steps[key][1]  # (ps held with it: its id stays its own)


# why compiling failed in this process (a missing or broken C++ compiler): later rollouts decode
# eagerly at once instead of paying a failed compile each
_failed: Optional[str] = None


def compile_failed(error: Exception) -> None:
    """Record that compiling a step failed; this and every later rollout of the process runs eager."""
    global _failed
    cause = getattr(error, "inner_exception", None) or error  # (dynamo's wrapper says only which backend)
    _failed = f"{type(cause).__name__}: {(str(cause).splitlines() or [''])[0]}"[:300]
    log.warning("compile_decode: compiling failed, decoding eagerly from now on (%s)", _failed)


def refusal(model, ps, one_token_steps: bool) -> Optional[str]:
    """Why a rollout cannot take the compiled step (None: it can)."""
    if _failed is not None:
        return f"compiling failed earlier in this process ({_failed})"
    if ps.world > 1:
        return "it runs in one process only (no collectives in the compiled graph)"
    if batch_invariant.enabled():
        return "rl.exact_rollouts keeps the batch-invariant eager step"
    if not isinstance(active_backend(), TorchBackend):
        return "it runs on the plain torch kernels only"
    if not one_token_steps or not getattr(model, "is_last", True):
        return "speculative decoding keeps its own step"
    return None


def usable(model, ps, one_token_steps: bool) -> bool:
    """Whether the compiled step can run; says why not once (a log line), then runs eager."""
    why = refusal(model, ps, one_token_steps)
    if why is not None:
        log.info("compile_decode: eager decoding steps (%s)", why)
    return why is None
