"""`--dry-run`: build the layout and print the plan without allocating weights or starting ranks,
so a 2048-GPU launch can be checked on a laptop."""
from __future__ import annotations

import math

from r1mega.config import Config, validate_training
from r1mega.models.family import family_of_config
from r1mega.parallel.layout import attention_dims, expert_dims
from r1mega.plan import check_positions, check_sizes, fits, plan_for, print_plan


def group_summary(dims: list[tuple[str, int]], name: str, show: int = 8) -> tuple[int, int, list[int]]:
    """(number of `name` groups, their size, rank 0's group's first `show` ranks), as
    `parallel.layout.rank_groups` lays them out (dims fastest first), without listing every
    group: a dry run of any world size answers at once."""
    names = [n for n, _ in dims]
    at = names.index(name)
    size, stride = dims[at][1], math.prod(s for _, s in dims[:at])
    return math.prod(s for _, s in dims) // size, size, [k * stride for k in range(min(size, show))]


def dry_run(cfg: Config, world: int, gpu_mem: float = 80.0) -> int:
    check_sizes(world=world, gpu_mem=gpu_mem)
    # the run's own rules (batch split, schedule, virtual stages, optimizer; no data files read), so a
    # plan is never printed for a launch the run refuses
    cfg = validate_training(cfg, world, needs_data=False)
    check_positions(cfg, cfg.data.seq_length, "data.seq_length")  # and the positions the real run refuses
    p = cfg.parallel
    m = cfg.active_model
    print(f"dry run: {world} ranks, model {m.num_layers} layers / {family_of_config(m).routed_experts(m)} experts")
    cp = [("cp", attention_dims(p))] if p.cp > 1 else []
    for name, dims in (("tp", attention_dims(p)), *cp, ("dp", attention_dims(p)), ("pp", attention_dims(p)),
                       ("ep", expert_dims(p)), ("etp", expert_dims(p)), ("edp", expert_dims(p))):
        count, size, first = group_summary(dims, name)
        print(f"  {name:<4} {count:>5} groups of {size:>4}; rank 0's: {first}" + (" ..." if size > 8 else ""))
    plan = plan_for(cfg, world, cfg.data.micro_batch_size, cfg.data.seq_length, cfg.data.global_batch_size)
    print_plan(plan, gpu_mem)
    overflow = fits(plan, gpu_mem)
    print(overflow or f"fits in {gpu_mem:g} GiB per GPU")
    return 1 if overflow else 0
