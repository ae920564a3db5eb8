"""GRPO's loss details against hand computations: verl's clip fraction and k3 clamps, the entropy
bonus, DeepSeek-V3.2's unbiased KL, off-policy sequence masking and keep-sampling-mask (vocab
parallel), DAPO's dynamic sampling, epochs over all minibatches, and the rl.* keys refused up front."""
import math
import os

import pytest
import torch

from r1mega.rl.update import grpo_loss, k3_kl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "tiny", "r1_zero_demo.yaml")


def test_clip_fraction_counts_only_the_clipped_branch():
    # ratios 1.5 (A>0: clipped branch), 1.5 (A<0: the unclipped -1.5 is smaller), 0.5 (A<0: clipped),
    # 0.5 (A>0: unclipped), 1.1 (inside the range)
    logp = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5, 1.1]]))
    old = torch.zeros(1, 5)
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0, 1.0]])
    seq = torch.zeros(1, 5, dtype=torch.long)
    t = grpo_loss(logp, old, old, adv, torch.ones(1, 5, dtype=torch.bool), 0.2, 0.2, 0.0, "token", 5.0, seq=seq)
    assert t.clipped.tolist() == [[True, False, True, False, False]]
    # surrogates: 1.2, -1.5, -0.8, 0.5, 1.1
    assert t.loss.item() == pytest.approx(-(1.2 - 1.5 - 0.8 + 0.5 + 1.1) / 5, rel=1e-6)


def test_k3_is_clamped_as_verl():
    logp = torch.zeros(4)
    ref = torch.tensor([-30.0, 30.0, -5.0, 2.0])
    kl = k3_kl(logp, ref)
    # d = -30 -> -20: e^-20 + 19 -> 10; d = 30 -> 20: e^20 - 21 -> 10; d = -5 and 2 unclamped
    assert kl.tolist() == pytest.approx([10.0, 10.0, math.exp(-5) + 4, math.exp(2) - 3], rel=1e-6)


