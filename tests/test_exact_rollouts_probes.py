"""Hostile probes of rl.exact_rollouts (issue 26): settings beyond the feature's own tests, each
asserting the sampler's log-probs are bitwise the trainer's (gap 0, first ratios and TIS weights 1)."""
import os

import pytest
import torch

from exact_probe_workers import ROOT, leak_worker, long_prompt_worker, varied_reward_worker
from r1mega.config import load_config, validate, validate_rl
from r1mega.errors import ConfigError
from r1mega.inference.generate import GenerationConfig, generate
from r1mega.kernels import batch_invariant
from spawn_cases import run_ranks  # ranks forked from the session's prepared server
from rl_workers import exact_grpo_worker, sharp_model

ROWS9 = ["rl.group_size=3", "rl.prompts_per_step=3", "data.micro_batch_size=9", "data.global_batch_size=9"]


def _overrides(tmp_path, extra):
    return [f"train.run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/data", "train.steps=2",
            "rl.exact_rollouts=true", "data.synthetic_docs=300", "rl.kl_coef=0.0", *extra]


def _assert_exact(per_rank):
    rows = per_rank[0]["rows"]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["logprob_gap_max"] == 0.0 and r["logprob_gap_mean"] == 0.0 and r["sampler_kl"] == 0.0, r
        assert r["clip_frac"] == 0.0 and r["response_len"] > 0, r
    calls = [o["calls"][0] for o in per_rank if o["calls"]]  # the loss runs on the last pipeline stage
    assert calls
    for first in calls:
        assert first["ratio"].numel() > 0 and bool((first["ratio"] == 1).all()), first["ratio"]
        if first["tis"] is not None:
            assert bool((first["tis"] == 1).all()), first["tis"]


SINGLE = {
    # responses over several 32-key attention blocks and 16-token cache blocks, 9 rows
    "long_responses": ["rl.max_new_tokens=70", *ROWS9],
    "long_context_130_tokens": ["data.seq_length=160", "rl.max_new_tokens=130", "rl.group_size=2",
                                "rl.prompts_per_step=3", "data.micro_batch_size=6", "data.global_batch_size=6"],
    "bf16_odd_rows_15": ["train.dtype=bfloat16", "rl.max_new_tokens=40", "rl.group_size=5", "rl.prompts_per_step=3",
                         "data.micro_batch_size=15", "data.global_batch_size=15"],
    # several documents per packed row / one document over a whole row
    "pack_small_rows": ["rl.max_new_tokens=40", "rl.pack_tokens=48", "rl.group_size=4", "rl.prompts_per_step=3",
                        "data.micro_batch_size=12", "data.global_batch_size=12"],
    "bf16_pack_large_rows": ["train.dtype=bfloat16", "rl.pack_tokens=300", "rl.max_new_tokens=33", "rl.group_size=4",
                             "rl.prompts_per_step=4", "data.micro_batch_size=16", "data.global_batch_size=16"],
    "unpacked_update": ["rl.packed_update=false", "rl.max_new_tokens=33", *ROWS9],
    "micro_batch_4_of_12_two_updates": ["rl.max_new_tokens=20", "rl.group_size=4", "rl.prompts_per_step=3",
                                        "data.micro_batch_size=4", "data.global_batch_size=12",
                                        "rl.updates_per_rollout=2"],
    "speculative_mtp_3_drafts": ["rl.speculative=mtp", "rl.draft_tokens=3", "rl.max_new_tokens=40", *ROWS9],
    "bf16_speculative_mtp": ["train.dtype=bfloat16", "rl.speculative=mtp", "rl.draft_tokens=2",
                             "rl.max_new_tokens=37", *ROWS9],
    "dynamic_sampling": ["rl.dynamic_sampling=true", "rl.max_new_tokens=20", "rl.group_size=4", "rl.prompts_per_step=3",
                         "data.micro_batch_size=12", "data.global_batch_size=12"],
    # hidden 40 (not a multiple of 16), plain q_proj, no dense layer, 2 shared experts, top-4
    "odd_model_top4": ["model.hidden_size=40", "model.q_lora_rank=null", "model.first_k_dense_replace=0",
                       "model.n_shared_experts=2", "model.num_experts_per_tok=4", "rl.max_new_tokens=35", *ROWS9],
    "bf16_odd_model_top1_no_shared": ["train.dtype=bfloat16", "model.hidden_size=40", "model.q_lora_rank=null",
                                      "model.n_shared_experts=0", "model.num_experts_per_tok=1", "model.topk_group=2",
                                      "rl.max_new_tokens=35", *ROWS9],
    "recompute_full": ["train.recompute=full", "rl.max_new_tokens=35", *ROWS9],
    "bf16_recompute_selective": ["train.dtype=bfloat16", "train.recompute=selective", "rl.max_new_tokens=35", *ROWS9],
    "top_p_top_k": ["rl.top_p=0.9", "rl.top_k=20", "rl.temperature=0.7", "rl.max_new_tokens=35", *ROWS9],
    "entropy_bonus_two_minibatches": ["rl.entropy_coef=0.01", "rl.minibatches=2", "rl.max_new_tokens=35", *ROWS9],
    "kl_unbiased_opsm": ["rl.kl_coef=0.05", "rl.unbiased_kl=true", "rl.opsm_delta=0.5", "rl.max_new_tokens=35", *ROWS9],
    # the sampler's top-p/top-k support kept in training: the rollout log-prob is moved into the
    # truncated distribution; that shift must not break bitwise equality
    "keep_sampling_mask_tis": ["rl.keep_sampling_mask=true", "rl.top_p=0.8", "rl.top_k=30", "rl.tis=true",
                               "rl.max_new_tokens=35", *ROWS9],
    "bf16_keep_sampling_mask": ["train.dtype=bfloat16", "rl.keep_sampling_mask=true", "rl.top_p=0.8",
                                "rl.max_new_tokens=35", *ROWS9],
}


