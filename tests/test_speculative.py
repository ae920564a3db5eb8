"""Self-speculative decoding with the MTP module as the draft (inference/speculative.py): greedy
output is the plain greedy output token for token (1 process, TP2 x EP2, PP2); the accept/reject
rule gives exactly the target distribution (analytically, and a goodness-of-fit test of the
implementation); rejected positions roll back; GRPO runs with it."""
import os
from dataclasses import replace

import pytest
import torch

from r1mega.inference.generate import generate
from r1mega.inference.sampling import row_keys
from r1mega.inference.speculative import SpeculativeBatcher, verify_drafts
from r1mega.parallel.layout import single_process_state
from rl_workers import sharp_model
from rollout_workers import long_tail_config, long_tail_rows
from speculative_workers import greedy_config, speculative_layout_worker


@pytest.fixture(scope="module")
def model():
    return sharp_model({}, 1)


@pytest.mark.parametrize("k", [1, 3])
def test_greedy_speculative_equals_plain_greedy(model, k):
    chunks, ps = model
    prompts, keys = long_tail_rows()
    for max_rows in (0, 4):
        plain = generate(chunks, ps, prompts, greedy_config(max_rows=max_rows), rows=keys)
        spec = generate(chunks, ps, prompts, greedy_config(max_rows=max_rows, speculative="mtp", draft_tokens=k),
                        rows=keys)
        assert torch.equal(spec.tokens, plain.tokens) and torch.equal(spec.completion_mask, plain.completion_mask)
        torch.testing.assert_close(spec.logprobs, plain.logprobs, atol=1e-5, rtol=0)
        for layer in plain.routing:  # routing replay records the verified tokens' experts
            assert torch.equal(spec.routing[layer], plain.routing[layer])
        assert spec.draft_tokens > 0


def test_oracle_drafts_are_accepted_and_rejected_ones_roll_back(model, monkeypatch):
    """Drafts replaced by the true greedy continuation, every third one wrong: the right ones are all
    accepted (fewer forwards), the wrong ones rejected, and the output is still the plain output."""
    chunks, ps = model
    prompts, keys = long_tail_rows()
    gen = greedy_config(max_new_tokens=24)
    truth = generate(chunks, ps, prompts, gen, rows=keys)
    want = truth.completions()
    wrong = {"n": 0, "right": 0}
    real = SpeculativeBatcher._draft

    def oracle(self, live, ids, tokens, a, lengths, slots, t0, rowkey):
        out = real(self, live, ids, tokens, a, lengths, slots, t0, rowkey)  # keeps the MTP cache work
        for i, r in enumerate(live):
            for j in range(self.k):
                at = int(t0[i] + a[i]) + j + 1
                c = want[r.index]
                if at < len(c):
                    bad = (at + r.index) % 3 == 0
                    out[i, j] = (c[at] + 1) % 64 if bad else c[at]
                    wrong["n" if bad else "right"] += 1
        return out

    monkeypatch.setattr(SpeculativeBatcher, "_draft", oracle)
    spec = generate(chunks, ps, prompts, replace(gen, speculative="mtp", draft_tokens=3), rows=keys)
    assert spec.completions() == want
    torch.testing.assert_close(spec.logprobs, truth.logprobs, atol=1e-5, rtol=0)
    for layer in truth.routing:
        assert torch.equal(spec.routing[layer], truth.routing[layer])
    assert wrong["n"] > 0 and wrong["right"] > 0
    assert 0 < spec.draft_accepted < spec.draft_tokens
    assert spec.forwards < truth.forwards  # several tokens per verification


def _random_dists(b, k, V, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(k + 1, V, generator=g) * 1.5
    q_logits = logits[:k] + torch.randn(k, V, generator=g)  # a draft close to, but not, the target
    return logits[:, None].expand(k + 1, b, V).contiguous(), q_logits


def test_accept_reject_rule_is_exact_analytically():
    """P(token) = sum_d q(d) min(1, p(d)/q(d)) [token = d] + P(reject) normalize(max(0, p - q)) = p."""
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05, 0.0], dtype=torch.float64)
    for q in (torch.tensor([0.1, 0.4, 0.1, 0.1, 0.1, 0.2], dtype=torch.float64), p.flip(0), p):
        accept = torch.where(q > 0, torch.clamp(p / q.clamp(min=1e-300), max=1.0), torch.zeros_like(q))
        reject = 1 - (q * accept).sum()
        residual = (p - q).clamp(min=0)
        residual = residual / residual.sum() if residual.sum() > 0 else residual
        torch.testing.assert_close(q * accept + reject * residual, p, atol=1e-15, rtol=0)


