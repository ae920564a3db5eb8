"""Hostile probes of self-speculative decoding (inference/speculative.py): greedy equals plain
greedy token for token (with an oracle draft that forces long accepted runs through EOS, stops and
the length limit), sampled tokens follow the target distribution exactly (a randomized probability
integral transform over many rows), bad input fails early with a named key."""
from __future__ import annotations

import math
import os
import sys
from dataclasses import replace

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from r1mega.inference.continuous import row_need_tokens  # noqa: E402
from r1mega.inference.generate import GenerationConfig, generate  # noqa: E402
from r1mega.inference.speculative import SpeculativeBatcher  # noqa: E402
from rl_workers import sharp_model  # noqa: E402

BS = 4
PROMPTS = [[5, 6, 7], [10, 11, 12, 13], [3, 4, 5, 6, 7], [40], [7, 1, 2, 9, 9, 9, 9, 9, 3], [40]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return sharp_model({}, 1)


def least_budget(prompts, max_new_tokens: int, k: int) -> int:
    """The smallest max_cache_tokens the engine takes with k drafts (the most preemption)."""
    return max(row_need_tokens(len(p), max_new_tokens, BS, k + 1) for p in prompts)


def greedy(**kw) -> GenerationConfig:
    return GenerationConfig(**{"max_new_tokens": 14, "temperature": 0.0, "block_size": BS,
                               "record_routing": True, **kw})


def oracle(monkeypatch, reference, wrong=lambda row, pos: False):
    """Replace the MTP drafts (after the real draft step ran: its cache and state stay exercised) by
    the plain greedy continuation, except where wrong(row, position) says to keep the MTP's own."""
    real = SpeculativeBatcher._draft

    def _draft(self, live, ids, tokens, a, lengths, slots, t0, rowkey):
        d = real(self, live, ids, tokens, a, lengths, slots, t0, rowkey)
        for i, r in enumerate(live):
            ref = reference[r.index]
            first = int(t0[i] + a[i]) + 1  # completion position of the first draft
            for j in range(self.k):
                p = first + j
                if p < len(ref) and not wrong(r.index, p):
                    d[i, j] = ref[p]
        return d
    monkeypatch.setattr(SpeculativeBatcher, "_draft", _draft)


def assert_same(plain, spec):
    assert spec.completions() == plain.completions()
    assert torch.equal(spec.completion_mask, plain.completion_mask)
    torch.testing.assert_close(spec.logprobs, plain.logprobs, atol=2e-5, rtol=0)
    assert plain.routing.keys() == spec.routing.keys()
    for layer in plain.routing:
        assert torch.equal(plain.routing[layer], spec.routing[layer]), layer


CASES = {
    "plain": {},
    "eos": {"eos_id": "mid"},
    "stop": {"stop": lambda ids: len(ids) >= 2 and (ids[-1] + ids[-2]) % 5 == 0},
    "short_budget": {"max_new_tokens": 3},
    "refill": {"max_rows": 2},
    "tight_cache": {"max_cache_tokens": "least", "max_rows": 3},  # the least budget the drafts allow
    "top_k_1": {"temperature": 0.7, "top_k": 1},
    "vocab_cut": {"vocab_size": 100},
    "eos_first": {"eos_id": "first", "max_rows": 2},  # some rows end at the token drawn from the prompt
    "one_token": {"max_new_tokens": 1},  # ids past the tokenizer's vocabulary are never drafted or drawn
}


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("draft", ["oracle", "half", "mtp"])
def test_greedy_equals_plain(model, monkeypatch, k, case, draft):
    chunks, ps = model
    kw = dict(CASES[case])
    if kw.get("eos_id") == "mid":  # an id the plain output emits mid-way in some rows
        free = generate(chunks, ps, PROMPTS, greedy()).completions()
        kw["eos_id"] = free[0][5]
    if kw.get("eos_id") == "first":
        kw["eos_id"] = generate(chunks, ps, PROMPTS, greedy()).completions()[0][0]
    if kw.get("max_cache_tokens") == "least":
        kw["max_cache_tokens"] = least_budget(PROMPTS, greedy(**{**kw, "max_cache_tokens": 0}).max_new_tokens, k)
    plain = generate(chunks, ps, PROMPTS, greedy(**kw))
    if case == "top_k_1":
        plain_greedy = generate(chunks, ps, PROMPTS, greedy())
        assert plain.completions() == plain_greedy.completions()
    if draft != "mtp":
        wrong = (lambda row, pos: (row + pos) % 3 == 0) if draft == "half" else (lambda row, pos: False)
        oracle(monkeypatch, plain.completions(), wrong)
    spec = generate(chunks, ps, PROMPTS, greedy(speculative="mtp", draft_tokens=k, **kw))
    if case == "top_k_1":  # a sampled config: log-probs under softmax(logits / T), like plain sampling
        assert spec.completions() == plain.completions()
        torch.testing.assert_close(spec.logprobs, plain.logprobs, atol=2e-5, rtol=0)
    else:
        assert_same(plain, spec)
    if case == "tight_cache":  # speculative rows preempted too (their drafts drawn again on re-admission)
        assert spec.preemptions > 0
    # drafts past the length limit cannot match
    if draft == "oracle" and case not in ("short_budget", "one_token", "eos_first"):
        assert spec.draft_accepted > 0.5 * spec.draft_tokens, (spec.draft_accepted, spec.draft_tokens)


@pytest.mark.parametrize("k", [1, 3, 4])
def test_block_boundaries(model, monkeypatch, k):
    chunks, ps = model
    prompts = [list(range(3, 3 + n)) for n in (BS - 1, BS, BS + 1, 2 * BS, 2 * BS + 1, 1)] * 2
    plain = generate(chunks, ps, prompts, greedy(max_new_tokens=2 * BS + 1))
    oracle(monkeypatch, plain.completions(), lambda row, pos: pos % 4 == 3)
    spec = generate(chunks, ps, prompts, greedy(max_new_tokens=2 * BS + 1, speculative="mtp", draft_tokens=k))
    assert_same(plain, spec)


# ---- the sampled distribution ---------------------------------------------------------------------

def soft_model(scale: float = 3.0):
    from r1mega.config import Config, ModelConfig, ParallelConfig, validate
    from r1mega.parallel.layout import single_process_state
    from r1mega.train.setup import build_chunks, init_weights

    cfg = validate(Config(model=ModelConfig(vocab_size=128, num_layers=4, num_mtp_layers=1),
                          parallel=ParallelConfig()), 1)
    chunks = build_chunks(cfg, single_process_state())
    init_weights(chunks, seed=7)
    with torch.no_grad():
        for p in chunks.parameters():
            if p.dim() > 1:
                p.mul_(scale)
    return chunks, single_process_state()


def target_probs(logits: torch.Tensor, temperature: float, top_p: float, top_k: int) -> torch.Tensor:
    """The sampler's distribution, written independently: softmax(logits / T) cut to the top k, then to
    the smallest most-likely set whose mass reaches top_p, renormalised. logits [n, V] -> [n, V]."""
    scaled = logits.double() / temperature
    if top_k:
        kth = scaled.topk(top_k, -1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, -math.inf)
    p = scaled.softmax(-1)
    if top_p < 1:
        srt, order = p.sort(-1, descending=True)
        before = srt.cumsum(-1) - srt  # mass strictly above each token
        keep_sorted = before < top_p
        keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
        p = p * keep
        p = p / p.sum(-1, keepdim=True)
    return p


def pit_values(chunks, ps, prompt, rollout, gen, first: int, seed: int = 0) -> tuple[torch.Tensor, int]:
    """Randomized probability integral transform of completion tokens first.. of every row: iid
    uniform on (0, 1) exactly when each token was drawn from the target given its prefix."""
    from r1mega.kernels.block_attention import documents_from_pad

    model = chunks[0]
    tokens = rollout.tokens
    B, n = tokens.shape
    P = len(prompt)
    with torch.no_grad():
        pad = torch.zeros(B, dtype=torch.long)
        pos = torch.arange(n)[None, :].expand(B, n)
        logits = model(tokens, position_ids=pos, attn_mask=documents_from_pad(pad, n)).logits  # [n, B, V]
    g = torch.Generator().manual_seed(seed)
    us, outside = [], 0
    for j in range(first, n - P):
        pi = target_probs(logits[P - 1 + j].float(), gen.temperature, gen.top_p, gen.top_k)  # [B, V]
        x = tokens[:, P + j]
        order = pi.argsort(dim=-1, descending=True, stable=True)
        rank = order.argsort(dim=-1)
        srt = pi.gather(1, order)
        below = srt.cumsum(-1) - srt  # mass ranked before each sorted token
        px = pi.gather(1, x[:, None])[:, 0]
        outside += int((px == 0).sum())
        fx = below.gather(1, rank.gather(1, x[:, None]))[:, 0]
        us.append(fx + torch.rand(B, generator=g, dtype=torch.float64) * px)
    return torch.cat(us), outside


SAMPLED = {
    "t1": dict(temperature=1.0),
    "cold_top_p": dict(temperature=0.6, top_p=0.8),
    "hot_top_k_top_p": dict(temperature=1.6, top_p=0.9, top_k=12),
}


@pytest.mark.slow
@pytest.mark.parametrize("draft", ["mtp", "unigram"])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("case", list(SAMPLED))
def test_sampled_tokens_follow_the_target(monkeypatch, case, k, draft):
    from scipy.stats import kstest

    chunks, ps = soft_model()
    prompt, B = [5, 9, 17, 3], 1500
    gen = GenerationConfig(max_new_tokens=7, block_size=BS, seed=3, **SAMPLED[case])
    rows = torch.arange(B)
    plain = generate(chunks, ps, [prompt] * B, gen, rows=rows)
    if draft == "unigram":  # a context-free draft near the outputs' frequencies: many acceptances
        freq = torch.bincount(plain.tokens[:, len(prompt) + 1:].reshape(-1), minlength=128).double()
        bias = (freq + 0.5).log().float()
        monkeypatch.setattr(SpeculativeBatcher, "_mtp_logits", lambda self, h: bias.expand(h.shape[0], -1).clone())
    spec = generate(chunks, ps, [prompt] * B, replace(gen, speculative="mtp", draft_tokens=k), rows=rows)
    if draft == "unigram":
        assert spec.draft_accepted > 0.1 * spec.draft_tokens, (spec.draft_accepted, spec.draft_tokens)
    u_plain, out_plain = pit_values(chunks, ps, prompt, plain, gen, first=2)
    u_spec, out_spec = pit_values(chunks, ps, prompt, spec, gen, first=2)
    assert out_plain <= 2 and out_spec <= 2  # only float-level disagreements at the top-p edge
    assert kstest(u_plain.numpy(), "uniform").pvalue > 1e-4  # the test itself is calibrated
    assert kstest(u_spec.numpy(), "uniform").pvalue > 1e-4, (spec.draft_accepted / spec.draft_tokens)
    # and the 3rd-token distributions agree between the engines (two-sample, same prompt)
    a, b = plain.tokens[:, len(prompt) + 2], spec.tokens[:, len(prompt) + 2]
    ca, cb = torch.bincount(a, minlength=128).double(), torch.bincount(b, minlength=128).double()
    seen = (ca + cb) > 0
    chi2 = (((ca - cb) ** 2) / (ca + cb).clamp(min=1))[seen].sum().item()
    from scipy.stats import chi2 as chi2_dist
    assert chi2_dist.sf(chi2, int(seen.sum()) - 1) > 1e-3


# ---- bad input: named errors, exit 2, nothing on disk lost ---------------------------------------

@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two tiny r1mega checkpoints (with and without the MTP module), a tokenizer and prompts."""
    import json
    from dataclasses import asdict

    from r1mega.config import Config, ModelConfig
    from r1mega.data.synthetic import pretrain_corpus
    from r1mega.data.tokenizer import train_sentencepiece
    from r1mega.parallel.layout import single_process_state
    from r1mega.train.checkpoint import save_checkpoint
    from r1mega.train.setup import build_chunks, init_weights
    from r1mega.train.optimizer import DistributedAdamW

    root = tmp_path_factory.mktemp("spec_cli")
    tok = train_sentencepiece(pretrain_corpus(200), str(root / "tok"), 384)
    out = {"tok": tok, "root": root}
    for name, mtp in (("plain", 0), ("mtp", 1)):
        cfg = Config(model=ModelConfig(vocab_size=384, num_layers=2, n_routed_experts=4, n_group=1,
                                       num_mtp_layers=mtp))
        ps = single_process_state()
        torch.manual_seed(0)
        chunks = build_chunks(cfg, ps)
        init_weights(chunks, 7)
        save_checkpoint(str(root / name), 1, chunks, DistributedAdamW(chunks, ps, cfg.optim), ps,
                        {"model_config": asdict(cfg.model)})
        out[name] = str(root / name)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Q: {i}+{i % 7}="}) + "\n" for i in range(4)))
    out["prompts"] = str(prompts)
    return out


def _generate(ckpts, model, out, *extra):
    from r1mega.cli import main

    return main(["generate", "--model", ckpts[model], "--tokenizer", ckpts["tok"], "--prompts", ckpts["prompts"],
                 "--out", str(out), "--template", "raw", "--max-new-tokens", "8", *extra])


def _tree(path):
    return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(path) for f in files}


@pytest.mark.parametrize("model, extra, key", [
    ("plain", ["--speculative", "mtp"], "--speculative"),
    ("mtp", ["--speculative", "mtp", "--draft-tokens", "0"], "--draft-tokens"),
    ("mtp", ["--speculative", "mtp", "--draft-tokens", "-3"], "--draft-tokens"),
    ("mtp", ["--speculative", "mtp", "--draft-tokens", "1000000000"], "--draft-tokens"),
])
def test_cli_bad_speculative_input(ckpts, tmp_path, capsys, model, extra, key):
    out = tmp_path / "out"
    assert _generate(ckpts, "mtp", out, "--temperature", "0") == 0  # an earlier store, kept whole
    before = _tree(out)
    capsys.readouterr()
    assert _generate(ckpts, model, out, "--temperature", "0", *extra) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err, err
    assert _tree(out) == before
    fresh = tmp_path / "fresh"  # and into a new directory: the same named error, nothing written
    assert _generate(ckpts, model, fresh, "--temperature", "0", *extra) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err, err
    assert not fresh.exists() or not _tree(fresh)


def test_cli_speculative_greedy_equals_plain(ckpts, tmp_path):
    import json

    def completions(out):
        recs = []
        for name in sorted(os.listdir(out)):
            if name.startswith("shard-"):
                recs += [json.loads(line) for line in open(os.path.join(out, name))]
        return {r["id"]: r["completion"] for r in recs}

    for i, extra in enumerate([[], ["--stop", "1", "--stop", " ", "--samples", "2"]]):
        assert _generate(ckpts, "mtp", tmp_path / f"a{i}", "--temperature", "0", *extra) == 0
        assert _generate(ckpts, "mtp", tmp_path / f"b{i}", "--temperature", "0", "--speculative", "mtp",
                         "--draft-tokens", "3", *extra) == 0
        assert completions(tmp_path / f"a{i}") == completions(tmp_path / f"b{i}")
        # the same command again resumes the finished store: nothing added, nothing lost
        before = _tree(tmp_path / f"b{i}")
        assert _generate(ckpts, "mtp", tmp_path / f"b{i}", "--temperature", "0", "--speculative", "mtp",
                         "--draft-tokens", "3", *extra) == 0
        assert _tree(tmp_path / f"b{i}") == before


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "tiny", "r1_zero_demo.yaml")
STUDENT = os.path.join(ROOT, "configs", "tiny", "distill_student.yaml")


@pytest.mark.parametrize("paths, overrides, key", [
    ([DEMO], ["rl.draft_tokens=0"], "rl.draft_tokens"),
    ([DEMO], ["rl.speculative=mtp", "rl.draft_tokens=100000"], "rl.draft_tokens"),
    ([DEMO], ["rl.speculative=eagle"], "rl.speculative"),
    ([DEMO], ["rl.mtp_weight=-0.1"], "rl.mtp_weight"),
    ([DEMO], ["rl.speculative=mtp", "model.num_mtp_layers=0"], "rl.speculative"),
    ([DEMO, STUDENT], ["rl.speculative=mtp"], "rl.speculative"),
    ([DEMO, STUDENT], ["rl.mtp_weight=0.3"], "rl.mtp_weight"),
])
def test_rl_speculative_keys_checked_up_front(paths, overrides, key):
    from r1mega.config import ConfigError, load_config, validate_rl, validate_training

    with pytest.raises(ConfigError) as e:
        validate_rl(validate_training(load_config(paths, overrides), 1, needs_data=False), 1)
    assert e.value.key == key, str(e.value)


def test_engine_refuses_draft_counts_out_of_range(model):
    chunks, ps = model
    for k in (0, -1, 10 ** 9):
        with pytest.raises(ValueError, match="draft_tokens"):
            generate(chunks, ps, PROMPTS, greedy(speculative="mtp", draft_tokens=k))


# ---- layouts ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("par, world", [(dict(tp=2, ep=2), 4), (dict(pp=2), 2)])
def test_layouts_draw_the_one_process_speculative_samples(model, par, world):
    from spawn_cases import run_ranks
    from speculative_probe_workers import probe_configs, probe_rows, speculative_probe_worker

    chunks, ps = model
    prompts, keys = probe_rows()
    per_rank = run_ranks(speculative_probe_worker, world, par)
    for name, gen in probe_configs().items():
        one = generate(chunks, ps, prompts, gen, rows=torch.tensor(keys))
        got = {}
        for r in per_rank:
            comps, lps, _ = r[name]
            for k, c, lp in zip(r["keys"], comps, lps):
                got.setdefault(k, (c, lp))
                assert got[k][0] == c, (name, par, k)
        for k, c in zip(keys, one.completions()):
            assert got[k][0] == c, (name, par, k)
            torch.testing.assert_close(got[k][1], one.logprobs[k][one.completion_mask[k]], atol=2e-5, rtol=0)
        if par.get("ep"):
            assert len({r[name][2] for r in per_rank}) == 1, name  # the EP group ran the same forwards


# ---- DeepSeek-V3.2: sparse attention in the verification and in the draft's cache ----------------

@pytest.mark.parametrize("draft", ["oracle", "half", "mtp"])
def test_v32_greedy_equals_plain(tmp_path_factory, monkeypatch, draft):

    from r1mega.models.family import family_for_hf
    from r1mega.models.weights import load_hf_weights
    from r1mega.parallel.layout import single_process_state
    from tiny_hf import add_mtp_layer, save_peaked_v32

    path = str(tmp_path_factory.mktemp("v32mtp") / "hf")
    save_peaked_v32(path)  # peaked logits: no near-ties between the one- and k+1-position forwards
    add_mtp_layer(path)
    family, mcfg = family_for_hf(path)
    assert mcfg.num_mtp_layers == 1
    ps = single_process_state()
    m = family.build_stage(mcfg, ps)
    load_hf_weights(m, path)
    prompts = [list(range(3, 3 + n)) for n in (1, 3, 4, 5, 9, 13)]
    plain = generate(m, ps, prompts, greedy(max_new_tokens=14))
    if draft != "mtp":
        oracle(monkeypatch, plain.completions(), (lambda r, p: p % 3 == 1) if draft == "half" else (lambda r, p: False))
    for k in (1, 3):
        spec = generate(m, ps, prompts, greedy(max_new_tokens=14, speculative="mtp", draft_tokens=k))
        assert_same(plain, spec)


# ---- GRPO with speculative rollouts and the MTP loss: gap, acceptance, resume ----------------------

def test_grpo_speculative_resume_equals_uninterrupted(tmp_path):
    import json

    from r1mega.config import load_config
    from r1mega.rl.grpo import grpo

    def run(run_dir, steps):
        cfg = load_config(DEMO, [f"train.run_dir={run_dir}", f"data.cache_dir={tmp_path}/data", f"train.steps={steps}",
                                 "train.save_interval=2", "rl.group_size=4", "rl.prompts_per_step=4",
                                 "rl.speculative=mtp", "rl.draft_tokens=2", "rl.mtp_weight=0.3",
                                 "data.micro_batch_size=8", "data.global_batch_size=8", "data.synthetic_docs=300",
                                 "train.log_interval=1"])
        grpo(cfg, eval_problems=0)
        return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]

    straight = run(tmp_path / "a", 3)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 3)  # from the step-2 checkpoint: the MTP module's weights and moments too
    assert [r["step"] for r in straight] == [r["step"] for r in resumed] == [1, 2, 3]
    for a, b in zip(straight, resumed):
        assert a["logprob_gap_max"] < 2e-6 and 0 < a["draft_acceptance"] <= 1 and a["mtp_loss"] > 0, a
        for key in ("reward", "loss", "draft_acceptance", "mtp_loss", "response_len", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (key, a["step"])


# ---- the draft itself: the MTP layer on its paged cache equals the training-time MTP forward -------

@pytest.mark.parametrize("kw", [
    dict(temperature=0.0),
    dict(temperature=1.0, seed=4, max_rows=3),  # refill; samples of a prompt admitted at different steps
    dict(temperature=0.9, top_p=0.9, seed=2, max_cache_tokens="least"),
])
def test_first_draft_equals_the_training_mtp_forward(model, monkeypatch, kw):
    """Greedy equality cannot see a wrong draft (it only lowers acceptance): compare every step's
    first-draft logits with the MTP layer run over the row's final sequence without a cache."""
    from r1mega.kernels.block_attention import documents_from_pad

    chunks, ps = model
    m = chunks[0]
    seen = []
    real_draft, real_logits = SpeculativeBatcher._draft, SpeculativeBatcher._mtp_logits

    def _mtp_logits(self, h):
        out = real_logits(self, h)
        if self.probe_first is None:
            self.probe_first = out.clone()
        return out

    def _draft(self, live, ids, tokens, a, lengths, slots, t0, rowkey):
        self.probe_first = None
        d = real_draft(self, live, ids, tokens, a, lengths, slots, t0, rowkey)
        seen.extend((r.index, int(lengths[i] + a[i]), self.probe_first[i]) for i, r in enumerate(live))
        return d

    monkeypatch.setattr(SpeculativeBatcher, "_mtp_logits", _mtp_logits)
    monkeypatch.setattr(SpeculativeBatcher, "_draft", _draft)
    prompts = PROMPTS + [[5, 6, 7], [3, 4, 5, 6, 7, 8, 9, 10]]
    if kw.get("max_cache_tokens") == "least":
        kw = dict(kw, max_cache_tokens=least_budget(prompts, 12, 3))
    spec = generate(chunks, ps, prompts, GenerationConfig(max_new_tokens=12, block_size=BS, speculative="mtp",
                                                          draft_tokens=3, **kw))
    mtp = m.mtp[str(min(int(i) for i in m.mtp))]
    refs = {}
    with torch.no_grad():
        for i, (p, c) in enumerate(zip(prompts, spec.completions())):
            ids = torch.tensor([p + c])
            n = ids.shape[1]
            pos = torch.arange(n)[None]
            mask = documents_from_pad(torch.zeros(1, dtype=torch.long), n)
            h = m(ids, position_ids=pos, attn_mask=mask, keep_hidden=True).hidden
            nxt = torch.cat([ids[:, 1:], ids[:, :1]], 1)
            cos, sin = m.rope.cos_sin(pos.t())
            out = mtp(h, m._embed(nxt.t()), m.rope, cos, sin, mask)
            refs[i] = (m.lm_head(mtp.shared_head.norm(out))[:, 0], n)
    checked = 0
    for row, at, logits in seen:
        ref, n = refs[row]
        if at + 1 < n:  # the token the entry reads was kept
            torch.testing.assert_close(logits, ref[at], atol=1e-4, rtol=1e-4, msg=f"row {row} position {at}")
            checked += 1
    assert checked > 40


def test_grpo_speculative_layouts_equal_one_process(tmp_path):
    """GRPO steps with speculative rollouts, the MTP loss and routing replay: PP2 and TP2 x EP2 log
    the one-process rewards, acceptance and MTP loss; sampler and trainer log-probs agree."""
    import json

    from r1mega.config import load_config
    from r1mega.rl.grpo import grpo
    from rl_workers import grpo_worker
    from spawn_cases import run_cases

    def overrides(name, layout):
        return [f"train.run_dir={tmp_path}/{name}", f"data.cache_dir={tmp_path}/data", "train.steps=2", *layout,
                "rl.group_size=4", "rl.prompts_per_step=4", "rl.speculative=mtp", "rl.draft_tokens=3",
                "rl.mtp_weight=0.3", "rl.routing_replay=true", "data.micro_batch_size=8",
                "data.global_batch_size=8", "data.synthetic_docs=300", "train.log_interval=1"]

    grpo(load_config(DEMO, overrides("one", [])), eval_problems=4)
    one = [json.loads(line) for line in open(tmp_path / "one" / "metrics.jsonl")]
    layouts = {"pp2": ["parallel.pp=2"], "tp2ep2": ["parallel.tp=2", "parallel.ep=2", "parallel.etp=1"]}
    runs = run_cases(2, {name: (grpo_worker, (overrides(name, layout),)) for name, layout in layouts.items()})
    for name in layouts:
        rows = runs[name][0]["rows"]
        assert [r["step"] for r in rows] == [1, 2]
        for a, b in zip(one, rows):
            assert b["logprob_gap_max"] < 2e-6, (name, b)
            assert b["reward"] == a["reward"] and b["draft_acceptance"] == a["draft_acceptance"], name
            assert b["mtp_loss"] == pytest.approx(a["mtp_loss"], rel=1e-5), name


@pytest.mark.parametrize("k", [1, 3])
def test_sampled_rows_do_not_depend_on_the_batch(model, k):
    """A row's speculative samples are keyed by (seed, row, position): the same whatever the row budget,
    the cache budget or the rows around it."""
    chunks, ps = model
    prompts = PROMPTS * 2
    gen = GenerationConfig(max_new_tokens=12, temperature=0.9, top_p=0.95, seed=8, block_size=BS, eos_id=2,
                           speculative="mtp", draft_tokens=k)
    keys = torch.arange(len(prompts))
    full = generate(chunks, ps, prompts, gen, rows=keys)
    for kw in (dict(max_rows=2), dict(max_rows=5, max_cache_tokens=least_budget(prompts, 12, k))):
        other = generate(chunks, ps, prompts, replace(gen, **kw), rows=keys)
        assert other.completions() == full.completions(), kw
        assert other.preemptions > 0 or "max_cache_tokens" not in kw
        torch.testing.assert_close(other.logprobs, full.logprobs, atol=2e-5, rtol=0)
    alone = generate(chunks, ps, prompts[3:4], gen, rows=keys[3:4])
    assert alone.completions() == full.completions()[3:4]


def test_sixteen_drafts_on_two_token_blocks(model, monkeypatch):
    """The largest draft count on tiny blocks: both block tables grow past their first width mid-run."""
    chunks, ps = model
    plain = generate(chunks, ps, PROMPTS, greedy(max_new_tokens=20, block_size=2, max_rows=4))
    oracle(monkeypatch, plain.completions(), lambda row, pos: pos % 7 == 6)
    spec = generate(chunks, ps, PROMPTS, greedy(max_new_tokens=20, block_size=2, max_rows=4, speculative="mtp",
                                                draft_tokens=16))
    assert_same(plain, spec)
