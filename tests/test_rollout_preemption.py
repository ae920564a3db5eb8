"""Preemption under a cache budget (inference/continuous.py): a preempted row whose prompt blocks its
group still shares keeps them, and on re-admission recomputes only its own generated tokens (and at
most its prompt's partial last block) on top of them, never the whole prompt again. Same samples as
a run without a budget, fewer prefilled tokens, every block back, the budget held. Speculative rows
are preempted too (their drafts drawn again), pipelined PP segments preempt without draining, and
a budget below one row's need is refused up front."""
import pytest
import torch

from r1mega.inference.continuous import ContinuousBatcher, recompute_rounds, row_need_tokens
from r1mega.inference.generate import GenerationConfig, generate
from r1mega.kernels import batch_invariant
from spawn_cases import run_ranks  # ranks forked from the session's prepared server
from rl_workers import sharp_model
from rollout_workers import budget_layouts_worker, budgeted_rollout, long_tail_config, long_tail_rows

BS, NEW = 4, 14
# two prompt groups of 6 samples: 37 tokens (9 full blocks and a partial one) and 32 (8 full blocks)
PROMPTS = [list(range(3, 40))] * 6 + [list(range(50, 82))] * 6
KEYS = torch.arange(len(PROMPTS))


def _gen(**kw) -> GenerationConfig:
    return GenerationConfig(**{**dict(max_new_tokens=NEW, temperature=1.0, top_p=0.95, seed=3, block_size=BS,
                                      record_routing=True), **kw})


@pytest.fixture(scope="module")
def model():
    return sharp_model({}, 1)


class Watched(ContinuousBatcher):
    """The engine, watching the blocks in use after every allocation point of a step."""
    worst = 0

    def step_check(self):
        self.worst = max(self.worst, self.pool.used)

    def decode_forward(self, rows):
        out = super().decode_forward(rows)
        self.step_check()
        return out

    def start(self, new):
        super().start(new)
        self.step_check()

    def resume(self, rows, rounds):
        super().resume(rows, rounds)
        self.step_check()


def _engine(model, gen):
    chunks, ps = model
    e = Watched(chunks[0], ps, PROMPTS, KEYS.tolist(), gen)
    with torch.inference_mode():
        e.run()
    return e


def test_recompute_rounds_feed_every_token_once_in_uniform_chunks():
    assert recompute_rounds([]) == [] and recompute_rounds([0, 0]) == []
    assert recompute_rounds([5, 100, 37], chunk=16) == [5, 16, 16, 16, 16, 16, 15]
    for lengths in ([3], [1, 2, 3], [130, 7], [64, 64, 65]):
        rounds = recompute_rounds(lengths, chunk=64)
        for n in lengths:  # each row takes the rounds' sizes in order until its tokens are fed
            fed = 0
            for s in rounds:
                if fed < n:
                    fed += s
            assert fed == n, (lengths, rounds)


@pytest.mark.parametrize("budget", [120, 160, 200])
def test_a_preempted_row_recomputes_only_its_own_tokens(model, budget):
    chunks, ps = model
    loose = generate(chunks, ps, PROMPTS, _gen(), rows=KEYS)
    tight = generate(chunks, ps, PROMPTS, _gen(max_cache_tokens=budget), rows=KEYS)
    assert loose.preemptions == 0 and tight.preemptions > 0
    assert tight.completions() == loose.completions()  # the same samples, token for token
    torch.testing.assert_close(tight.logprobs, loose.logprobs, atol=2e-5, rtol=0)
    for layer in loose.routing:  # routing replay: each token's routing recorded once, when it was sampled
        assert torch.equal(tight.routing[layer], loose.routing[layer])
    # prefilled tokens: each prompt once, plus what preempted rows recompute
    assert loose.prefill_tokens == 37 + 32 and loose.recomputed_tokens == 0
    assert tight.prefill_tokens == loose.prefill_tokens + tight.recomputed_tokens
    # at most its generated tokens but the last (fed by its next step) and its prompt's partial block
    # (< BS); prefilling the prompt again cost at least 32 tokens a preemption
    assert 0 < tight.recomputed_tokens <= tight.preemptions * (NEW - 1 + BS - 1)
    assert tight.recomputed_tokens < tight.preemptions * 32


