"""Code that runs inside spawned ranks (kept free of transformers so ranks start fast)."""
from __future__ import annotations

import torch

from r1mega.config import Config, ModelConfig, ParallelConfig, validate
from r1mega.models.deepseek_v3.hf_weights import gather_full, load_hf_weights
from r1mega.models.deepseek_v3.model import DeepseekV3
from r1mega.parallel.layout import ParallelState, build_parallel_state, single_process_state
from r1mega.parallel.vocab_parallel import gather_vocab
from r1mega.train.lm_step import lm_forward_backward


def build(hf_dir: str, par: ParallelConfig, world: int):
    cfg = validate(Config(model=ModelConfig.from_hf(hf_dir), parallel=par), world)
    ps = build_parallel_state(cfg.parallel) if world > 1 else single_process_state()
    model = DeepseekV3(cfg.model, ps, cfg.parallel.pp_layers)
    load_hf_weights(model, hf_dir)
    return model, ps


def evaluate(model, ps: ParallelState, ids, labels, num_microbatches: int, mtp_weight: float) -> dict:
    """Logits (full vocab, this DP rank's rows), losses and full gradients of this stage."""
    fwd = lm_forward_backward(model, ps, ids, labels, num_microbatches, {"mtp_weight": mtp_weight}, forward_only=True)
    model.zero_grad(set_to_none=True)
    step = lm_forward_backward(model, ps, ids, labels, num_microbatches, {"mtp_weight": mtp_weight})
    out = {"loss": step.loss, "mtp_loss": step.extra["mtp_loss"], "dp": ps.r("dp"), "pp": ps.r("pp"),
           "tp": ps.r("tp")}
    if ps.is_last_stage:
        out["logits"] = torch.cat([gather_vocab(part, ps.g("tp")).transpose(0, 1) for part in fwd.logits])
    out["grads"] = gather_full(model, grads=True)
    return out


def layouts_worker(rank: int, world: int, hf_dir: str, layouts: list[dict], ids, labels,
                   mtp_weight: float) -> list[dict]:
    results = []
    for lay in layouts:
        lay = dict(lay)
        micro = lay.pop("microbatches", 1)
        model, ps = build(hf_dir, ParallelConfig(**lay), world)
        res = evaluate(model, ps, ids, labels, micro, mtp_weight)
        if ps.r("dp") != 0 or ps.r("tp") != 0:
            res.pop("grads")  # identical copies; one per stage is enough
        results.append(res)
    return results