def test_unbiased_kl_by_hand_with_its_gradient():
    logp = torch.tensor([[math.log(0.5), math.log(0.2)]], requires_grad=True)
    old = torch.tensor([[math.log(0.4), math.log(0.25)]])
    ref = torch.tensor([[math.log(0.3), math.log(0.3)]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    beta = 0.5
    t = grpo_loss(logp, old, ref, torch.zeros(1), mask, 0.2, 0.2, beta, "token", 2.0, unbiased_kl=True)
    rho = [0.5 / 0.4, 0.2 / 0.25]
    r = [0.3 / 0.5, 0.3 / 0.2]
    k3 = [x - math.log(x) - 1 for x in r]
    assert t.kl[0].tolist() == pytest.approx([p * k for p, k in zip(rho, k3)], rel=1e-6)
    assert t.loss.item() == pytest.approx(beta * sum(p * k for p, k in zip(rho, k3)) / 2, rel=1e-6)
    t.loss.backward()
    # d/dlogp [rho (r - log r - 1)] = rho k3 + rho (1 - r), with rho = e^(logp - old), r = e^(ref - logp)
    want = [beta * (p * k + p * (1 - x)) / 2 for p, k, x in zip(rho, k3, r)]
    assert logp.grad[0].tolist() == pytest.approx(want, rel=1e-5)
    # off: plain k3
    plain = grpo_loss(logp.detach(), old, ref, torch.zeros(1), mask, 0.2, 0.2, beta, "token", 2.0)
    assert plain.kl[0].tolist() == pytest.approx(k3, rel=1e-6)


def test_off_policy_sequence_masking_by_hand():
    # three sequences packed in one row (2 tokens each) plus a pad slot:
    #   s0: A = -1, mean log(old / pi) = (0.3 + 0.1) / 2 = 0.2 > delta   -> left out
    #   s1: A = -1, mean = (0.05 + 0.05) / 2 = 0.05 <= delta             -> kept
    #   s2: A = +1, mean = 0.4 > delta, but A > 0                         -> kept
    logp = torch.tensor([[-1.0, -1.0, -1.0, -1.0, -1.0, -1.0, 0.0]])
    old = logp + torch.tensor([[0.3, 0.1, 0.05, 0.05, 0.4, 0.4, 0.0]])
    seq = torch.tensor([[0, 0, 1, 1, 2, 2, -1]])
    adv = torch.tensor([[-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 0.0]])
    mask = seq >= 0
    t = grpo_loss(logp, old, old, adv, mask, 10.0, 10.0, 0.0, "sequence", 3.0, seq=seq, opsm_delta=0.1)
    assert t.opsm_masked.tolist() == [[True, True, False, False, False, False, False]]
    ratio = lambda d: math.exp(-d)  # noqa: E731
    s1 = -(-ratio(0.05) - ratio(0.05)) / 2
    s2 = -(ratio(0.4) + ratio(0.4)) / 2
    assert t.loss.item() == pytest.approx((0 + s1 + s2) / 3, rel=1e-6)
    off = grpo_loss(logp, old, old, adv, mask, 10.0, 10.0, 0.0, "sequence", 3.0, seq=seq)
    s0 = -(-ratio(0.3) - ratio(0.1)) / 2
    assert off.loss.item() == pytest.approx((s0 + s1 + s2) / 3, rel=1e-6)


def test_entropy_bonus_by_hand():
    from r1mega.parallel.layout import single_process_state
    from r1mega.rl.policy_scores import scores

    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0]], requires_grad=True)
    logp, ent = scores(logits, torch.tensor([1]), single_process_state(), entropy=True)
    p = torch.softmax(logits.detach(), -1)
    assert ent.item() == pytest.approx(float(-(p * p.log()).sum()), rel=1e-6)
    assert logp.item() == pytest.approx(float(p[0, 1].log()), rel=1e-6)
    # the bonus lowers the loss by coef x entropy (token norm, one token)
    mask = torch.ones(1, 1, dtype=torch.bool)
    z = logp.detach()[:, None]
    t = grpo_loss(z, z, z, torch.zeros(1), mask, 0.2, 0.2, 0.0, "token", 1.0, entropy=ent[:, None], entropy_coef=0.1)
    assert t.loss.item() == pytest.approx(-0.1 * ent.item(), rel=1e-6)
    t.loss.backward()
    want = torch.autograd.grad(-0.1 * -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(),
                               logits)[0]
    assert torch.allclose(logits.grad, want, atol=1e-6)


def test_keep_sampling_mask_renormalises_over_the_support_by_hand():
    from r1mega.parallel.layout import single_process_state
    from r1mega.rl.policy_scores import sampler_support, scores, support_with_targets

    ps = single_process_state()
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]))
    keep = sampler_support(logits, ps, top_p=0.75, top_k=0)  # smallest top set with mass >= 0.75
    assert keep.tolist() == [[True, True, False, False]] * 2
    keep = support_with_targets(keep, torch.tensor([1, 2]), ps)  # row 1 sampled token 2: always in
    assert keep.tolist() == [[True, True, False, False], [True, True, True, False]]
    logp, ent = scores(logits, torch.tensor([1, 2]), ps, keep, entropy=True)
    assert logp.tolist() == pytest.approx([math.log(0.3 / 0.8), math.log(0.15 / 0.95)], rel=1e-6)
    q = torch.tensor([0.5, 0.3]) / 0.8
    assert ent[0].item() == pytest.approx(float(-(q * q.log()).sum()), rel=1e-6)
    assert sampler_support(logits, ps, 1.0, 2).tolist() == [[True, True, False, False]] * 2  # top-k