@pytest.mark.parametrize("top_p, top_k", [(1.0, 0), (0.8, 5)])
def test_sampled_tokens_have_the_target_distribution(top_p, top_k):
    """The implementation, 40,000 rows at once: drafts drawn from q, verified; the first token and
    (given one acceptance) the second follow the processed target distributions (chi-square)."""
    from scipy.stats import chisquare

    from r1mega.inference.speculative import draw_drafts, processed_probs

    ps = single_process_state()
    b, k, V, T = 40_000, 2, 12, 0.9
    logits, q_logits = _random_dists(b, k, V, seed=3)
    rows = torch.arange(b)
    drafts, qs = [], []
    for j in range(k):
        keys = row_keys(7, j + 1, rows)
        d, q = draw_drafts(q_logits[j].expand(b, V), ps, T, top_p, top_k, V, keys)
        drafts.append(d)
        qs.append(q)
    drafts, q = torch.stack(drafts, 1), torch.stack(qs, 1)
    keys = torch.stack([row_keys(7, j + 1, rows) for j in range(k + 1)], 1)
    a, tokens, logp = verify_drafts(logits, drafts, q, torch.ones(b, dtype=torch.bool), keys, ps, T, top_p, top_k, V)
    _, p = processed_probs(logits[:, 0], ps, T, top_p, top_k, V)  # [k+1, V]
    assert 0.1 < (a > 0).double().mean() < 0.95  # both branches taken often
    for j, sel in ((0, torch.ones(b, dtype=torch.bool)), (1, a >= 1)):
        counts = torch.bincount(tokens[sel, j], minlength=V).double()
        support = p[j] > 0
        assert counts[~support].sum() == 0  # nothing outside the sampler's support
        expected = p[j][support].double()
        expected = expected / expected.sum() * counts.sum()
        assert chisquare(counts[support], expected).pvalue > 1e-3, (j, counts, expected)
    # log-probs are the target's (full softmax at T, as the plain sampler reports)
    full = torch.log_softmax(logits[:, 0].double() / T, -1)
    torch.testing.assert_close(logp[:, 0].double(), full[0][tokens[:, 0]], atol=1e-5, rtol=0)


def test_without_drafts_a_row_draws_the_plain_sample():
    from r1mega.inference.sampling import sample

    ps = single_process_state()
    b, k, V = 64, 2, 20
    logits, _ = _random_dists(b, k, V, seed=5)
    logits = logits + torch.randn(b, V)  # different rows
    keys = torch.stack([row_keys(3, 4 + j, torch.arange(b)) for j in range(k + 1)], 1)
    a, tokens, logp = verify_drafts(logits, torch.zeros(b, k, dtype=torch.long), torch.zeros(b, k, V),
                                    torch.zeros(b, dtype=torch.bool), keys, ps, 1.0, 0.9, 0, V)
    want, want_lp = sample(logits[0], ps, 1.0, 0.9, 0, keys[:, 0], V)
    assert torch.equal(a, torch.zeros_like(a)) and torch.equal(tokens[:, 0], want)
    torch.testing.assert_close(logp[:, 0], want_lp)


@pytest.fixture(scope="module")
def multi_rank_runs(request, tmp_path_factory):
    """The selected multi-rank cases of this file, one spawn per world size. {node name: per rank}."""
    from rl_workers import grpo_worker
    from spawn_cases import run_selected

    grpo_dir = tmp_path_factory.mktemp("speculative_grpo")
    return run_selected(request, {
        "test_layouts_give_the_one_process_output": lambda p: (p["world"], speculative_layout_worker, (p["par"],)),
        "test_grpo_speculative_on_tp2_ep2_logprobs_are_the_trainers":
            lambda p: (2, grpo_worker, (_grpo_overrides(grpo_dir),)),
    })


@pytest.mark.parametrize("par, world", [(dict(tp=2, ep=2), 4), (dict(pp=2), 2),
                                        pytest.param(dict(cp=2), 2, marks=pytest.mark.slow)])
