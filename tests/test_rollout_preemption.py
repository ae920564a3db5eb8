"""Preemption under a cache budget (inference/continuous.py): a preempted row whose prompt blocks its
group still shares keeps them, and on re-admission recomputes only its own generated tokens (and at
most its prompt's partial last block) on top of them, never the whole prompt again. Same samples as
a run without a budget, fewer prefilled tokens, every block back, the budget held."""
import pytest
import torch

from r1mega.inference.continuous import ContinuousBatcher, recompute_rounds
from r1mega.inference.generate import GenerationConfig, generate
from r1mega.kernels import batch_invariant
from r1mega.parallel.spawn import run_ranks
from rl_workers import sharp_model

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
