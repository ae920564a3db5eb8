"""The rollout engine (continuous batching over a paged cache, inference/continuous.py): the same
samples as the static engine in float32, whatever the slot, admission step or batch around a row;
the same samples on TP2 x EP2 and PP2 as in one process; cache memory that follows the tokens; a
prompt prefilled once for its samples; `r1mega generate` resumes to the uninterrupted samples under
any --problems-per-round."""
import os

import pytest
import torch

from r1mega.inference.generate import GenerationConfig, generate, generate_static
from rl_workers import sharp_model
from rollout_workers import layout_samples_worker, long_tail_config, long_tail_rows


@pytest.fixture(scope="module")
def model():
    return sharp_model({}, 1)


def _real_routing(r):
    """[width, B] True where a forward routed a real token (prompt or fed completion token)."""
    width = r.tokens.shape[1] - 1
    real = torch.zeros(width, r.tokens.shape[0], dtype=torch.bool)
    for i in range(r.tokens.shape[0]):
        real[int(r.pad[i]):r.prompt_len + int(r.completion_mask[i].sum()) - 1, i] = True
    return real


@pytest.mark.parametrize("max_rows", [0, 4])  # all rows at once; four at a time, refilled as rows end
def test_continuous_equals_static_engine_in_float32(model, max_rows):
    chunks, ps = model
    prompts, keys = long_tail_rows()
    gen = long_tail_config(max_rows=max_rows)
    new = generate(chunks, ps, prompts, gen, rows=keys)
    old = generate_static(chunks, ps, prompts, gen, rows=keys)
    assert torch.equal(new.tokens, old.tokens) and torch.equal(new.completion_mask, old.completion_mask)
    torch.testing.assert_close(new.logprobs, old.logprobs, atol=1e-5, rtol=0)
    lengths = new.completion_mask.sum(1)
    assert lengths.min() < lengths.max() - 4, "the workload must be long-tailed"
    real = _real_routing(old)
    assert set(new.routing) == set(old.routing) and new.routing
    for layer in new.routing:  # routing replay lines up token for token
        assert new.routing[layer].shape == old.routing[layer].shape
        assert torch.equal(new.routing[layer][real], old.routing[layer][real])
    # finished rows cost nothing: decoding fed only live rows
    assert new.decode_row_steps == int((lengths - 1).sum()) < old.decode_row_steps
    greedy = GenerationConfig(max_new_tokens=6, temperature=0.0, block_size=4, max_rows=max_rows)
    assert torch.equal(generate(chunks, ps, prompts, greedy).tokens, generate_static(chunks, ps, prompts, greedy).tokens)


def test_a_sample_depends_on_its_key_not_its_slot_or_batch(model):
    chunks, ps = model
    prompts, keys = long_tail_rows()
    whole = generate(chunks, ps, prompts, long_tail_config(), rows=keys).completions()
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(1))[:7]
    part = generate(chunks, ps, [prompts[i] for i in order], long_tail_config(max_rows=2),
                    rows=keys[order]).completions()
    assert part == [whole[i] for i in order]


@pytest.mark.parametrize("kw", [dict(max_new_tokens=0), dict(block_size=0), dict(draft_tokens=0),
                                dict(max_rows=-1), dict(max_cache_tokens=-5), dict(max_new_tokens=2.5)])
def test_a_generation_config_that_cannot_run_is_refused_by_name(model, kw):
    """max_new_tokens=0 drew one token a row anyway (the first comes from the prompt's logits)."""
    with pytest.raises(ValueError, match=f"GenerationConfig.{next(iter(kw))} must be"):
        GenerationConfig(**kw)
    with pytest.raises(ValueError, match="no prompts"):
        generate_static(*model, [], GenerationConfig())