@pytest.mark.parametrize("budget", [120, 160])
def test_no_block_leaks_and_the_budget_holds(model, budget):
    e = _engine(model, _gen(max_cache_tokens=budget))
    assert e.preemptions > 0 and e.recomputed_tokens > 0
    assert e.pool.used == 0 and e.pool.refs[1:] == [0] * (e.pool.capacity - 1)  # every block back
    assert sorted(e.pool.free) == list(range(1, e.pool.capacity))
    assert all(not r.kept and r.tail is None for r in e.rows)
    assert e.worst * BS <= budget and e.pool.peak * BS <= budget, (e.worst, e.pool.peak)


def test_a_resumed_row_does_not_hide_its_groups_prefill_from_the_budget(model):
    """12 samples of a 7-token prompt, 5 places, a budget of 36 tokens: a preempted row is re-admitted
    on its kept block beside new samples of its group whose prompt blocks were released (prefilled
    again). The resumed row's admission must not count that prefill as done: it did (40 > 36)."""
    chunks, ps = model
    prompts, keys = [list(range(3, 10))] * 12, list(range(12))
    gen = _gen(max_new_tokens=30, max_cache_tokens=36, max_rows=5, seed=0)
    e = Watched(chunks[0], ps, prompts, keys, gen)
    with torch.inference_mode():
        e.run()
    assert e.preemptions > 0 and e.worst * BS <= 36 and e.pool.peak * BS <= 36, (e.worst, e.pool.peak)
    assert e.pool.used == 0
    loose = generate(chunks, ps, prompts, _gen(max_new_tokens=30, seed=0), rows=torch.tensor(keys))
    assert [r.out for r in e.rows] == loose.completions()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exact_mode_resumed_rows_keep_bitwise_logprobs(model, dtype):
    """rl.exact_rollouts' batch-invariant paths: a row recomputed in chunks of several tokens a row
    writes the cache its one-token decoding steps wrote, so even log-probs stay bitwise."""
    chunks, ps = model if dtype == torch.float32 else sharp_model({}, 1)
    chunks.to(dtype)
    with batch_invariant.exact_mode(True):
        loose = generate(chunks, ps, PROMPTS, _gen(), rows=KEYS)
        tight = generate(chunks, ps, PROMPTS, _gen(max_cache_tokens=120), rows=KEYS)
    assert tight.preemptions > 0 and tight.recomputed_tokens > 0
    assert torch.equal(tight.tokens, loose.tokens) and torch.equal(tight.logprobs, loose.logprobs)


def _budget_worker(rank: int, world: int, par: dict) -> dict:
    chunks, ps = sharp_model(par, world)
    d, n = ps.r("dp"), len(PROMPTS)
    lo, hi = [(0, n), (0, 5), (5, n)][ps.dp - 1 + d]  # DP2: other rows, other preemptions per rank
    r = generate(chunks, ps, PROMPTS[lo:hi], _gen(max_cache_tokens=80), rows=KEYS[lo:hi])
    return {"keys": KEYS[lo:hi].tolist(), "completions": r.completions(), "forwards": r.forwards,
            "recomputed": r.recomputed_tokens}


@pytest.mark.slow
@pytest.mark.parametrize("par, world", [(dict(pp=2), 2), (dict(tp=2, ep=2), 4), (dict(cp=2), 2)])
def test_layouts_resume_on_kept_blocks_and_draw_the_one_process_samples(model, par, world):
    """PP2 (stages keep the same blocks), TP2 x EP2 (DP ranks recompute different rows: the
    recompute forwards are agreed over the step group, empty ones where a rank has none) and CP2
    (each CP rank decodes, preempts and recomputes its own rows)."""
    chunks, ps = model
    one = dict(zip(KEYS.tolist(), generate(chunks, ps, PROMPTS, _gen(), rows=KEYS).completions()))
    per_rank = run_ranks(_budget_worker, world, par)
    for r in per_rank:
        assert r["completions"] == [one[k] for k in r["keys"]], par
    assert any(r["recomputed"] for r in per_rank)
    if par.get("ep"):
        assert len({r["forwards"] for r in per_rank}) == 1


