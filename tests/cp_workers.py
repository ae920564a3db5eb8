"""Context-parallel layouts inside spawned ranks: logits gathered back to whole rows."""
from __future__ import annotations

import torch

from layout_workers import build
from r1mega.config import ParallelConfig
from r1mega.models.deepseek_v3.hf_weights import gather_full
from r1mega.models.family import family_of
from r1mega.parallel.recompute import set_recompute
from r1mega.parallel.context_parallel import gather_sequence
from r1mega.parallel.vocab_parallel import gather_vocab
from r1mega.train.lm_step import lm_forward_backward


def cp_evaluate(model, ps, ids, labels, docs, positions, micro: int, mtp_weight: float) -> dict:
    """Whole-row logits of this DP rank, losses, and full gradients of this stage."""
    kw = dict(attn_mask=docs, position_ids=positions)
    fwd = lm_forward_backward(model, ps, ids, labels, micro, {"mtp_weight": mtp_weight}, forward_only=True, **kw)
    model.zero_grad(set_to_none=True)
    step = lm_forward_backward(model, ps, ids, labels, micro, {"mtp_weight": mtp_weight}, **kw)
    out = {"loss": step.loss, "mtp_loss": step.extra["mtp_loss"], "dp": ps.r("dp"), "first": ps.r("tp") == 0 and ps.r("cp") == 0}
    if ps.is_last_stage:
        rows = []
        for local in fwd.logits:  # [s / cp, b, V / tp] per microbatch
            full = gather_vocab(local, ps.g("tp"))
            if ps.cp > 1:
                full = gather_sequence(full, ps, ids.shape[1])
            rows.append(full.transpose(0, 1))
        out["logits"] = torch.cat(rows)
    out["grads"] = gather_full(model, grads=True)
    return out


def cp_layouts_worker(rank: int, world: int, hf_dir: str, layouts: list[dict], ids, labels, docs, positions,
                      mtp_weight: float) -> list[dict]:
    results = []
    for lay in layouts:
        lay = dict(lay)
        micro = lay.pop("microbatches", 1)
        recompute = lay.pop("recompute", "none")
        packed = lay.pop("packed", True)  # False: plain causal rows (pretraining)
        model, ps = build(hf_dir, ParallelConfig(**lay), world)
        set_recompute(model, recompute, family_of(model).recompute_units)
        res = cp_evaluate(model, ps, ids, labels, docs if packed else None, positions if packed else None,
                          micro, mtp_weight)
        if ps.r("dp") != 0 or ps.r("tp") != 0 or ps.r("cp") != 0:
            res.pop("grads")
        results.append(res)
    return results