def test_layouts_give_the_one_process_output(request, multi_rank_runs, model, par, world):
    """Greedy speculative = plain greedy; sampled speculative = the one-process speculative samples.
    (CP2: each CP rank decodes half the rows.)"""
    chunks, ps = model
    prompts, keys = long_tail_rows()
    spec = dict(speculative="mtp", draft_tokens=2)
    one_plain = generate(chunks, ps, prompts, greedy_config(), rows=keys).completions()
    one_sampled = generate(chunks, ps, prompts, replace(long_tail_config(), **spec), rows=keys).completions()
    got = {"plain": {}, "greedy": {}, "sampled": {}}
    per_rank = multi_rank_runs[request.node.name]
    for r in per_rank:
        for name in got:
            for key, c in zip(r["keys"].tolist(), r[name]):
                assert got[name].setdefault(key, c) == c, (par, name, key)
    n = len(prompts)
    assert [got["greedy"][i] for i in range(n)] == [got["plain"][i] for i in range(n)] == one_plain, par
    assert [got["sampled"][i] for i in range(n)] == one_sampled, par
    if par.get("ep") or par.get("cp"):  # ranks ran the same forwards though their rows differ
        assert len({r["forwards"] for r in per_rank}) == 1 and len({r["sampled_forwards"] for r in per_rank}) == 1


def test_a_model_without_mtp_layers_is_refused():
    from r1mega.errors import ConfigError

    chunks, ps = sharp_model({}, 1)
    chunks[0].cfg.num_mtp_layers = 0
    try:
        with pytest.raises(ConfigError, match="num_mtp_layers"):
            generate(chunks, ps, [[5, 6]], greedy_config(speculative="mtp"))
    finally:
        chunks[0].cfg.num_mtp_layers = 1


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
DEMO = os.path.join(CONFIGS, "tiny", "r1_zero_demo.yaml")


@pytest.mark.parametrize("overrides, key, words", [
    (["rl.speculative=mtp", "model.num_mtp_layers=0"], "rl.speculative", "num_mtp_layers=0"),
    (["rl.mtp_weight=0.3", "model.num_mtp_layers=0"], "rl.mtp_weight", "num_mtp_layers=0"),
    (["rl.speculative=eagle"], "rl.speculative", "mtp"),
    (["rl.speculative=mtp", "rl.draft_tokens=0"], "rl.draft_tokens", ">= 1"),
])
def test_speculative_keys_are_checked_up_front(overrides, key, words):
    from r1mega.config import ConfigError, load_config, validate_rl, validate_training

    cfg = load_config(DEMO, overrides)
    with pytest.raises(ConfigError, match=words) as e:
        validate_rl(validate_training(cfg, 1, needs_data=False), 1)
    assert e.value.key == key


def test_a_dense_student_has_no_draft():
    from r1mega.config import ConfigError, load_config, validate_rl, validate_training

    cfg = load_config([DEMO, os.path.join(CONFIGS, "model", "students", "qwen2.5_1.5b.yaml")],
                      ["rl.speculative=mtp"])
    with pytest.raises(ConfigError, match="family") as e:
        validate_rl(validate_training(cfg, 1, needs_data=False), 1)
    assert e.value.key == "rl.speculative"


@pytest.mark.slow
def test_grpo_with_speculative_rollouts_matches_plain_rewards(tmp_path):
    """The demo model after a short pretraining; 3 GRPO steps each way from it, same seed. The
    speculative rollouts draw other samples from the same distribution: the rewards agree within
    sampling noise; the acceptance rate and the MTP loss on the rollouts are logged."""
    import json
    import math

    from r1mega.config import load_config
    from r1mega.rl.grpo import grpo
    from r1mega.train.trainer import train

    data = [f"data.cache_dir={tmp_path}/data", "data.synthetic_docs=600"]
    train(load_config(DEMO, data + [f"train.run_dir={tmp_path}/pre", "train.steps=80", "train.log_interval=80"]),
          "pretrain")
    rl = data + [f"train.load={tmp_path}/pre/checkpoints/step_00000080", "train.steps=3", "optim.lr=3e-4",
                 "optim.min_lr=3e-4",
                 "rl.group_size=16", "rl.prompts_per_step=8", "data.micro_batch_size=32", "data.global_batch_size=64",
                 "train.log_interval=1"]
    rewards = {}
    for name, extra in (("plain", []), ("mtp", ["rl.speculative=mtp", "rl.draft_tokens=2", "rl.mtp_weight=0.3"])):
        run = f"{tmp_path}/{name}"
        grpo(load_config(DEMO, rl + extra + [f"train.run_dir={run}"]), eval_problems=0)
        rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
        rewards[name] = [r["reward"] for r in rows]
        if name == "mtp":
            assert all(0 < r["draft_acceptance"] <= 1 for r in rows)
            assert all(math.isfinite(r["mtp_loss"]) and r["mtp_loss"] > 0 for r in rows)
        else:
            assert "draft_acceptance" not in rows[0]
    # 128 samples per step, rewards in [0, 1]: the means of 3 steps differ by < 4 standard errors
    a, b = (sum(v) / len(v) for v in rewards.values())
    sd = math.sqrt(max(a * (1 - a), b * (1 - b), 0.05) * 2 / (3 * 128))
    assert abs(a - b) < 4 * sd, rewards