def test_cache_follows_the_tokens_and_a_prompt_is_prefilled_once(model):
    chunks, ps = model
    prompt = list(range(3, 40))  # 37 tokens: 9 full blocks of 4 and a partial one
    gen = GenerationConfig(max_new_tokens=40, temperature=1.0, seed=2, eos_id=2, block_size=4,
                           stop=lambda ids: ids[-1] % 5 == 0)
    shared = generate(chunks, ps, [prompt] * 8, gen)
    static = generate_static(chunks, ps, [prompt] * 8, gen)
    assert torch.equal(shared.tokens, static.tokens)
    lengths = shared.completion_mask.sum(1)
    block, layers, fp32 = 4, 4, 4
    block_bytes = block * layers * shared.cache_values_per_token_layer * fp32
    # at most: the prompt's blocks once, plus each sample's own blocks (its copy of the partial one and its tokens)
    bound = (-(-37 // 4)) + sum(-(-(37 % 4 + int(n)) // 4) for n in lengths)
    assert shared.cache_bytes <= bound * block_bytes
    assert shared.cache_bytes < 8 * 10 * block_bytes  # less than 8 copies of the prompt alone
    assert static.cache_bytes == 8 * (37 + 40) * layers * shared.cache_values_per_token_layer * fp32
    # one prefill forward for the 8 samples, then one decoding forward per step
    assert shared.forwards == 1 + int(lengths.max()) - 1


@pytest.fixture(scope="module")
def layout_runs(request):
    """The selected layout cases of both tests below: one spawn per world size. {node name: per rank}."""
    from spawn_cases import run_selected

    return run_selected(request, {
        "test_tp2_ep2_pp2_and_cp2_draw_the_one_process_samples":
            lambda p: (p["world"], layout_samples_worker, (p["par"],)),
        "test_pp2_keeps_groups_in_flight_and_draws_the_one_process_samples":
            lambda p: (p["world"], layout_samples_worker, (p["par"], p["gen_kw"])),
    })


@pytest.mark.parametrize("par, world", [(dict(tp=2, ep=2), 4), (dict(pp=2), 2), (dict(cp=2), 2)])
def test_tp2_ep2_pp2_and_cp2_draw_the_one_process_samples(request, layout_runs, model, par, world):
    """CP2: each CP rank decodes a contiguous half of the rows; both end with all of them."""
    chunks, ps = model
    prompts, keys = long_tail_rows()
    one = generate(chunks, ps, prompts, long_tail_config(), rows=keys)
    want = one.completions()
    per_rank = layout_runs[request.node.name]
    got = {}
    for r in per_rank:
        for k, c in zip(r["keys"].tolist(), r["completions"]):
            assert got.setdefault(k, c) == c, (par, k)
    assert [got[k] for k in range(len(prompts))] == want, par
    if par.get("ep") or par.get("cp"):  # the ranks ran the same forwards though their rows differ
        assert len({r["forwards"] for r in per_rank}) == 1
    if par.get("cp"):
        # each CP rank decodes a contiguous share of the rows, so a prompt's samples (adjacent rows)
        # are prefilled once on one rank, or once on each of two where the share boundary cuts a group
        longest = max(len(p) for p in prompts)
        assert sum(r["prefill_tokens"] for r in per_rank) <= one.prefill_tokens + (par["cp"] - 1) * longest
        for r in per_rank:
            torch.testing.assert_close(r["logprobs"], one.logprobs[one.completion_mask], atol=1e-5, rtol=0)
            for layer, experts in one.routing.items():
                assert torch.equal(r["routing"][layer], experts)


def test_rows_outgrowing_the_cache_budget_are_preempted_and_draw_the_same_samples(model):
    """max_cache_tokens: the youngest rows are requeued (tokens kept) and recomputed when there is
    room; the samples equal a run without a budget, and the cache never holds more than the budget
    plus one block per row."""
    chunks, ps = model
    prompts, keys = long_tail_rows()
    long = dict(stop=None, eos_id=None)  # every row 24 tokens: admitted rows outgrow the budget
    loose = generate(chunks, ps, prompts, long_tail_config(**long), rows=keys)
    budget = 48  # tokens: 12 blocks of 4
    tight = generate(chunks, ps, prompts, long_tail_config(max_cache_tokens=budget, **long), rows=keys)
    assert loose.preemptions == 0 and tight.preemptions > 0
    assert tight.completions() == loose.completions()
    torch.testing.assert_close(tight.logprobs, loose.logprobs, atol=1e-5, rtol=0)
    real = _real_routing(loose)
    for layer in loose.routing:  # the sampler's routing, recorded once per token
        assert torch.equal(tight.routing[layer][real], loose.routing[layer][real])
    block, layers, fp32 = 4, 4, 4
    block_bytes = block * layers * loose.cache_values_per_token_layer * fp32
    assert loose.cache_bytes > 3 * budget // 4 * block_bytes
    assert tight.cache_bytes <= (budget // 4 + len(prompts)) * block_bytes


def test_admission_counts_a_shared_prompt_once_per_group(model):
    """8 samples of a 37-token prompt under a budget of 72 tokens: the prompt (prefilled once) and a
    block per sample fit (37 + 8 x 4), so all 8 start at once: one prefill, then one forward a step."""
    chunks, ps = model
    gen = GenerationConfig(max_new_tokens=3, temperature=1.0, seed=2, block_size=4, max_cache_tokens=72)
    r = generate(chunks, ps, [list(range(3, 40))] * 8, gen)
    assert r.forwards == 3 and r.preemptions == 0 and r.completion_mask.sum() == 24


@pytest.mark.parametrize("par, world, gen_kw", [
    (dict(pp=2), 2, dict(temperature=0.0, pipelined_min_rows=1)),  # greedy
    (dict(pp=2), 2, dict(max_rows=4, pipelined_min_rows=1)),  # refills: the pipeline drains for each admission
    (dict(pp=2), 2, dict(pipelined_min_rows=4)),  # two groups, regrouped into one as rows end
    (dict(pp=2, ep=2), 4, dict(max_rows=5, pipelined_min_rows=1)),  # DP peers with different rows join in
    (dict(pp=2), 2, dict(max_cache_tokens=48, stop=None, eos_id=None, pipelined_min_rows=1)),  # preemption
])
def test_pp2_keeps_groups_in_flight_and_draws_the_one_process_samples(request, layout_runs, model, par, world, gen_kw):
    """Under PP the live rows decode as pp groups in flight (stage s on group (t - s) mod pp): same
    samples, log-probs and routing as one process, and every stage runs a forward every tick, so a
    stage runs about (decode steps x groups) forwards, not one per step."""
    chunks, ps = model
    prompts, keys = long_tail_rows()
    one = generate(chunks, ps, prompts, long_tail_config(**gen_kw), rows=keys)
    per_rank = layout_runs[request.node.name]
    got, logprobs = {}, {}
    for r in per_rank:
        flat = iter(r["logprobs"].tolist())
        for k, c in zip(r["keys"].tolist(), r["completions"]):
            assert got.setdefault(k, c) == c, (par, k)
            logprobs[k] = [next(flat) for _ in c]
    assert [got[k] for k in range(len(prompts))] == one.completions(), (par, gen_kw)
    want = one.logprobs[one.completion_mask].tolist()
    torch.testing.assert_close(torch.tensor([x for k in range(len(prompts)) for x in logprobs[k]]),
                               torch.tensor(want), atol=1e-5, rtol=0)
    if "ep" not in par:
        steps = int(one.completion_mask.sum(1).max())  # decoding steps of the longest row
        assert per_rank[0]["forwards"] > steps  # two groups: more forwards than steps


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_resume_draws_the_uninterrupted_samples_under_any_problems_per_round(tmp_path):
    """Issue 23: noise keyed by (seed, problem id, sample, position), not by (seed, round, row)."""
    import json
    from dataclasses import asdict

    from r1mega.config import Config, ModelConfig
    from r1mega.data.synthetic import pretrain_corpus
    from r1mega.data.tokenizer import train_sentencepiece
    from r1mega.parallel.layout import single_process_state
    from r1mega.train.checkpoint import save_checkpoint
    from r1mega.train.setup import build_chunks, init_weights
    from r1mega.train.optimizer import DistributedAdamW

    tok = train_sentencepiece(pretrain_corpus(200), str(tmp_path / "tok"), 384)
    cfg = Config(model=ModelConfig(vocab_size=384, num_layers=2, n_routed_experts=4, n_group=1))
    ps = single_process_state()
    chunks = build_chunks(cfg, ps)
    init_weights(chunks, 7)
    save_checkpoint(str(tmp_path / "ckpt"), 1, chunks, DistributedAdamW(chunks, ps, cfg.optim), ps,
                    {"model_config": asdict(cfg.model)})
    lines = [json.dumps({"id": f"p{i}", "prompt": f"Q: {i}+{i % 7}=", "answer": str(i + i % 7)}) + "\n"
             for i in range(12)]
    (tmp_path / "all.jsonl").write_text("".join(lines))
    (tmp_path / "first.jsonl").write_text("".join(lines[:5]))  # what a run killed after 5 problems stored
    from cli_in_process import run_main  # `r1mega generate` in this process (test_generate_eval.py starts it)
    from r1mega.cli import main

    def run(prompts, out, per_round):
        res = run_main(main, ["generate", "--model", tmp_path / "ckpt", "--tokenizer", tok, "--out", out, "--template",
                              "raw", "--prompts", tmp_path / prompts, "--samples", "3", "--max-new-tokens", "12",
                              "--temperature", "1.0", "--top-p", "1.0", "--problems-per-round", per_round])
        assert res.returncode == 0, res.stderr[-2000:]
        return res

    def samples(out):
        recs = [json.loads(line) for name in sorted(os.listdir(out)) if name.startswith("shard-")
                for line in open(out / name)]
        return sorted(recs, key=lambda r: (r["id"], r["sample"]))

    run("all.jsonl", tmp_path / "ref", 4)
    run("first.jsonl", tmp_path / "resumed", 2)
    assert "resuming" in run("all.jsonl", tmp_path / "resumed", 5).stdout
    ref, resumed = samples(tmp_path / "ref"), samples(tmp_path / "resumed")
    assert len(ref) == 36 and resumed == ref


def test_top_p_support_that_stops_bisecting_early_equals_the_full_bisection(monkeypatch):
    """One process stops the top-p bisection once no logit lies between its bounds, and runs it on the
    host for a few rows; the support must be the 48 tensor rounds' exactly (ties, one token holding
    the mass, top-k before top-p included; 1-8 rows: both paths)."""
    from r1mega.inference import sampling
    from r1mega.parallel.layout import single_process_state

    ps = single_process_state()
    g = torch.Generator().manual_seed(0)
    cases = []
    for trial in range(400):
        V, b = int(torch.randint(2, 400, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
        x = torch.randn(b, V, generator=g) * float(torch.rand(1, generator=g)) * 20
        if trial % 5 == 0:
            x = x.round()
        if trial % 7 == 0:
            x[:, 0] += 50
        cases.append((x, float(torch.rand(1, generator=g)) * 0.999 + 0.0005, 0 if trial % 3 else 20))
    early = [sampling.sampler_support(x, ps, p, k) for x, p, k in cases]
    monkeypatch.setattr(sampling, "_bisection_settled", lambda *a: False)
    monkeypatch.setattr(sampling, "_bisection_on_host", lambda *a: None)
    for (x, p, k), got in zip(cases, early):
        assert torch.equal(got, sampling.sampler_support(x, ps, p, k))


def test_absorbed_attention_weights_follow_an_optimizer_step_and_a_reload(model):
    """Decoding keeps MLA's absorbed kv_b views between steps; an optimizer step (written through
    `p.data.copy_`, as DistributedAdamW does: no version bump) and a swapped tensor (a reload) must
    reach the next rollout: it equals one with nothing kept."""
    chunks, ps = model
    prompts, keys = long_tail_rows()
    gen = long_tail_config(max_rows=3)
    mlas = [m for m in chunks[0].layers.modules() if hasattr(m, "_absorbed_weights")]  # (not the MTP draft's)
    weights = [m.kv_b_proj.weight for m in mlas]
    saved = [w.detach().clone() for w in weights]

    def fresh():
        for m in mlas:
            m.__dict__.pop("_absorbed_cache", None)
        return generate(chunks, ps, prompts, gen, rows=keys)

    try:
        before = generate(chunks, ps, prompts, gen, rows=keys)
        assert all(getattr(m, "_absorbed_cache", None) is not None for m in mlas)
        with torch.no_grad():
            for w in weights:
                w.data.copy_(w * 1.5)  # how DistributedAdamW.write_params updates a parameter
        stepped = generate(chunks, ps, prompts, gen, rows=keys)
        assert not torch.equal(stepped.logprobs, before.logprobs)
        assert torch.equal(stepped.logprobs, fresh().logprobs)
        for w in weights:  # a reload that swaps the storage
            w.data = w.data * (2 / 3)
        reloaded = generate(chunks, ps, prompts, gen, rows=keys)
        assert torch.equal(reloaded.logprobs, fresh().logprobs)
    finally:
        with torch.no_grad():
            for w, s in zip(weights, saved):
                w.data = s


def test_noise_hashed_in_numpy_equals_the_tensor_hash():
    """On CPU the sampler's uniforms are hashed in numpy; they must be the int64 tensor formula's bits
    (any key, negative columns too: speculative decoding's accept draw uses column -1)."""
    from r1mega.inference import sampling

    keys = torch.randint(-2**63, 2**63 - 1, (6,), dtype=torch.int64, generator=torch.Generator().manual_seed(0))
    for first, n in ((-1, 1), (-5, 12), (0, 384), (2**40, 3)):
        cols = torch.arange(first, first + n, dtype=torch.int64)
        z = sampling._mix(sampling._mix(keys)[:, None] + cols[None, :] * sampling._signed(0x9E3779B97F4A7C15))
        expected = (sampling._shr(z, 11).double() + 0.5) / float(1 << 53)
        assert torch.equal(sampling.uniform_noise(keys, first, n), expected)