def _family_stage(kind: str, folder: str):
    """A tiny random DeepSeek-V3.2 (sparse attention: the indexer's keys cached and selected) or
    Llama (per-head keys and values) model."""

    from r1mega.parallel.layout import single_process_state
    from rollout_engine_probe_workers import load, save_tiny
    from tiny_hf import save_peaked_v32

    if kind == "Llama":
        return load(save_tiny(folder, "Llama"))
    from r1mega.models.family import family_for_hf
    from r1mega.models.weights import load_hf_weights

    save_peaked_v32(folder)
    family, mcfg = family_for_hf(folder)
    ps = single_process_state()
    stage = family.build_stage(mcfg, ps)
    load_hf_weights(stage, folder)
    return stage, ps


@pytest.mark.parametrize("kind", ["DeepseekV32", "Llama"])
def test_other_families_recompute_on_kept_blocks(tmp_path, kind):
    stage, ps = _family_stage(kind, str(tmp_path / "hf"))
    loose = generate(stage, ps, PROMPTS, _gen(record_routing=False, top_p=1.0), rows=KEYS)
    for budget in (100, 160):
        tight = generate(stage, ps, PROMPTS, _gen(record_routing=False, top_p=1.0, max_cache_tokens=budget), rows=KEYS)
        assert tight.preemptions > 0 and 0 < tight.recomputed_tokens <= tight.preemptions * (NEW - 1 + BS - 1)
        assert tight.completions() == loose.completions(), (kind, budget)
        torch.testing.assert_close(tight.logprobs, loose.logprobs, atol=2e-5, rtol=0)


# ---- speculative rows and pipelined PP segments under a hard budget ------------------------------

LONG = dict(stop=None, eos_id=None)  # every long-tail row runs its 24 tokens: rows outgrow the budget
SPEC = dict(speculative="mtp", draft_tokens=2, **LONG)


def _same_rollout(got: dict, want: dict, what) -> None:
    assert got["completions"] == want["completions"], what
    torch.testing.assert_close(got["logprobs"], want["logprobs"], atol=2e-5, rtol=0)
    assert got["routing"] and set(got["routing"]) <= set(want["routing"])  # (a PP stage: its own layers)
    for layer in got["routing"]:  # routing replay: each kept token's routing, as without the budget
        assert torch.equal(got["routing"][layer], want["routing"][layer]), (what, layer)


@pytest.mark.parametrize("k, temperature", [(1, 1.0), (3, 1.0), (2, 0.0)])
def test_speculative_rows_are_preempted_within_the_budget_and_draw_the_same_samples(model, k, temperature):
    """Speculative decoding under max_cache_tokens: the budget counts each step's k draft positions
    and holds at its peak; rows outgrowing it are requeued and prefilled again, and one preempted with
    drafts draws the same drafts again, so tokens, log-probs, routing and even the accepted-draft count
    equal the unbudgeted run's."""
    chunks, ps = model
    kw = dict(SPEC, draft_tokens=k, temperature=temperature)
    loose = budgeted_rollout(chunks, ps, long_tail_config(**kw))
    least = max(row_need_tokens(len(p), 24, 4, k + 1) for p in long_tail_rows()[0])
    for budget in (least, 2 * least):
        tight = budgeted_rollout(chunks, ps, long_tail_config(max_cache_tokens=budget, **kw))
        assert loose["preemptions"] == 0 and tight["preemptions"] > 0, budget
        assert tight["peak"] <= budget < loose["peak"], (tight["peak"], budget, loose["peak"])
        _same_rollout(tight, loose, budget)
        assert tight["accepted"] == loose["accepted"] and tight["blocks_left"] == 0