def test_mtp_labels_stay_inside_each_packed_sequence():
    """Packed rows hold several sequences (position ids restart at 0): the MTP loss at depth d reads
    the label d tokens on, so a label counts only where the d tokens before it are its own sequence's,
    and only on the loss's sampled tokens."""
    from r1mega.models.stage import IGNORE_INDEX
    from r1mega.parallel.pipeline import Microbatch
    from r1mega.config import ModelConfig
    from r1mega.models.family import family_named
    from r1mega.rl.update import extra_loss_labels

    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1]])
    targets = torch.arange(10, 19)[None]
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0, 1]], dtype=torch.bool)  # second sequence: a 1-token prompt
    mb = Microbatch(torch.zeros(1, 9, dtype=torch.long), None, None, pos, None, {"targets": targets, "mask": mask})
    depth = family_named("deepseek_v3").training.label_context(ModelConfig(num_mtp_layers=1))
    assert extra_loss_labels([mb], depth) == 6
    want = torch.tensor([[IGNORE_INDEX, 11, 12, 13, IGNORE_INDEX, 15, 16, IGNORE_INDEX, 18]])
    assert torch.equal(mb.labels, want)


def _grpo_overrides(tmp_path):
    return [f"train.run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/data", "train.steps=2",
            "parallel.tp=2", "parallel.ep=2", "parallel.etp=1", "rl.group_size=4", "rl.prompts_per_step=4",
            "rl.routing_replay=true", "rl.speculative=mtp", "rl.draft_tokens=2", "rl.mtp_weight=0.3",
            "data.micro_batch_size=8", "data.global_batch_size=8", "data.synthetic_docs=300"]


def test_grpo_speculative_on_tp2_ep2_logprobs_are_the_trainers(request, multi_rank_runs):
    """The log-probs a speculative rollout returns are the main model's: the trainer's forward over the
    same tokens (routing replayed from the verified tokens' record) agrees; the MTP loss trains."""
    rows = multi_rank_runs[request.node.name][0]["rows"]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["logprob_gap_max"] < 1e-4, r
        assert 0 <= r["draft_acceptance"] <= 1 and r["mtp_loss"] > 0


def test_deepseek_v32_greedy_speculative_equals_plain():
    """DeepSeek-V3.2: the MTP layer's sparse attention keeps its indexer keys in the draft's cache too;
    top-4 of up to 30 tokens, so verification and drafting select."""
    from r1mega.config import Config, validate
    from r1mega.models.family import family_named
    from r1mega.train.setup import build_chunks, init_weights

    v32 = family_named("deepseek_v32").config_cls
    cfg = validate(Config(model=v32(vocab_size=128, num_layers=3, num_mtp_layers=1, index_topk=4, index_n_heads=4,
                                    index_head_dim=16)), 1)
    ps = single_process_state()
    chunks = build_chunks(cfg, ps)
    init_weights(chunks, seed=5)
    with torch.no_grad():  # peaked distributions, as sharp_model
        for p in chunks.parameters():
            if p.dim() > 1:
                p.mul_(8)
    prompts, keys = long_tail_rows()
    plain = generate(chunks, ps, prompts, greedy_config(), rows=keys)
    spec = generate(chunks, ps, prompts, greedy_config(speculative="mtp", draft_tokens=2), rows=keys)
    assert torch.equal(spec.tokens, plain.tokens) and spec.draft_tokens > 0
    torch.testing.assert_close(spec.logprobs, plain.logprobs, atol=1e-5, rtol=0)
