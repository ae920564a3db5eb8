"""DAPO dynamic sampling, pooled (r1mega/rl/rollout.py): replacement prompts drawn as a
pool sized from the observed informative fraction; the first informative groups in global pool
order fill the empty slots in slot order, whatever the layout (groups move between DP ranks)."""
import pytest

from dynamic_sampling_workers import is_informative, pooled_worker
from spawn_cases import run_ranks  # ranks forked from the session's prepared server
from r1mega.rl.rollout import pool_size, share


def expected_slots(seed, q, block, extra):
    """The rule, from the workload alone: informative slots keep their problem; the empty ones take,
    in order, the informative prompts of the pools (positions block.. block + extra - 1)."""
    empty = [s for s in range(block) if not is_informative(seed, s, q)]
    found = [p for p in range(block, block + extra) if is_informative(seed, p, q)]
    out = {s: s for s in range(block)}
    out.update(zip(empty, found))
    return out


def slot_by_slot(seed, q, block, max_draws):
    """The former rule: each extra draw re-draws the whole block (slot s's candidate in draw n at
    position n x block + s); draws continue until every slot has an informative candidate. (extra
    draws, extra prompts, slots left uninformative)."""
    n = 0
    while n < max_draws and not all(any(is_informative(seed, d * block + s, q) for d in range(n + 1))
                                    for s in range(block)):
        n += 1
    left = sum(1 for s in range(block) if not any(is_informative(seed, d * block + s, q) for d in range(n + 1)))
    return n, n * block, left


