"""`--dry-run`: build the layout and print the plan without allocating weights or starting ranks,
so a 2048-GPU launch can be checked on a laptop."""
from __future__ import annotations

import math

from r1mega.config import Config, validate_training
from r1mega.models.family import family_of_config
from r1mega.parallel.layout import attention_dims, expert_dims
from r1mega.plan import check_positions, check_sizes, fits, plan_for, print_plan, rollout_fits


def group_summary(dims: list[tuple[str, int]], name: str, show: int = 8) -> tuple[int, int, list[int]]:
    """(number of `name` groups, their size, rank 0's group's first `show` ranks), as
    `parallel.layout.rank_groups` lays them out (dims fastest first), without listing every
    group: a dry run of any world size answers at once."""
    names = [n for n, _ in dims]
    at = names.index(name)
    size, stride = dims[at][1], math.prod(s for _, s in dims[:at])
    return math.prod(s for _, s in dims) // size, size, [k * stride for k in range(min(size, show))]


def grpo_shapes(cfg: Config) -> dict:
    """What a GRPO step runs, in the planner's terms: update rows as long as the longest response the run's
    steps allow (rl.max_new_tokens, its schedule; rl.pack_tokens when longer; prompts add their own tokens,
    unknown before they are read), prompts_per_step x group_size sequences per optimizer step, and a rollout
    of that times rl.minibatches sequences, each GPU's cache capped by the rollout scheduler's budgets."""
    rl, par = cfg.rl, cfg.parallel
    from r1mega.rl.rollout import response_limits

    response = max(n for _, n in response_limits(rl, cfg.train.steps))
    seq = max(response, rl.pack_tokens if rl.packed_update else 0)
    seq += (-seq) % par.sequence_divisor  # rows are padded to split over cp (x tp under SP), as GRPO pads them
    caps = [rl.rollout_max_rows * response] if rl.rollout_max_rows else []
    caps += [rl.rollout_cache_tokens] if rl.rollout_cache_tokens else []
    per_step = rl.prompts_per_step * rl.group_size
    return {"response": response, "seq": seq, "global_batch": per_step, "rollout_batch": per_step * rl.minibatches,
            "rollout_cap": min(caps) if caps else None}


def dry_run(cfg: Config, world: int, gpu_mem: float = 80.0, command: str = "pretrain") -> int:
    check_sizes(world=world, gpu_mem=gpu_mem)
    # the run's own rules (batch split, schedule, virtual stages, optimizer; no data files read), so a
    # plan is never printed for a launch the run refuses
    cfg = validate_training(cfg, world, needs_data=False, rollouts=command == "grpo")
    check_positions(cfg, cfg.data.seq_length, "data.seq_length")  # and the positions the real run refuses
    p = cfg.parallel
    m = cfg.active_model
    print(f"dry run: {world} ranks, model {m.num_layers} layers / {family_of_config(m).routed_experts(m)} experts")
    cp = [("cp", attention_dims(p))] if p.cp > 1 else []
    for name, dims in (("tp", attention_dims(p)), *cp, ("dp", attention_dims(p)), ("pp", attention_dims(p)),
                       ("ep", expert_dims(p)), ("etp", expert_dims(p)), ("edp", expert_dims(p))):
        count, size, first = group_summary(dims, name)
        print(f"  {name:<4} {count:>5} groups of {size:>4}; rank 0's: {first}" + (" ..." if size > 8 else ""))
    if command == "grpo":  # GRPO trains on its rollouts: data.seq_length and data.global_batch_size are not its shapes
        g = grpo_shapes(cfg)
        from r1mega.rl.rollout import check_responses_fit

        # the run's own rule, naming the key (rl.max_new_tokens or the schedule entry) that does not fit
        check_responses_fit(cfg.rl, 0, cfg.active_model.max_position_embeddings, cfg.train.steps)
        print(f"GRPO step: {g['global_batch']} sequences per optimizer step in rows of {g['seq']} tokens (the longest "
              f"response; prompts add theirs), a rollout of {g['rollout_batch']} sequences")
        plan = plan_for(cfg, world, cfg.data.micro_batch_size, g["seq"], g["global_batch"],
                        rollout_batch=g["rollout_batch"], rollout_len=g["response"], rollout_cap=g["rollout_cap"])
    else:
        plan = plan_for(cfg, world, cfg.data.micro_batch_size, cfg.data.seq_length, cfg.data.global_batch_size)
    print_plan(plan, gpu_mem)
    overflow = fits(plan, gpu_mem) or (rollout_fits(plan, gpu_mem) if plan.kv_cache else None)
    print(overflow or f"fits in {gpu_mem:g} GiB per GPU")
    return 1 if overflow else 0