def test_sampler_support_is_the_sampler_s():
    """Every token the sampler draws lies in `sampler_support`, and every supported token gets drawn."""
    from r1mega.inference.sampling import row_keys, sample
    from r1mega.parallel.layout import single_process_state
    from r1mega.rl.policy_scores import sampler_support

    ps = single_process_state()
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1)) * 1.5
    for top_p, top_k in ((0.7, 0), (1.0, 5), (0.8, 8)):
        keep = sampler_support(logits / 0.9, ps, top_p, top_k, vocab=48)
        drawn = torch.zeros_like(keep)
        for step in range(400):
            tok, _ = sample(logits, ps, 0.9, top_p, top_k, row_keys(7, step, torch.arange(4)), vocab_size=48)
            drawn[torch.arange(4), tok] = True
        assert not (drawn & ~keep).any() and torch.equal(drawn, keep), (top_p, top_k)


@pytest.fixture(scope="module")
def two_rank_runs(request):
    """Both two-rank tests of this file (those selected) in one spawn. {node name: per-rank results}."""
    from grpo_update_workers import dynamic_sampling_worker, vocab_parallel_scores_worker
    from spawn_cases import run_selected

    return run_selected(request, {
        "test_vocab_parallel_scores_equal_the_whole_vocabulary": lambda p: (2, vocab_parallel_scores_worker, ()),
        "test_dynamic_sampling_decisions_are_agreed_over_ranks": lambda p: (2, dynamic_sampling_worker, ()),
    })


def test_vocab_parallel_scores_equal_the_whole_vocabulary(request, two_rank_runs):
    from r1mega.parallel.layout import single_process_state
    from r1mega.rl.policy_scores import sampler_support, scores, support_with_targets

    ranks = two_rank_runs[request.node.name]
    ps = single_process_state()
    full = (torch.randn(6, 32, generator=torch.Generator().manual_seed(0)) * 2).requires_grad_(True)
    target = torch.tensor([0, 5, 17, 31, 16, 3])
    keep = support_with_targets(sampler_support(full.detach(), ps, 0.8, 6), target, ps)
    assert torch.equal(torch.cat([r["keep"] for r in ranks], 1), keep)  # the support, shard by shard
    for name, k in (("all", None), ("support", keep)):
        logp, ent = scores(full, target, ps, k, entropy=True)
        (logp.sum() + 0.5 * ent.sum()).backward()
        for r in ranks:
            assert torch.allclose(r[name][0], logp.detach(), atol=1e-6)
            assert torch.allclose(r[name][1], ent.detach(), atol=1e-6)
        assert torch.allclose(torch.cat([r[name][2] for r in ranks], 1), full.grad, atol=1e-6)
        full.grad = None


def test_recomputed_support_against_the_sampler_s(capsys):
    """keep_sampling_mask recomputes the support from the old policy's training forward; measured
    here against the support each token was sampled under (the decoding forward with its cache)."""
    from grpo_update_workers import long_tail_rollout, model
    from r1mega.parallel.layout import single_process_state
    from r1mega.rl.update import old_and_reference_logprobs
    from r1mega.rl.train_batch import microbatches
    from r1mega.rl.train_batch import update_batches
    from r1mega.rl.policy_scores import sampler_support, support_with_targets, unpack_support

    cfg, chunks, ps = model({}, 1, seed=5)
    assert ps.tp == 1 and single_process_state() is not None
    top_p, top_k = 0.9, 20
    r = long_tail_rollout(chunks, ps, 16, top_p, top_k)
    cfg.rl.keep_sampling_mask, cfg.rl.top_p, cfg.rl.top_k, cfg.rl.temperature = True, top_p, top_k, 1.0
    cfg.rl.group_size, cfg.data.micro_batch_size = 2, 3
    keep = torch.ones(r.tokens.shape[0], dtype=torch.bool)
    (batch,), (m,) = update_batches(cfg, ps, r, keep)
    old_and_reference_logprobs(cfg, ps, chunks, None, batch, None, m, 128)
    rows = torch.cat([unpack_support(mb.extra["support"]) for mb in microbatches(batch, 3, {}, False, m)], 1)
    rows = rows.transpose(0, 1)  # [R, S, V]
    trained = {(int(s), int(p)): rows[i, j] for (i, j), s, p in zip(
        batch.generated.nonzero().tolist(), batch.seq[batch.generated], batch.position_ids[batch.generated])}
    # the sampler's view: the same decoding forwards as generation, teacher-forced on the samples
    stage = chunks[0].eval()
    B, T, P = r.tokens.shape[0], r.tokens.shape[1], r.prompt_len
    valid = torch.arange(T)[None, :] >= r.pad[:, None]
    cache = stage.new_kv_cache(B, T, valid, torch.float32, torch.device("cpu"))
    differ = total = 0
    with torch.no_grad():
        for step in range(T - P):
            start, end = (0 if step == 0 else P + step - 1), P + step
            pos = (torch.arange(start, end)[None, :] - r.pad[:, None]).clamp(min=0)
            logits = stage(r.tokens[:, start:end], position_ids=pos, cache=cache, last_logits_only=True).logits[-1]
            support = sampler_support(logits.float(), ps, top_p, top_k)
            live = r.completion_mask[:, end]
            inside = support_with_targets(support, r.tokens[:, end], ps).eq(support).all(1)
            assert inside[live].all()  # every sample lies in the support its sampler had
            for b in torch.nonzero(live).flatten().tolist():
                total += 1
                differ += int(not torch.equal(support[b], trained[(b, end - 1 - int(r.pad[b]))]))
    with capsys.disabled():
        print(f"\nkeep_sampling_mask: recomputed support differs from the sampler's on {differ} of {total} tokens")
    assert total > 50 and differ <= 0.02 * total


