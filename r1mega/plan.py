"""`r1mega plan`: parameters, per-GPU memory and per-step communication of a layout, on paper.

    r1mega plan --config configs/model/MODEL.yaml --tp 2 --pp 16 --ep 64 --dp 64 \
                --gpus-per-node 8 --gpu-mem 80 --micro-batch 1 --seq-length 4096

Nothing is allocated. Parameter counts come from `params.count_params` (checked against
instantiated models in the tests). Memory per GPU (the worst pipeline stage):
  weights      parameters held x weight bytes (bf16: 2)
  grads        same count x grad bytes (gradients live in the parameters' dtype)
  optimizer    ZeRO-1: fp32 master + two AdamW moments = 12 bytes per parameter, / dp (experts: / edp)
  activations  per layer, per microbatch in flight (1F1B keeps up to pp on the first stage), the
               bytes per token a layer holds for backward under `train.recompute` (the family's
               share: e.g. *measured* by running one layer of each kind), times the tokens a GPU
               holds: micro_batch x seq / cp (/ tp under SP); plus the fp32 logits of one
               microbatch on the last stage
  kv cache     for rollouts: what the family's cache holds per token and layer (a latent for
               MLA, keys and values per KV head for the dense family)
Communication per GPU and step (bytes sent, ring algorithms): TP all-gather/reduce-scatter of
the activations at every TP region edge, PP activations and gradients between stages, DP
reduce-scatter of gradients and all-gather of parameters in float32 (dense ones over dp x cp), and the
family's own (e.g. EP all-to-all of routed tokens, the CP all-gather of the MLA latent).
"""
from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import dataclass, field
from typing import Optional

from r1mega.config import Config, ConfigError, ParallelConfig, load_config, validate
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


