"""Tiny random models and rank workers for the rollout engine's hostile probes
(tests/test_rollout_engine_probes.py): a transformers model saved to a folder, loaded by r1mega under
any layout, and the continuous engine driven with chosen prompts, keys and budgets."""
from __future__ import annotations

import torch

from r1mega.config import ParallelConfig, build_config, validate
from r1mega.inference.generate import GenerationConfig, generate
from r1mega.models.family import family_for_hf
from r1mega.models.weights import load_hf_weights
from r1mega.parallel.layout import build_parallel_state, single_process_state

MOE = dict(vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
           num_attention_heads=4, n_routed_experts=8, num_experts_per_tok=2, first_k_dense_replace=1,
           q_lora_rank=16, kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8,
           n_shared_experts=1, max_position_embeddings=512, n_group=1, topk_group=1)
DENSE = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)


def save_tiny(folder: str, kind: str = "DeepseekV3", seed: int = 0, **overrides) -> str:
    """A random float32 transformers model of `kind` (DeepseekV3, Llama, Qwen2) saved in folder."""
    import transformers

    base = MOE if kind == "DeepseekV3" else DENSE
    cfg = getattr(transformers, f"{kind}Config")(**{**base, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, f"{kind}ForCausalLM")(cfg).float().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # weights large enough that sampling is not uniform
            if p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g) if "norm" in name else 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if "e_score_correction_bias" in name:
                b.copy_(0.05 * torch.randn(b.shape, generator=g))
    model.save_pretrained(folder)
    return folder


def load(folder: str, par: ParallelConfig | None = None):
    """(stage, ps) of the saved model on this rank's layout (one process without par)."""
    fam, mcfg = family_for_hf(folder)
    if par is None:
        ps = single_process_state()
        cfg = build_config(mcfg, ps.cfg)
    else:
        import torch.distributed as dist

        cfg = validate(build_config(mcfg, par), dist.get_world_size())
        ps = build_parallel_state(cfg.parallel)
    stage = fam.build_stage(cfg.active_model, ps, cfg.parallel.pp_layers).float()
    load_hf_weights(stage, folder)
    stage.eval()
    return stage, ps


def per_key(rollout, keys) -> dict:
    """{key: (tokens, log-probs)} of a rollout's rows."""
    outs = rollout.completions()
    res = {}
    for i, k in enumerate(keys):
        m = rollout.completion_mask[i]
        res[int(k)] = (outs[i], rollout.logprobs[i][m].tolist())
    return res


def run_cases(rank, world, folder, par_kwargs, cases):
    """Several generations on one layout: cases = [(per-DP-rank prompts, per-DP-rank keys, gen kwargs)].
    Returns, per case, {key: tokens} of this rank's rows (last stage, tp rank 0) or None."""
    stage, ps = load(folder, par=ParallelConfig(**par_kwargs))
    results = []
    for prompts, keys, gen_kwargs in cases:
        d = ps.r("dp")
        gen_kwargs = dict(gen_kwargs)
        stopk = gen_kwargs.pop("stop_mod", 0)
        if stopk:
            gen_kwargs["stop"] = lambda ids, m=stopk: ids[-1] % m == 0
        ro = generate(stage, ps, prompts[d], GenerationConfig(**gen_kwargs), rows=torch.tensor(keys[d], dtype=torch.long))
        mine = ps.is_last_stage and ps.r("tp") == 0
        results.append({int(k): c for k, c in zip(keys[d], ro.completions())} if mine else None)
    return results