@pytest.mark.parametrize("name", list(SINGLE))
def test_exact_one_process(tmp_path, name):
    out = exact_grpo_worker(0, 1, _overrides(tmp_path, SINGLE[name]))
    _assert_exact([out])
    assert out["accuracy_before"] is None  # eval_problems=0 scored no held-out sums (it scored all 30 before)


BASE = ["rl.max_new_tokens=37", *ROWS9]
ROWS12 = ["rl.max_new_tokens=37", "rl.group_size=3", "rl.prompts_per_step=4",
          "data.micro_batch_size=6", "data.global_batch_size=12"]
LAYOUTS = {
    "tp2": ["parallel.tp=2", *BASE],
    "bf16_tp2_sp": ["parallel.tp=2", "parallel.sp=true", "train.dtype=bfloat16", *BASE],
    "ep2": ["parallel.ep=2", "parallel.etp=1", *ROWS12],
    "bf16_dp2": ["train.dtype=bfloat16", "rl.max_new_tokens=37", "rl.group_size=3", "rl.prompts_per_step=4",
                 "data.micro_batch_size=3", "data.global_batch_size=12"],
    "pp2_odd_model": ["parallel.pp=2", "model.hidden_size=40", "model.q_lora_rank=null", "model.n_shared_experts=2",
                      "model.num_experts_per_tok=4", *BASE],
    "tp2_speculative": ["parallel.tp=2", "rl.speculative=mtp", "rl.draft_tokens=2", *BASE],
    "bf16_ep2_top1_packed": ["parallel.ep=2", "parallel.etp=1", "train.dtype=bfloat16", "model.hidden_size=40",
                             "model.num_experts_per_tok=1", "model.topk_group=2", "model.first_k_dense_replace=0",
                             "rl.pack_tokens=50", *ROWS12],
    "tp2_keep_sampling_mask": ["parallel.tp=2", "rl.keep_sampling_mask=true", "rl.top_p=0.8", "rl.tis=true", *BASE],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_exact_two_ranks(two_rank_runs, name):
    _assert_exact(two_rank_runs[f"layout {name}"])


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    """Every two-rank case of this file in one spawn (each in its own run directory), by name."""
    from spawn_cases import run_cases

    root = tmp_path_factory.mktemp("exact_probes_two_ranks")
    cases = {f"layout {name}": (exact_grpo_worker, [LAYOUTS[name]]) for name in LAYOUTS}
    cases.update({f"long prompts {' '.join(extra)}": (long_prompt_worker, [[*LONG_PROMPTS, *extra]])
                  for extra in LONG_PROMPTS_TWO_RANKS})
    cases.update({f"updating {' '.join(extra)}": (varied_reward_worker, [[*UPDATING, *extra]])
                  for extra in UPDATING_TWO_RANKS})
    return run_cases(2, {name: (fn, (_overrides(root / f"case{i}", extra),))
                         for i, (name, (fn, [extra])) in enumerate(cases.items())})


LONG_PROMPTS = ["data.seq_length=256", "rl.max_new_tokens=40", "rl.group_size=2", "rl.prompts_per_step=6",
                "data.micro_batch_size=12", "data.global_batch_size=12"]


LONG_PROMPTS_TWO_RANKS = [["parallel.tp=2", "parallel.ep=2", "parallel.etp=1", "train.dtype=bfloat16"]]


@pytest.mark.slow
@pytest.mark.parametrize("world, extra", [
    (1, ["rl.pack_tokens=200"]),  # prompts of 3..100 tokens, several documents per packed row
    (1, ["train.dtype=bfloat16", "rl.speculative=mtp", "rl.draft_tokens=2"]),
    *[(2, extra) for extra in LONG_PROMPTS_TWO_RANKS],
])
def test_exact_with_prompts_of_very_different_lengths(tmp_path, request, world, extra):
    if world > 1:
        _assert_exact(request.getfixturevalue("two_rank_runs")[f"long prompts {' '.join(extra)}"])
    else:
        _assert_exact([long_prompt_worker(0, 1, _overrides(tmp_path, [*LONG_PROMPTS, *extra]))])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_engine_logprobs_independent_of_batching(dtype):
    """In the mode, a row's tokens and log-probs do not depend on the rows beside it, on how many
    decode at once, on the cache block size or the cache budget (prompts of 2..70 tokens)."""
    chunks, ps = sharp_model({}, 1)
    chunks.to(dtype)
    prompts = [[(7 * i + 3) % 120 + 1 for i in range(n)] for n in (45, 2, 70, 33, 17)]

    def run(ids, rows, **kw):
        with batch_invariant.exact_mode(True):
            r = generate(chunks, ps, ids, GenerationConfig(max_new_tokens=40, temperature=1.0, seed=3, **kw),
                         rows=torch.tensor(rows))
        return [(r.tokens[i][r.completion_mask[i]], r.logprobs[i][r.completion_mask[i]]) for i in range(len(ids))]

    ref = run(prompts, list(range(5)))
    others = [run(prompts, list(range(5)), **kw) for kw in
              ({"max_rows": 2}, {"max_rows": 1, "block_size": 4}, {"block_size": 32}, {"max_cache_tokens": 120})]
    others += [[run([p], [i])[0] for i, p in enumerate(prompts)]]
    for other in others:
        for (t0, l0), (t1, l1) in zip(ref, other):
            assert torch.equal(t0, t1) and torch.equal(l0, l1)
    assert not batch_invariant.enabled()


UPDATING = ["train.steps=3", "rl.kl_coef=0.01", "rl.max_new_tokens=30", "rl.group_size=4", "rl.prompts_per_step=3",
            "data.global_batch_size=12", "rl.updates_per_rollout=2", "optim.lr=0.01", "optim.warmup_steps=0"]


UPDATING_TWO_RANKS = [["data.micro_batch_size=2", "parallel.tp=2", "parallel.ep=2", "parallel.etp=1",
                       "train.dtype=bfloat16"],
                      ["data.micro_batch_size=4", "parallel.pp=2"]]


@pytest.mark.parametrize("world, extra", [
    (1, ["data.micro_batch_size=4"]),
    *[pytest.param(2, extra, marks=pytest.mark.slow) for extra in UPDATING_TWO_RANKS],
])
def test_exact_after_real_updates(tmp_path, request, world, extra):
    """Rewards that differ within groups, so the weights move; a rollout serves two steps
    (updates_per_rollout=2): the second rollout, sampled from updated weights, is still bitwise
    the trainer's."""
    if world > 1:
        per_rank = request.getfixturevalue("two_rank_runs")[f"updating {' '.join(extra)}"]
    else:
        per_rank = [varied_reward_worker(0, 1, _overrides(tmp_path, [*UPDATING, *extra]))]
    rows = per_rank[0]["rows"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["logprob_gap_max"] == 0.0 and r["sampler_kl"] == 0.0, r
        assert r["zero_advantage_frac"] < 1 and r["grad_norm"] > 0, r
    for o in per_rank:  # steps 1 and 3 sample (every loss call before the update: ratio 1), step 2 reuses
        if o["calls"]:
            n = len(o["calls"]) // 3
            for c in o["calls"][:n] + o["calls"][2 * n:]:
                assert bool((c["ratio"] == 1).all()) and (c["tis"] is None or bool((c["tis"] == 1).all()))
            assert any(bool((c["ratio"] != 1).any()) for c in o["calls"][n:2 * n])  # the weights did move


TWO_THREAD_MODELS = [
    ["model.hidden_size=512", "model.intermediate_size=1024", "model.moe_intermediate_size=256",
     "model.q_lora_rank=128", "model.kv_lora_rank=64"],  # a 1024-wide dense FFN (linears)
    ["model.hidden_size=256", "model.intermediate_size=256", "model.moe_intermediate_size=1024",
     "model.q_lora_rank=64", "model.kv_lora_rank=32"],  # 1024-wide experts (grouped GEMMs)
]


@pytest.mark.slow
@pytest.mark.parametrize("model", TWO_THREAD_MODELS)
def test_exact_with_two_intra_op_threads(tmp_path, model):
    """Two intra-op threads: fp32 GEMMs with K >= 1024 change bits with M at multiples of 16 and
    with the thread count (found: gap 9.5e-7 before the sampler kept the trainer's thread count and
    fp32 linears / expert GEMMs took fixed-size calls under several threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = exact_grpo_worker(0, 1, _overrides(tmp_path, [
            *model, "rl.max_new_tokens=24", "rl.group_size=4", "rl.prompts_per_step=4",
            "data.micro_batch_size=16", "data.global_batch_size=16"]))
    finally:
        torch.set_num_threads(threads)
    _assert_exact([out])


def test_mode_does_not_leak_into_a_later_default_run(tmp_path):
    """An exact run, then a default one in the same process: the default one is bitwise the same
    run in a fresh process (metrics, including the default path's non-zero log-prob gap)."""
    default = [f"train.run_dir={tmp_path}/default", f"data.cache_dir={tmp_path}/data", "train.steps=2",
               "data.synthetic_docs=300", "rl.max_new_tokens=20", "rl.kl_coef=0.01", *ROWS9]
    exact = _overrides(tmp_path / "exact", ["rl.max_new_tokens=20", *ROWS9])
    after = run_ranks(leak_worker, 1, exact, default)[0]
    fresh = run_ranks(leak_worker, 1, [], [o.replace("/default", "/fresh") for o in default])[0]
    assert after["mode_after_exact"] is False
    assert after["rows"] == fresh["rows"]
    assert any(r["logprob_gap_max"] > 0 for r in fresh["rows"])  # the default path really ran


@pytest.mark.parametrize("override, world", [("train.fp8=blockwise", 1), ("parallel.cp=2", 2),
                                             ("model.scoring_func=softmax", 1)])
def test_refusals_name_the_key(override, world):
    cfg = load_config(os.path.join(ROOT, "configs", "tiny", "r1_zero_demo.yaml"), ["rl.exact_rollouts=true", override])
    with pytest.raises(ConfigError, match="rl.exact_rollouts"):
        validate_rl(validate(cfg, world), world)


@pytest.mark.slow
def test_thread_count_changed_between_rollout_and_update_is_set_back(tmp_path, monkeypatch):
    """Something changes the intra-op thread count after each rollout (1 -> 2): the mode sets it back
    on entering the old log-probs, with a warning naming both counts, and the gap stays 0. Without
    that (hold_threads a no-op) the same run's trainer takes 2-thread kernels and the gap is not 0."""
    import r1mega.rl.grpo as grpo_module
    rollout = grpo_module.rollout

    def rollout_then_change_threads(*args, **kwargs):
        out = rollout(*args, **kwargs)
        torch.set_num_threads(2)
        return out

    monkeypatch.setattr(grpo_module, "rollout", rollout_then_change_threads)
    threads = torch.get_num_threads()

    def overrides(run: str) -> list[str]:
        return _overrides(tmp_path / run, [*TWO_THREAD_MODELS[0], "rl.max_new_tokens=24", *ROWS9])

    torch.set_num_threads(1)
    try:
        with pytest.warns(RuntimeWarning, match="thread count changed from 1 to 2 before the old log-probs"):
            held = exact_grpo_worker(0, 1, overrides("held"))
        assert torch.get_num_threads() == 1
        _assert_exact([held])
        torch.set_num_threads(1)
        monkeypatch.setattr(batch_invariant, "hold_threads", lambda phase: None)
        unheld = exact_grpo_worker(0, 1, overrides("unheld"))
    finally:
        torch.set_num_threads(threads)
    # where the CPU's 2-thread fp32 kernels give other bits than its 1-thread ones (so on the CPU these
    # probes were written on), the unheld run shows a gap: the hold is needed. On an AMD EPYC (AVX-512)
    # this model's GEMMs gave the same bits at both counts, and the unheld run no gap.
    two_threads_differ = _two_thread_gemms_differ()
    assert any(r["logprob_gap_max"] > 0 for r in unheld["rows"]) or not two_threads_differ


def _two_thread_gemms_differ() -> bool:
    """Whether fp32 GEMMs of this model's widths give other bits at 2 intra-op threads than at 1."""
    before = torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(96, 64, generator=g), torch.randn(128, 64, generator=g)
    try:
        torch.set_num_threads(1)
        one = x @ w.t()
        torch.set_num_threads(2)
        two = x @ w.t()
    finally:
        torch.set_num_threads(before)
    return not torch.equal(one, two)