def make_plan(cfg: Config, world: int, micro_batch: int, seq: int, global_batch: Optional[int] = None,
              weight_bytes: int = 2, rollout_batch: int = 0, rollout_len: int = 0,
              rollout_cap: Optional[float] = None) -> Plan:
    """The plan of a config's model on a layout, for any family: the family says what a GPU of each
    stage holds and what one microbatch leaves for backward (`family.planner`); the rest is the same
    for every model (ZeRO-1 optimizer, microbatches in flight under 1F1B, fp32 logits, TP/PP/DP traffic).
    rollout_cap: the most tokens one GPU's rollout cache holds at once (the rollout scheduler's budgets)."""
    cfg = validate(cfg, world)
    family, m = family_for(cfg)
    p, t, fam_plan = cfg.parallel, cfg.train, family.planner
    counts = family.count_params(m)
    edp = p.tp * p.cp * p.dp // (p.expert_tp * p.ep)
    gbs = global_batch or micro_batch * p.dp
    micro_per_rank = max(gbs // (micro_batch * p.dp), 1)
    plan = Plan(counts=counts, layout={"tp": p.tp, "cp": p.cp, "pp": p.pp, "ep": p.ep, "etp": p.expert_tp,
                                       "dp": p.dp, "edp": edp, "world": world})
    worst = None
    for stage in range(p.pp):
        dense, expert = fam_plan.stage_params(m, p, stage)
        in_flight = min(p.pp - stage, micro_per_rank)
        acts = fam_plan.activation_bytes(m, p, stage, micro_batch, seq, weight_bytes, t.recompute,
                                         t.recompute_modules)
        # a backward re-running a layer (full recompute) holds its activations for one microbatch at a time
        transient = getattr(fam_plan, "recompute_transient_bytes", lambda *a: 0.0)(
            m, p, stage, micro_batch, seq, weight_bytes, t.recompute, t.recompute_modules)
        mem = {
            "weights": (dense + expert) * weight_bytes,
            "grads": (dense + expert) * weight_bytes,
            "optimizer": 12 * (dense / (p.dp * p.cp) + expert / edp),
            "activations": acts * in_flight + transient,
        }
        if stage == p.pp - 1:  # each loss head's fp32 log-probs of one microbatch: the main one and each MTP module's
            heads = 1 + getattr(m, "num_mtp_layers", 0)
            mem["activations"] += heads * micro_batch * seq / p.cp * m.vocab_size / p.tp * 4
        if worst is None or sum(mem.values()) > sum(worst[1].values()):
            worst = (stage, mem, dense, expert)
    plan.stage, plan.memory, plan.recompute = worst[0], worst[1], t.recompute
    stage, dense, expert = worst[0], worst[2], worst[3]

    # communication per GPU per step (bytes sent)
    D, tokens = m.hidden_size, micro_batch * seq / p.cp  # this GPU's tokens
    act = tokens * D * weight_bytes
    layers_here = len(stage_layers(m.num_layers, p.pp, stage, p.pp_layers))
    ring = lambda n: (n - 1) / n if n > 1 else 0.0  # noqa: E731
    # 2 TP regions per layer, each entered and left in forward and in backward
    plan.comm["tp"] = 8 * act * ring(p.tp) * layers_here * micro_per_rank
    extra = fam_plan.family_comm(m, p, stage, tokens, micro_per_rank, weight_bytes)
    plan.comm["ep"] = extra.pop("ep", 0.0)
    local_tokens = tokens / (p.tp if p.sp and p.tp > 1 else 1)
    plan.comm["pp"] = (2 * local_tokens * D * weight_bytes * micro_per_rank) if p.pp > 1 else 0.0
    # ZeRO-1 reduce-scatters gradients and all-gathers parameters in its float32 buckets (train/optimizer.py),
    # whatever the weights' type
    plan.comm["dp"] = 2 * 4 * (dense * ring(p.dp * p.cp) + expert * ring(edp))
    plan.comm.update(extra)
    if rollout_batch and rollout_len:
        # the rollout's sequences are split over DP ranks, and a DP rank's over its CP ranks, each
        # decoding its rows whole (inference/generate.py): one GPU caches 1 / (dp x cp) of the tokens
        tokens = rollout_batch * rollout_len / (p.dp * p.cp)
        plan.kv_cache = fam_plan.kv_cache_bytes(m, p, tokens if rollout_cap is None else min(tokens, rollout_cap),
                                                weight_bytes)
    return plan


def plan_for(cfg: Config, world: int, micro_batch: int, seq: int, global_batch: Optional[int] = None,
             **kw) -> Plan:
    """make_plan, refusing a sequence length the layout cannot split, as the real run does."""
    if seq % cfg.parallel.sequence_divisor:
        raise ConfigError("--seq-length", f"{seq} is not divisible by {cfg.parallel.sequence_divisor_text()}, "
                                          "which the run refuses")
    return make_plan(cfg, world, micro_batch, seq, global_batch, **kw)


def fits(plan: Plan, gpu_mem_gib: float) -> Optional[str]:
    """None if the plan fits, else what overflows by how much."""
    budget = gpu_mem_gib * GiB
    total = plan.total_memory
    if total <= budget:
        return None
    parts = ", ".join(f"{k} {v / GiB:.1f} GiB" for k, v in sorted(plan.memory.items(), key=lambda kv: -kv[1]))
    return (f"does not fit: stage {plan.stage} needs {total / GiB:.1f} GiB per GPU, {(total - budget) / GiB:.1f} GiB "
            f"over the {gpu_mem_gib:g} GiB of a GPU ({parts})")


def rollout_memory(plan: Plan) -> float:
    """Bytes per GPU while rolling out: the weights and the cache (gradients are freed and GRPO moves the
    optimizer states to host memory for the rollout: rl/grpo.py)."""
    return plan.memory["weights"] + sum(v for k, v in plan.kv_cache.items() if k != "full_heads")


def rollout_fits(plan: Plan, gpu_mem_gib: float) -> Optional[str]:
    """None if the rollout's weights and cache fit a GPU, else by how much they do not."""
    total, budget = rollout_memory(plan), gpu_mem_gib * GiB
    if total <= budget:
        return None
    return (f"the rollout does not fit: weights {plan.memory['weights'] / GiB:.1f} GiB + KV cache "
            f"{(total - plan.memory['weights']) / GiB:.1f} GiB = {total / GiB:.1f} GiB per GPU, over the "
            f"{gpu_mem_gib:g} GiB of a GPU; set rl.rollout_cache_tokens (the cache tokens per rank; rows past it "
            f"wait or are recomputed) or spread the rows over more dp x cp ranks")


def search(cfg: Config, gpus: int, gpus_per_node: int, gpu_mem: float, micro_batch: int, seq: int,
           global_batch: Optional[int], limit: int = 10) -> list[tuple[Plan, dict]]:
    family, m = family_for(cfg)
    counts = family.count_params(m)
    sparse = counts["active"] < counts["total"]  # routed experts to spread over ep / etp
    found = []
    pow2 = [2 ** i for i in range(0, 12)]
    cps = [1, 2, 4, 8, 16]
    for tp, pp, ep, etp in itertools.product(pow2, pow2, pow2, [1, 2, 4, 8]):
        if tp > gpus_per_node or tp * pp > gpus or gpus % (tp * pp) or pp > m.num_layers:
            continue
        if not sparse and (ep > 1 or etp > 1):
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


def check_positions(cfg: Config, seq: int, key: str) -> None:
    """A sequence longer than the model's positions, refused as the training run refuses it (the
    layout's split rule is `ParallelConfig.sequence_divisor`, asked by plan_for and the run)."""
    positions = cfg.active_model.max_position_embeddings
    if seq > positions:
        raise ConfigError(key, f"{seq} exceeds the model's max_position_embeddings={positions}")


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
    from r1mega.train.setup import model_from_checkpoint

    # the model train.load holds when the config leaves it out, as the run (and --dry-run) would build it
    cfg = model_from_checkpoint(load_config(args.config, args.overrides))[0]
    if args.recompute is not None:
        cfg.train.recompute = args.recompute
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
    check_positions(cfg, args.seq_length, "--seq-length")
    plan = plan_for(cfg, world, args.micro_batch, args.seq_length, args.global_batch,
                    rollout_batch=args.rollout_batch, rollout_len=args.rollout_len)
    print_plan(plan, args.gpu_mem)
    overflow = fits(plan, args.gpu_mem) or (rollout_fits(plan, args.gpu_mem) if plan.kv_cache else None)
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
