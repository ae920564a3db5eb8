"""`r1mega plan`: parameters, per-GPU memory and per-step communication of a layout, on paper.

    r1mega plan --config configs/model/deepseek_v3_671b.yaml --tp 2 --pp 16 --ep 64 --dp 64 \
                --gpus-per-node 8 --gpu-mem 80 --micro-batch 1 --seq-length 4096

Nothing is allocated. Parameter counts come from `params.count_params` (checked against
instantiated models in the tests). Memory per GPU (the worst pipeline stage):
  weights      parameters held x weight bytes (bf16: 2)
  grads        same count x grad bytes (gradients live in the parameters' dtype)
  optimizer    ZeRO-1: fp32 master + two AdamW moments = 12 bytes per parameter, / dp (experts: / edp)
  activations  per layer, per microbatch in flight (1F1B keeps up to pp on the first stage), the
               bytes per token a layer holds for backward under `train.recompute`, *measured* by
               running one dense and one MoE layer of the model (models/activation_memory.py),
               times the tokens a GPU holds: micro_batch x seq / cp (/ tp under SP); plus the
               fp32 logits of one microbatch on the last stage
  kv cache     for rollouts: MLA caches kv_lora_rank + qk_rope_head_dim values per token and layer
               instead of heads x (qk_head_dim + v_head_dim) for full keys and values
Communication per GPU and step (bytes sent, ring algorithms): TP all-gather/reduce-scatter of
the activations at every TP region edge, CP all-gather of the MLA latent per layer (reduce-
scatter in backward), EP all-to-all of routed tokens (dispatch + combine, forward + backward), PP
activations and gradients between stages, DP reduce-scatter of gradients and all-gather of
parameters (dense ones over dp x cp).
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Optional

from r1mega.config import Config, ConfigError, ModelConfig, ParallelConfig, load_config, validate
from r1mega.models.activation_memory import layer_activation_bytes
from r1mega.models.deepseek_v3.params import attention_params, kind_params, moe_layer_count
from r1mega.models.family import family_for
from r1mega.models.stage import stage_layers

GiB = 1024 ** 3


@dataclass
class Plan:
    counts: dict[str, int]
    layout: dict[str, int]
    memory: dict[str, float] = field(default_factory=dict)  # bytes per GPU, worst stage
    comm: dict[str, float] = field(default_factory=dict)  # bytes per GPU per step
    kv_cache: dict[str, float] = field(default_factory=dict)
    stage: int = 0  # the stage the memory figures are for
    recompute: str = "none"  # train.recompute the activation figures assume

    @property
    def total_memory(self) -> float:
        return sum(self.memory.values())


def _stage_layer_kinds(m: ModelConfig, p: ParallelConfig, stage: int) -> tuple[range, int]:
    """(the decoder layers of pipeline stage `stage`, how many MTP modules it holds: the last's)."""
    return stage_layers(m.num_layers, p.pp, stage, p.pp_layers), m.num_mtp_layers if stage == p.pp - 1 else 0


def _stage_params(m: ModelConfig, p: ParallelConfig, stage: int) -> tuple[float, float]:
    """(dense params, expert params) held by one GPU of pipeline stage `stage`. Layers of a kind
    hold the same, so they are counted, not visited: any num_layers costs the same."""
    D, V = m.hidden_size, m.vocab_size
    layers, mtp = _stage_layer_kinds(m, p, stage)
    # MTP module k's layer is index num_layers + k
    moe = moe_layer_count(m, layers) + moe_layer_count(m, range(m.num_layers, m.num_layers + mtp))
    n_dense = len(layers) + mtp - moe
    e_all = m.n_routed_experts * 3 * D * m.moe_intermediate_size
    expert = moe * (e_all / (p.ep * p.expert_tp))
    shared = m.n_shared_experts * 3 * D * m.moe_intermediate_size
    dense = moe * (attention_params(m) / p.tp + shared / p.tp + m.n_routed_experts * D + 2 * D)
    dense += n_dense * ((kind_params(m, False)[0] - 2 * D) / p.tp + 2 * D)
    if stage == 0:
        dense += V * D / p.tp
    if stage == p.pp - 1:
        dense += V * D / p.tp + D
        if m.num_mtp_layers:
            dense += m.num_mtp_layers * (2 * D * D + 3 * D)
            if p.pp > 1:
                dense += V * D / p.tp  # the embedding copy MTP keeps on the last stage
    return dense, expert


def _activation_bytes(m: ModelConfig, p: ParallelConfig, layers: range, mtp: int, mb: int, seq: int,
                      act_bytes: int, recompute: str, recompute_modules: Optional[list[str]]) -> float:
    """Activations the decoder `layers` and `mtp` MTP modules hold for one microbatch on one GPU,
    from measured bytes per token (per layer kind, times the layers of that kind)."""
    measured = _measured(m, recompute, recompute_modules)
    tokens = mb * seq / p.cp / (p.tp if p.sp and p.tp > 1 else 1)  # without SP, conservatively unsplit
    moe = moe_layer_count(m, layers) + (mtp if m.n_routed_experts else 0)  # MTP modules carry a MoE layer
    kinds = {k: n for k, n in (("dense", len(layers) + mtp - moe), ("moe", moe)) if n}
    n_layers = sum(kinds.values())
    # + the layer input, kept in every mode
    per_token = sum(n * (measured[k] + 4 * m.hidden_size) for k, n in kinds.items())
    total = per_token * tokens
    if p.cp > 1 and recompute != "full":
        # Keys of the other cp ranks' tokens are held too: per-head K/V from the gathered latent,
        # or only the latent when the up-projections are recomputed.
        others = mb * seq * (p.cp - 1) / p.cp
        up_recomputed = recompute == "selective" and "mla_up_proj" in (recompute_modules or ["mla_up_proj"])
        width = (m.kv_lora_rank + m.qk_rope_head_dim) if up_recomputed else \
            m.num_heads / p.tp * (m.qk_head_dim + m.v_head_dim) + m.kv_lora_rank + m.qk_rope_head_dim
        total += others * width * 4 * n_layers
    if recompute == "full" and kinds:  # backward re-runs one layer at a time: its activations, once
        worst = max(kinds, key=lambda k: _measured(m, "none", None)[k])
        total += _measured(m, "none", None)[worst] * tokens
    return total * act_bytes / 4  # measured in float32


@functools.lru_cache(maxsize=32)
def _measured_cached(key: str, recompute: str, modules: Optional[tuple]) -> dict[str, float]:
    return layer_activation_bytes(ModelConfig(**json.loads(key)), recompute, modules)


def _measured(m: ModelConfig, recompute: str, modules: Optional[list[str]]) -> dict[str, float]:
    return _measured_cached(json.dumps(asdict(m), sort_keys=True), recompute,
                            tuple(modules) if modules is not None else None)


def make_plan(cfg: Config, world: int, micro_batch: int, seq: int, global_batch: Optional[int] = None,
              weight_bytes: int = 2, rollout_batch: int = 0, rollout_len: int = 0) -> Plan:
    cfg = validate(cfg, world)
    m, p, t = cfg.model, cfg.parallel, cfg.train
    counts = family_for(cfg)[0].count_params(m)
    edp = p.tp * p.cp * p.dp // (p.expert_tp * p.ep)
    gbs = global_batch or micro_batch * p.dp
    micro_per_rank = max(gbs // (micro_batch * p.dp), 1)
    plan = Plan(counts=counts, layout={"tp": p.tp, "cp": p.cp, "pp": p.pp, "ep": p.ep, "etp": p.expert_tp,
                                       "dp": p.dp, "edp": edp, "world": world})
    worst = None
    for stage in range(p.pp):
        dense, expert = _stage_params(m, p, stage)
        layers, mtp = _stage_layer_kinds(m, p, stage)
        in_flight = min(p.pp - stage, micro_per_rank)
        acts = _activation_bytes(m, p, layers, mtp, micro_batch, seq, weight_bytes, t.recompute, t.recompute_modules)
        mem = {
            "weights": (dense + expert) * weight_bytes,
            "grads": (dense + expert) * weight_bytes,
            "optimizer": 12 * (dense / (p.dp * p.cp) + expert / edp),
            "activations": acts * in_flight,
        }
        if stage == p.pp - 1:  # fp32 logits of one microbatch for the loss
            mem["activations"] += micro_batch * seq / p.cp * m.vocab_size / p.tp * 4
        if worst is None or sum(mem.values()) > sum(worst[1].values()):
            worst = (stage, mem, dense, expert)
    plan.stage, plan.memory, plan.recompute = worst[0], worst[1], t.recompute
    dense, expert = worst[2], worst[3]

    # communication per GPU per step (bytes sent)
    D, tokens = m.hidden_size, micro_batch * seq / p.cp  # this GPU's tokens
    act = tokens * D * weight_bytes
    layers_here = len(stage_layers(m.num_layers, p.pp, worst[0], p.pp_layers))
    ring = lambda n: (n - 1) / n if n > 1 else 0.0  # noqa: E731
    # 2 TP regions per layer, each entered and left in forward and in backward
    plan.comm["tp"] = 8 * act * ring(p.tp) * layers_here * micro_per_rank
    moe_layers = moe_layer_count(m, stage_layers(m.num_layers, p.pp, worst[0], p.pp_layers))
    routed = tokens / p.tp * m.num_experts_per_tok * D * weight_bytes
    plan.comm["ep"] = 4 * routed * ring(p.ep) * moe_layers * micro_per_rank
    local_tokens = tokens / (p.tp if p.sp and p.tp > 1 else 1)
    plan.comm["pp"] = (2 * local_tokens * D * weight_bytes * micro_per_rank) if p.pp > 1 else 0.0
    plan.comm["dp"] = 2 * weight_bytes * (dense * ring(p.dp * p.cp) + expert * ring(edp))
    # every layer all-gathers its [c_kv | k_rope] latent in forward, reduce-scatters it in backward
    latent = tokens * (m.kv_lora_rank + m.qk_rope_head_dim) * weight_bytes
    plan.comm["cp"] = 2 * latent * (p.cp - 1) * layers_here * micro_per_rank

    if rollout_batch and rollout_len:
        per_token_layer_latent = m.kv_lora_rank + m.qk_rope_head_dim
        per_token_layer_full = m.num_heads * (m.qk_head_dim + m.v_head_dim)
        layers_per_gpu = m.num_layers / p.pp
        n = rollout_batch * rollout_len * layers_per_gpu * weight_bytes / p.dp
        # the latent is shared by all heads (replicated over TP); full K/V split by heads
        plan.kv_cache = {"mla_latent": n * per_token_layer_latent, "full_heads": n * per_token_layer_full / p.tp}
    return plan


def make_dense_plan(cfg: Config, world: int, micro_batch: int, seq: int, global_batch: Optional[int] = None,
                    weight_bytes: int = 2, rollout_batch: int = 0, rollout_len: int = 0) -> Plan:
    """The same accounting for a dense student (GQA attention, SwiGLU), layers split evenly over pp.
    KV heads that do not split over tp are replicated (k/v projections and cache held whole per rank)."""
    cfg = validate(cfg, world)
    s, p = cfg.student, cfg.parallel
    family = family_for(cfg)[0]
    counts = family.count_params(s)
    layers = -(-s.num_layers // p.pp)
    emb = s.vocab_size * s.hidden_size
    D, hd = s.hidden_size, s.head_size
    kv_split = s.num_kv_heads % p.tp == 0
    kv_weights = 2 * D * s.num_kv_heads * hd
    per_layer_held = counts["per_layer"] / p.tp + (0 if kv_split else kv_weights * (1 - 1 / p.tp))
    held = layers * per_layer_held + emb / p.tp  # worst stage: its layers + embedding or head
    gbs = global_batch or micro_batch * p.dp
    micro_per_rank = max(gbs // (micro_batch * p.dp), 1)
    tokens = micro_batch * seq / p.cp  # this GPU's tokens: its zigzag chunks under context parallelism
    lh, group = s.num_heads // p.tp, s.num_heads // s.num_kv_heads
    kv_local = max((r * lh + lh - 1) // group - (r * lh) // group + 1 for r in range(p.tp))
    per_layer = tokens * (4 * D + D + (s.num_heads + 2 * s.num_kv_heads) * hd / p.tp * 2
                          + (D + 3 * s.intermediate_size / p.tp))
    if p.cp > 1:  # the other cp ranks' keys and values: gathered (kv heads), then widened to the query heads
        per_layer += micro_batch * seq * (p.cp - 1) / p.cp * 2 * hd * (kv_local + lh)
    plan = Plan(counts={k: counts[k] for k in ("total", "active", "mtp")},
                layout={"tp": p.tp, "cp": p.cp, "pp": p.pp, "ep": 1, "etp": 1, "dp": p.dp, "edp": p.dp * p.cp,
                        "world": world})
    plan.memory = {"weights": held * weight_bytes, "grads": held * weight_bytes,
                   "optimizer": 12 * held / (p.dp * p.cp),  # ZeRO-1 over the dp x cp replicas
                   "activations": per_layer * layers * weight_bytes * min(p.pp, micro_per_rank)
                   + tokens * s.vocab_size / p.tp * 4}
    ring = lambda n: (n - 1) / n if n > 1 else 0.0  # noqa: E731
    act = tokens * D * weight_bytes
    plan.comm = {"tp": 8 * act * ring(p.tp) * layers * micro_per_rank, "ep": 0.0,
                 "pp": 2 * act * micro_per_rank if p.pp > 1 else 0.0,
                 "dp": 2 * weight_bytes * held * ring(p.dp * p.cp),
                 # every layer all-gathers its rotated K and V in forward, reduce-scatters them in backward
                 "cp": 2 * tokens * 2 * kv_local * hd * weight_bytes * (p.cp - 1) * layers * micro_per_rank}
    if rollout_batch and rollout_len:  # per-head K and V of the KV heads a rank attends with
        n = rollout_batch * rollout_len * layers * weight_bytes / p.dp
        plan.kv_cache = {"gqa_heads": n * 2 * kv_local * hd}
    return plan


def _dsa_plan(*args, **kw) -> Plan:
    from r1mega.models.deepseek_v32.plan import make_dsa_plan  # V3's plan + the indexer

    return make_dsa_plan(*args, **kw)


PLANNERS = {"deepseek_v3": make_plan, "deepseek_v32": _dsa_plan, "dense": make_dense_plan}  # by model family


def plan_for(cfg: Config, world: int, micro_batch: int, seq: int, global_batch: Optional[int] = None,
             **kw) -> Plan:
    """The plan of the config's model family (refusing a sequence length the layout cannot split,
    as the real run does)."""
    if seq % cfg.parallel.sequence_divisor:
        raise ConfigError("--seq-length", f"{seq} is not divisible by {cfg.parallel.sequence_divisor_text()}, "
                                          "which the run refuses")
    return PLANNERS[family_for(cfg)[0].name](cfg, world, micro_batch, seq, global_batch, **kw)


def fits(plan: Plan, gpu_mem_gib: float) -> Optional[str]:
    """None if the plan fits, else what overflows by how much."""
    budget = gpu_mem_gib * GiB
    total = plan.total_memory
    if total <= budget:
        return None
    parts = ", ".join(f"{k} {v / GiB:.1f} GiB" for k, v in sorted(plan.memory.items(), key=lambda kv: -kv[1]))
    return (f"does not fit: stage {plan.stage} needs {total / GiB:.1f} GiB per GPU, {(total - budget) / GiB:.1f} GiB "
            f"over the {gpu_mem_gib:g} GiB of a GPU ({parts})")


def search(cfg: Config, gpus: int, gpus_per_node: int, gpu_mem: float, micro_batch: int, seq: int,
           global_batch: Optional[int], limit: int = 10) -> list[tuple[Plan, dict]]:
    m = cfg.model
    found = []
    pow2 = [2 ** i for i in range(0, 12)]
    cps = [1, 2, 4, 8, 16]
    for tp, pp, ep, etp in itertools.product(pow2, pow2, pow2, [1, 2, 4, 8]):
        if tp > gpus_per_node or tp * pp > gpus or gpus % (tp * pp) or pp > m.num_layers:
            continue
        if m.n_routed_experts == 0 and (ep > 1 or etp > 1):
            continue
        for cp in cps:
            if tp * pp * cp > gpus or gpus % (tp * pp * cp):
                continue
            par = ParallelConfig(tp=tp, pp=pp, ep=ep, etp=etp, sp=tp > 1, cp=cp)
            if seq % par.sequence_divisor:
                continue
            try:
                plan = make_plan(Config(model=m, parallel=par, train=cfg.train), gpus, micro_batch, seq, global_batch)
            except ConfigError:
                continue
            if fits(plan, gpu_mem) is None:
                found.append((plan, {"tp": tp, "cp": cp, "pp": pp, "ep": ep, "etp": etp}))
    # prefer little communication, then little memory
    found.sort(key=lambda x: (sum(x[0].comm.values()), x[0].total_memory))
    return found[:limit]


def print_plan(plan: Plan, gpu_mem: Optional[float] = None) -> None:
    lay = plan.layout
    cp = f" cp={lay['cp']}" if lay.get("cp", 1) > 1 else ""
    print(f"layout: tp={lay['tp']} pp={lay['pp']} ep={lay['ep']} etp={lay['etp']} dp={lay['dp']}{cp} "
          f"edp={lay['edp']} on {lay['world']} GPUs")
    print(f"memory per GPU (stage {plan.stage}, the largest; activations measured, recompute={plan.recompute}):")
    for k, v in plan.memory.items():
        print(f"  {k:<12} {v / GiB:10.2f} GiB")
    print(f"  {'total':<12} {plan.total_memory / GiB:10.2f} GiB" + (f" of {gpu_mem:g}" if gpu_mem else ""))
    print("communication per GPU per step:")
    for k, v in plan.comm.items():
        print(f"  {k:<12} {v / GiB:10.2f} GiB")
    if plan.kv_cache:
        print("rollout KV cache per GPU: " + ", ".join(f"{k} {v / GiB:.2f} GiB" for k, v in plan.kv_cache.items()))
    c = plan.counts
    print(f"total_params={c['total']}")
    print(f"active_params={c['active']}")
    print(f"mtp_params={c['mtp']}")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--ep", type=int, default=1)
    p.add_argument("--etp", type=int, default=None)
    p.add_argument("--dp", type=int, default=1)
    p.add_argument("--sp", action="store_true")
    p.add_argument("--cp", type=int, default=1, help="context parallel size")
    p.add_argument("--recompute", choices=["none", "selective", "full"], default=None,
                   help="activation recompute (default: train.recompute of the config)")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per GPU")
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--seq-length", type=int, default=4096)
    p.add_argument("--global-batch", type=int, default=None)
    p.add_argument("--rollout-batch", type=int, default=0, help="sequences per rollout, for the KV cache")
    p.add_argument("--rollout-len", type=int, default=0)
    p.add_argument("--search", type=int, default=None, metavar="GPUS", help="list layouts of GPUS that fit")
    p.add_argument("overrides", nargs="*")


def check_sequence(cfg: Config, seq: int, key: str) -> None:
    """What a training run refuses about its sequence length (the model's positions, and the
    layout's one split rule, `ParallelConfig.sequence_divisor`), refused by the planner too."""
    positions = cfg.active_model.max_position_embeddings
    if seq > positions:
        raise ConfigError(key, f"{seq} exceeds the model's max_position_embeddings={positions}")
    if seq % cfg.parallel.sequence_divisor:
        raise ConfigError(key, f"{seq} is not divisible by {cfg.parallel.sequence_divisor_text()}, which the run refuses")


def check_sizes(**sizes: float) -> None:
    """Command-line sizes (--gpu-mem, --world, ...) must be finite and positive."""
    for name, v in sizes.items():
        if v is not None and not (v == v and 0 < v < float("inf")):
            raise ConfigError("--" + name.replace("_", "-"), f"must be > 0, got {v}")


def run(args: argparse.Namespace) -> int:
    check_sizes(gpu_mem=args.gpu_mem, gpus_per_node=args.gpus_per_node, micro_batch=args.micro_batch,
                seq_length=args.seq_length, global_batch=args.global_batch, search=args.search)
    for name in ("rollout_batch", "rollout_len"):
        if getattr(args, name) < 0:
            raise ConfigError("--" + name.replace("_", "-"), f"must be >= 0, got {getattr(args, name)}")
    cfg = load_config(args.config, args.overrides)
    if args.recompute is not None:
        cfg.train.recompute = args.recompute
    if args.search and cfg.student is not None:
        raise ConfigError("--search", "covers DeepSeek MoE configs; give a layout (--tp/--pp/--dp) for dense students")
    if args.search:
        found = search(cfg, args.search, args.gpus_per_node, args.gpu_mem, args.micro_batch, args.seq_length,
                       args.global_batch)
        if not found:
            print(f"no layout of {args.search} GPUs fits {args.gpu_mem:g} GiB per GPU")
            return 1
        print(f"{len(found)} layouts of {args.search} GPUs that fit, least communication first:")
        for plan, lay in found:
            comm = sum(plan.comm.values()) / GiB
            cp = f" cp={lay['cp']}" if lay["cp"] > 1 else ""
            print(f"  tp={lay['tp']} pp={lay['pp']} ep={lay['ep']} etp={lay['etp']} dp={plan.layout['dp']}{cp}: "
                  f"{plan.total_memory / GiB:.1f} GiB/GPU, {comm:.1f} GiB sent/GPU/step")
        return 0
    etp = args.etp if args.etp is not None else cfg.parallel.etp
    cfg.parallel = ParallelConfig(tp=args.tp, pp=args.pp, ep=args.ep, etp=etp, dp=args.dp, cp=args.cp,
                                  sp=args.sp or cfg.parallel.sp, pp_layers=cfg.parallel.pp_layers)
    world = args.tp * args.cp * args.pp * args.dp
    check_sequence(cfg, args.seq_length, "--seq-length")
    plan = plan_for(cfg, world, args.micro_batch, args.seq_length, args.global_batch,
                    rollout_batch=args.rollout_batch, rollout_len=args.rollout_len)
    print_plan(plan, args.gpu_mem)
    overflow = fits(plan, args.gpu_mem)
    if overflow:
        print(f"REFUSED: {overflow}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="r1mega plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