def test_pool_size_from_the_observed_fraction():
    assert pool_size(16, 16, 32, 1000) == 38  # (16 + sqrt(8)) / 0.5
    assert pool_size(1, 31, 32, 1000) == 2
    assert pool_size(10, 0, 32, 128) == 128  # nothing informative yet: as many as allowed
    assert pool_size(5, 32, 32, 1000) == 5  # everything informative so far
    assert [len(share(5, 2, d)) for d in range(2)] == [2, 3] and [len(share(1, 2, d)) for d in range(2)] == [0, 1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_process_and_dp2_keep_the_same_groups(seed):
    """2 minibatches of 8 prompts, groups of 2, q = 0.5: the slots' problems are the rule's, the
    same on one process and on two DP ranks (which exchange the groups they drew for each other:
    tokens, masks, routing and rewards travel whole, checked in the worker)."""
    args = (seed, 0.5, 8, 2, 2, 4)
    one = pooled_worker(0, 1, *args)
    dp2 = run_ranks(pooled_worker, 2, *args)
    assert one["slots"] == expected_slots(seed, 0.5, 16, int(one["counts"]["dynamic_extra_prompts"]))
    merged = {**dp2[0]["slots"], **dp2[1]["slots"]}
    assert merged == one["slots"]
    counts = [r["counts"] for r in dp2]
    assert counts[0] == counts[1]
    assert {k: v for k, v in counts[0].items() if k != "dynamic_moved_groups"} == \
        {k: v for k, v in one["counts"].items() if k != "dynamic_moved_groups"}
    assert one["counts"]["dynamic_moved_groups"] == 0
    if seed == 0:
        assert counts[0]["dynamic_moved_groups"] > 0  # the exchange ran
    assert [d[:3] for d in dp2[0]["draws"]] == [d[:3] for d in dp2[1]["draws"]] == [d[:3] for d in one["draws"]]


def test_fewer_extra_draws_than_slot_by_slot():
    """20 seeded steps of 32 slots, at most 4 extra draws, groups informative with probability q: the
    pool draws fewer rounds and fewer prompts and leaves fewer uninformative slots than the former
    slot-by-slot rule on the same workload."""
    block, steps = 32, 20
    table = {}
    for q in (0.5, 0.2):
        old = [slot_by_slot(seed, q, block, 4) for seed in range(steps)]
        new = [pooled_worker(0, 1, seed, q, block, 1, 2, 4)["counts"] for seed in range(steps)]
        table[q] = (sum(o[0] for o in old), sum(o[1] for o in old), sum(o[2] for o in old),
                    sum(c["dynamic_extra_draws"] for c in new), sum(c["dynamic_extra_prompts"] for c in new),
                    sum(c["dynamic_filled_groups"] for c in new))
        for c in new:
            assert c["dynamic_drawn_groups"] == block + c["dynamic_extra_prompts"]
    print("\nq: slot-by-slot (draws, prompts, uninformative) vs pooled (rounds, prompts, uninformative), 20 steps:",
          table)
    # q = 0.5: the slot rule makes 3.65 draws a step (117 prompts) and still trains 1.2 uninformative
    # groups; the pool 1.1 rounds (45 prompts, 1.40 rollouts' worth) and none
    assert table[0.5] == (73, 2336, 24, 22.0, 899.0, 0.0)
    # q = 0.2: both near the 4-rollout cap in prompts; 11 uninformative groups a step against 1.8
    assert table[0.2] == (80, 2560, 219, 22.0, 2530.0, 36.0)
    for q in table:
        o, n = table[q][:3], table[q][3:]
        assert n[0] <= o[0] and n[1] <= o[1] and n[2] < o[2]
    assert table[0.5][3] < table[0.5][0] / 3 and table[0.5][4] < table[0.5][1] / 2


GRPO = ["train.steps=2", "rl.group_size=4", "rl.prompts_per_step=4", "rl.max_new_tokens=6", "rl.dynamic_sampling=true",
        "rl.dynamic_sampling_max_draws=2", "data.micro_batch_size=4", "data.global_batch_size=16",
        "data.synthetic_docs=300", "rl.log_rollouts=0", "rl.kl_coef=0.0", "seed=3"]  # seed 3: DP2 moves groups
COUNTS = ("dynamic_extra_draws", "dynamic_extra_prompts", "dynamic_informative_groups", "dynamic_drawn_groups",
          "dynamic_filled_groups")


def _grpo(tmp_path, name, world, extra):
    from dynamic_sampling_workers import grpo_dynamic_worker

    overrides = [f"train.run_dir={tmp_path}/{name}", f"data.cache_dir={tmp_path}/data", *GRPO, *extra]
    return run_ranks(grpo_dynamic_worker, world, overrides) if world > 1 else [grpo_dynamic_worker(0, 1, overrides)]


@pytest.mark.slow
def test_grpo_trains_the_same_groups_on_one_process_dp2_tp2_ep2_and_pp2_dp2(tmp_path):
    """End to end: `grpo` with rl.dynamic_sampling on the demo config, a reward informative for a
    third of the problems: every step trains the same problems with the same rewards in the same
    slots, and logs the same counts, on one process, DP2, TP2 x EP2 and PP2 x DP2 (4 ranks each)."""
    runs = {"one": _grpo(tmp_path, "one", 1, []), "dp2": _grpo(tmp_path, "dp2", 2, []),
            "tp2ep2": _grpo(tmp_path, "tp2ep2", 4, ["parallel.tp=2", "parallel.ep=2", "parallel.etp=1"]),
            "pp2dp2": _grpo(tmp_path, "pp2dp2", 4, ["parallel.pp=2"])}
    chosen = {}
    for name, ranks in runs.items():
        steps = [{} for _ in ranks[0]["chosen"]]
        for r in ranks:
            for step, slots in enumerate(r["chosen"]):
                for slot, group in slots.items():
                    assert steps[step].setdefault(slot, group) == group, (name, step, slot)
        chosen[name] = steps
    for name in chosen:
        assert chosen[name] == chosen["one"], name
    rows = {name: ranks[0]["rows"] for name, ranks in runs.items()}
    for name in rows:
        assert [{k: r[k] for k in COUNTS} for r in rows[name]] == [{k: r[k] for k in COUNTS} for r in rows["one"]]
        for a, b in zip(rows[name], rows["one"]):
            assert a["reward"] == pytest.approx(b["reward"], abs=1e-9)
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    print("\ncounts per step:", [{k: r[k] for k in COUNTS + ("dynamic_moved_groups",)} for r in rows["dp2"]])
    assert any(r["dynamic_extra_draws"] > 0 for r in rows["one"])
    assert sum(r["dynamic_moved_groups"] for r in rows["dp2"]) > 0
    assert not any(r["dynamic_moved_groups"] for r in rows["one"])
    assert all(sum(1 for g in step.values() if len(set(g[1])) > 1) >= 1 for step in chosen["one"])


def test_a_resumed_grpo_run_draws_what_an_unbroken_one_draws(tmp_path):
    """Pools move the prompt position by the prompts they drew (saved with each checkpoint) and key
    their rows past the rollout's: a run stopped after step 2 and resumed logs step 3 exactly as a run
    of 3 steps does (same pools, problems, rewards and loss)."""
    steady = ["optim.decay=constant", "optim.warmup_steps=0", "train.save_interval=1"]
    unbroken = _grpo(tmp_path, "unbroken", 1, ["train.steps=3", *steady])[0]
    _grpo(tmp_path, "broken", 1, ["train.steps=2", *steady])
    resumed = _grpo(tmp_path, "broken", 1, ["train.steps=3", *steady])[0]
    assert len(unbroken["rows"]) == 3 and [r["step"] for r in resumed["rows"]] == [1, 2, 3]
    assert resumed["chosen"] == unbroken["chosen"][2:]  # the resumed process ran step 3 only
    a, b = unbroken["rows"][2], resumed["rows"][2]
    assert {k: a[k] for k in COUNTS} == {k: b[k] for k in COUNTS} and a["dynamic_extra_prompts"] > 0
    for key in ("reward", "loss", "response_len", "grad_norm"):
        assert a[key] == b[key], key