def test_a_budget_below_one_rows_need_is_refused_before_any_forward(model):
    from r1mega.inference.speculative import SpeculativeBatcher

    chunks, ps = model
    prompts, keys = long_tail_rows()
    # an 8-token prompt + 24 tokens: its last step caches 30 and feeds 1 (+ 3 drafts), in blocks of 4
    for engine, kw, least in ((ContinuousBatcher, LONG, 32), (SpeculativeBatcher, dict(SPEC, draft_tokens=3), 36)):
        with pytest.raises(ValueError, match=r"max_cache_tokens \(GRPO: rl.rollout_cache_tokens\) = %d is below the "
                                             r"%d cache tokens" % (least - 4, least)):
            generate(chunks, ps, prompts, long_tail_config(max_cache_tokens=least - 4, **kw), rows=keys)
        engine(chunks[0], ps, prompts, keys.tolist(), long_tail_config(max_cache_tokens=least, **kw))  # taken


def _budget_layouts(chunks, ps, cases):
    per_rank = run_ranks(budget_layouts_worker, 2, cases)
    for i, (par, kw) in enumerate(cases):
        one = budgeted_rollout(chunks, ps, long_tail_config(**{**kw, "max_cache_tokens": 0}))
        for rank, got in enumerate(r[i] for r in per_rank):
            what = (par, kw.get("speculative"), rank)
            assert got["preemptions"] > 0 and got["peak"] <= kw["max_cache_tokens"] < one["peak"], (what, got["peak"])
            _same_rollout(got, one, what)
            if "pipelined_min_rows" in kw:  # drains to admit (or re-admit) rows only, not every round
                assert got["segments"] <= got["admissions"], (what, got["segments"], got["admissions"])


def test_pp2_preempts_inside_pipelined_segments_and_speculative_rows_hold_the_budget(model):
    """PP2 with groups in flight: rows outgrowing the budget are preempted between a group's sampling
    and its restart, so the pipeline drains only to admit rows (it used to drain every round), and
    each stage's cache stays within the budget; speculative rows likewise. Samples, log-probs and
    routing equal the one-process unbudgeted run's."""
    chunks, ps = model
    _budget_layouts(chunks, ps, [(dict(pp=2), dict(LONG, max_cache_tokens=48, pipelined_min_rows=1)),
                                 (dict(pp=2), dict(SPEC, max_cache_tokens=48))])


@pytest.mark.slow
def test_speculative_rows_hold_the_budget_on_tp2(model):
    chunks, ps = model
    _budget_layouts(chunks, ps, [(dict(tp=2), dict(SPEC, max_cache_tokens=48))])


def test_grpo_refuses_a_cache_budget_below_one_row_at_start():
    """rl.rollout_cache_tokens below what a row of the longest prompt needs at a response length the run
    reaches is named at start-up, before the model is built (the engine would refuse it at the first
    rollout); the least it takes is accepted."""
    from r1mega.errors import ConfigError
    from r1mega.rl.rollout import check_cache_budget

    class RL:
        rollout_cache_tokens, max_new_tokens, max_new_tokens_schedule = 64, 40, [[10, 100]]
        speculative, draft_tokens = None, 2

    check_cache_budget(RL, 24, steps=10)  # 24 + 39 tokens: 4 blocks of 16
    with pytest.raises(ConfigError, match=r"rl.rollout_cache_tokens.*\(rl.max_new_tokens_schedule\[0\]\) take 128"):
        check_cache_budget(RL, 24, steps=11)  # 24 + 98 cached and 1 fed: 8 blocks
    RL.speculative = "mtp"  # + 2 draft positions: a 5th block
    with pytest.raises(ConfigError, match=r"\(rl.max_new_tokens\) with 2 draft positions take 80"):
        check_cache_budget(RL, 24, steps=10)
    RL.rollout_cache_tokens = 0  # no limit
    check_cache_budget(RL, 24, steps=11)