def test_dynamic_sampling_decisions_are_agreed_over_ranks(request, two_rank_runs):
    r0, r1 = two_rank_runs[request.node.name]
    # 2 of 4 slots empty, 2 informative of 4: a pool of ceil((2 + 1) / 0.5) = 6 prompts, 3 a rank;
    # rank 0 had enough, but draws with rank 1
    assert r0["calls"] == [(1, 0, 6, [0, 1, 2])] and r1["calls"] == [(1, 0, 6, [3, 4, 5])]
    for r in (r0, r1):
        assert r["counts"] == {"dynamic_extra_draws": 1.0, "dynamic_extra_prompts": 6.0,
                               "dynamic_informative_groups": 5.0, "dynamic_drawn_groups": 10.0,
                               "dynamic_filled_groups": 0.0, "dynamic_moved_groups": 2.0}
    # rank 0 keeps its first draw; rank 1 takes the pool's first two informative groups (0 and 1),
    # both drawn by rank 0 and moved
    assert r0["rewards"].tolist() == [1.0, 0.0, 0.0, 1.0] and r1["rewards"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert r1["tokens"][:, 0].tolist() == [10, 11, 12, 13]


def test_dynamic_sampling_fills_with_uninformative_groups_when_draws_run_out():
    from grpo_update_workers import fake_scored
    from r1mega.parallel.layout import single_process_state
    from r1mega.rl.rollout import draw_until_informative

    first = fake_scored([1.0, 1.0, 0.0, 0.0, 2.0, 2.0], offset=0, prompt_len=2)
    sizes = []

    def draw(n, offset, size, mine):
        sizes.append(size)
        return fake_scored([0.0, 0.0, 3.0, 4.0, 0.0, 0.0][:2 * size], offset=10, prompt_len=4, new=3)

    scored, counts = draw_until_informative(first, [0, 1, 2], draw, 2, 1, single_process_state(),
                                            torch.device("cpu"))
    # nothing informative yet: the pool takes all one draw allows (3 prompts); one informative group
    assert sizes == [3]
    assert counts == {"dynamic_extra_draws": 1.0, "dynamic_extra_prompts": 3.0, "dynamic_informative_groups": 1.0,
                      "dynamic_drawn_groups": 6.0, "dynamic_filled_groups": 2.0, "dynamic_moved_groups": 0.0}
    # the first empty slot (0) takes the pool's informative group; slots 1 and 2 keep their own
    assert scored.rewards.tolist() == [3.0, 4.0, 0.0, 0.0, 2.0, 2.0]
    assert [p["id"] for p in scored.problems] == [12, 13, 2, 3, 4, 5]
    ro = scored.rollout  # draw 0's rows moved right by 2 pads (prompt 2 -> 4), one column longer
    first_rows = [2, 3, 4, 5]
    assert ro.prompt_len == 4 and ro.tokens.shape == (6, 7) and ro.pad.tolist() == [0, 0, 2, 2, 2, 2]
    assert torch.equal(ro.tokens[first_rows, 2:6], torch.tensor(first_rows)[:, None].expand(4, 4))
    assert torch.equal(ro.tokens[0:2], torch.tensor([[12] * 7, [13] * 7]))
    assert ro.completion_mask[first_rows, 4:6].all() and not ro.completion_mask[first_rows, 6].any()
    assert ro.completion_mask[0:2, 4:].all() and not ro.completion_mask[:, :4].any()
    assert ro.routing[0].shape == (7, 6, 2)
    assert (ro.routing[0][2:6][:, first_rows] == 0).all() and (ro.routing[0][:, 0:2] == 10).all()


def test_epochs_run_over_all_minibatches(tmp_path, monkeypatch):
    """updates_per_rollout=2 with 2 minibatches: A, B, A, B (not A, A, B, B); each is one step, and
    dynamic sampling's counts reach the step metrics."""
    import json

    import r1mega.rl.grpo as grpo_module
    from r1mega.config import load_config

    real, seen = grpo_module.minibatch_update, []

    def spy(run, chunks, optimizer, batch, *args, **kwargs):
        seen.append(tuple(sorted(set(batch.seq[batch.seq >= 0].tolist()))))
        return real(run, chunks, optimizer, batch, *args, **kwargs)

    monkeypatch.setattr(grpo_module, "minibatch_update", spy)
    cfg = load_config(DEMO, [f"train.run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/data", "train.steps=4",
                             "rl.group_size=4", "rl.prompts_per_step=2", "rl.minibatches=2",
                             "rl.updates_per_rollout=2", "rl.max_new_tokens=6", "rl.dynamic_sampling=true",
                             "rl.dynamic_sampling_max_draws=1", "data.micro_batch_size=4",
                             "data.global_batch_size=8", "data.synthetic_docs=300", "rl.log_rollouts=0"])
    torch.set_num_threads(1)
    grpo_module.grpo(cfg, eval_problems=0)
    assert len(seen) == 4 and seen[0] == seen[2] and seen[1] == seen[3] and seen[0] != seen[1]
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert r["dynamic_drawn_groups"] == 4 + r["dynamic_extra_prompts"]
        filled = r["dynamic_filled_groups"]
        assert r["zero_advantage_frac"] == pytest.approx(filled / 4)  # only fill-ins have equal rewards
        assert 0 <= r["update_padding_frac"] < 1 and r["entropy"] > 0


@pytest.mark.parametrize("overrides, key", [
    (["rl.entropy_coef=-1"], "rl.entropy_coef"), (["rl.entropy_coef=nan"], "rl.entropy_coef"),
    (["rl.opsm_delta=-0.1"], "rl.opsm_delta"), (["rl.opsm_delta=nan"], "rl.opsm_delta"),
    (["rl.pack_tokens=-1"], "rl.pack_tokens"), (["rl.dynamic_sampling_max_draws=-1"], "rl.dynamic_sampling_max_draws"),
    (["rl.keep_sampling_mask=true", "rl.top_p=1.0", "rl.top_k=0"], "rl.keep_sampling_mask"),
    (["rl.kl_coef=inf"], "rl.kl_coef"), (["rl.overlong_penalty=inf"], "rl.overlong_penalty"),
    (["rl.packed_update=false", "rl.group_size=5", "data.micro_batch_size=16"], "data.micro_batch_size"),
])
def test_new_rl_keys_are_checked_up_front(overrides, key):
    from r1mega.config import ConfigError, load_config, validate_rl, validate_training

    cfg = load_config(DEMO, overrides)
    with pytest.raises(ConfigError) as e:
        validate_rl(validate_training(cfg, 1, needs_data=False), 1)
    assert e.value.key == key
