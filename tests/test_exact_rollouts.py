"""rl.exact_rollouts: the batch-invariant kernels give each row the same bits whatever batch it is in,
and GRPO's sampler log-probs are bitwise the trainer's (gap exactly 0) in float32 and bfloat16,
on one process, TP2 x EP2 and PP2."""
import pytest
import torch
import torch.nn.functional as F

from r1mega.config import load_config, validate_rl, validate_training
from r1mega.errors import ConfigError
from r1mega.kernels import batch_invariant as bi
from r1mega.kernels.linear import grouped_linear, linear
from spawn_cases import run_ranks
from rl_workers import exact_grpo_worker

DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k, n", [(64, 96), (512, 1024)])
def test_linear_and_bmm_rows_do_not_depend_on_the_batch(dtype, k, n):
    """The first rows of a batch give the same bits alone and with up to 300 other rows; a probe row
    the same at any place. (512, 1024) in bf16 is a shape where plain GEMMs change with M even at
    multiples of 16.)"""
    torch.manual_seed(0)
    w = (torch.randn(n, k) * 0.05).to(dtype)
    probe = torch.randn(k).to(dtype)
    b = torch.randn(5, k, 48).to(dtype)
    ref = ref_b = None
    plain_differs = False
    for m in (1, 2, 3, 5, 16, 17, 31, 48, 64, 65, 96, 130, 300):
        x = torch.randn(m, k).to(dtype)
        with bi.exact_mode():
            for first in (1, 3, 16):
                if first <= m:
                    assert torch.equal(linear(x, w)[:first], linear(x[:first], w)), (m, first)
            at = int(torch.randint(0, m, ()))
            x[at] = probe
            row = linear(x, w)[at]
        ref = row if ref is None else ref
        assert torch.equal(row, ref), (m, at)
        plain_differs |= not torch.equal(F.linear(x, w)[:1], F.linear(x[:1], w))
        a = torch.randn(5, m, k).to(dtype)
        a[2, at] = probe
        got = bi.bmm(a, b)[2, at]
        ref_b = got if ref_b is None else ref_b
        assert torch.equal(got, ref_b), (m, at)
    if dtype == torch.float32:  # what the mode is for: plain fp32 GEMMs are not invariant (bf16 ones at K
        # 512 were on one CPU, not on another: AMD EPYC, AVX-512)
        assert plain_differs


@pytest.mark.parametrize("dtype, k, n", [(torch.float32, 64, 96), (torch.float32, 1024, 256),
                                         (torch.bfloat16, 64, 96), (torch.bfloat16, 512, 1024)])
def test_linear_rows_one_call(dtype, k, n):
    """One thread: a probe row gives the same bits among up to 2,100 rows, with a row-major weight (one
    padded call up to ROW_MAJOR_ROWS in fp32 and in bf16 at K <= 256, cut beyond; 64-row calls for
    bf16 at K 512) and with a transposed one, whose fp32 kernels change from M = 192 at K = 1024."""
    torch.manual_seed(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        w = (torch.randn(n, k) * 0.05).to(dtype)
        for weight, sizes in ((w, (1, 17, 64, 200, 1000, 2048, 2100)), (w.t().contiguous().t(), (1, 130, 200, 300))):
            probe, ref = torch.randn(k).to(dtype), None
            for m in sizes:
                x = torch.randn(m, k).to(dtype)
                at = int(torch.randint(0, m, ()))
                x[at] = probe
                with bi.exact_mode():
                    row = linear(x, weight)[at]
                ref = row if ref is None else ref
                assert torch.equal(row, ref), (m, at, weight.is_contiguous())
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k, n", [(64, 32), (512, 1024)])
def test_expert_rows_do_not_depend_on_other_rows(dtype, k, n):
    """Expert 1's first 40 rows: the same bits whatever the other experts hold and however many rows
    follow them in their own group; and the right product."""
    torch.manual_seed(1)
    E = 4
    w = (torch.randn(E, n, k) * 0.05).to(dtype)
    x0 = torch.randn(40, k).to(dtype)
    ref = None
    with bi.exact_mode():  # no rows at all (an expert-parallel rank with nothing routed to it)
        assert grouped_linear(torch.zeros(0, k).to(dtype), w, torch.zeros(E, dtype=torch.int32)).shape == (0, n)
    for counts in ([0, 40, 0, 0], [3, 45, 0, 2], [0, 104, 1, 40], [70, 200, 33, 0]):
        rows = torch.randn(sum(counts), k).to(dtype)
        rows[counts[0]:counts[0] + 40] = x0
        offsets = torch.tensor(counts).cumsum(0).to(torch.int32)
        with bi.exact_mode():
            got = grouped_linear(rows, w, offsets)[counts[0]:counts[0] + 40]
        ref = got if ref is None else ref
        assert torch.equal(got, ref), counts
    expect = F.linear(x0.float(), w[1].float())
    assert torch.allclose(ref.float(), expect, rtol=2e-2 if dtype == torch.bfloat16 else 1e-5, atol=2e-2)
    # gradients: the default grouped GEMM's (the exact mode changes only how the forward is cut)
    grads = []
    for exact in (False, True):
        r_, w_ = rows.clone().requires_grad_(), w.clone().requires_grad_()
        with bi.exact_mode(exact):
            (grouped_linear(r_, w_, offsets).float() * torch.linspace(-1, 1, n)).sum().backward()
        grads.append((r_.grad.float(), w_.grad.float()))
    tol = dict(rtol=2e-2, atol=5e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-4)
    assert torch.allclose(grads[0][0], grads[1][0], **tol) and torch.allclose(grads[0][1], grads[1][1], **tol)


def test_activations_position_free():
    """Within rounding of torch's, and a value gives the same bits at any index, whatever the length
    (torch's fp32 sigmoid does not: its scalar tail rounds differently)."""
    x = torch.linspace(-30, 30, 1001)
    assert torch.allclose(bi.sigmoid(x), torch.sigmoid(x), atol=1e-7)
    assert torch.allclose(bi.silu(x), F.silu(x), rtol=1e-6, atol=1e-6)
    for f in (bi.sigmoid, bi.silu):
        whole = f(x)
        for lo in (0, 1, 3, 7):
            for n in (*range(1, 70), 100, 129):
                assert torch.equal(f(x[lo:lo + n]), whole[lo:lo + n]), (f.__name__, lo, n)


def test_latent_attention_same_for_a_query_alone_packed_or_in_a_chunked_backward(monkeypatch):
    """A document's queries: all at once (training), with grad (chunked + recomputed), and each one
    alone over a cache-shaped key read (decoding): the same bits; and equal to a dense softmax."""
    torch.manual_seed(2)
    n, L, h, d, r = 2, 70, 3, 12, 8
    q = torch.randn(n, L, h, d)
    keys = torch.randn(n, L, d)
    full = bi.latent_attention(q, keys, None, 0.3, r)  # query j at position j
    assert torch.equal(bi.latent_attention(q, keys, torch.arange(L).expand(n, L), 0.3, r), full)
    grads = []
    for budget in (bi.SCORE_BUDGET, 0):  # scores kept whole; recomputed query chunks
        monkeypatch.setattr(bi, "SCORE_BUDGET", budget)
        qg = q.clone().requires_grad_()
        with torch.enable_grad():
            out = bi.latent_attention(qg, keys, None, 0.3, r)
            (out * torch.linspace(-1, 1, r)).sum().backward()
        assert torch.equal(out.detach(), full)
        grads.append(qg.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    scores = torch.einsum("nthd,nkd->nhtk", q, keys) * 0.3
    causal = torch.arange(L)[None, :] <= torch.arange(L)[:, None]
    dense = torch.einsum("nhtk,nkr->nthr", scores.masked_fill(~causal, float("-inf")).softmax(-1), keys[..., :r])
    assert torch.allclose(full, dense, atol=1e-5)
    with torch.no_grad():
        for p in (0, 1, 31, 32, 33, 69):
            # a decoding step: one query, keys up to its position followed by stale slots
            stale = torch.cat([keys[:, :p + 1], torch.randn(n, 5, d)], 1)
            alone = bi.latent_attention(q[:, p:p + 1], stale, torch.full((n, 1), p), 0.3, r)
            assert torch.equal(alone[:, 0], full[:, p]), p


def test_document_layout_places_tokens_at_their_positions():
    docs = torch.tensor([[0, 0, 0, 1, 1, -6, -7], [-1, -2, 0, 0, 0, 0, 0]])
    lay = bi.DocumentLayout(docs)
    assert (lay.docs, lay.width) == (7, 5)
    x = torch.arange(14).view(7, 2).reshape(-1, 1).float()  # token (i, b) -> value i * 2 + b
    back = lay.gather(lay.scatter(x))
    assert torch.equal(back, x)
    rows = lay.scatter(x)[..., 0]
    assert rows[0, :3].tolist() == [0, 2, 4] and rows[1, :2].tolist() == [6, 8]  # row 0: docs 0 and 1
    assert rows[6, :5].tolist() == [5, 7, 9, 11, 13]  # row 1 (after its two pads) starts at position 0


def _cfg(extra):
    return load_config("configs/tiny/r1_zero_demo.yaml", ["rl.exact_rollouts=true", *extra])


def test_config_refuses_what_is_not_batch_invariant():
    for extra, world, word in ((["train.fp8=blockwise"], 1, "fp8"), (["model.scoring_func=softmax"], 1, "sigmoid"),
                               (["parallel.cp=2"], 2, "cp")):
        cfg = _cfg(extra)
        with pytest.raises(ConfigError, match="exact_rollouts") as e:
            validate_rl(validate_training(cfg, world, needs_data=False), world)
        assert word in str(e.value)


# ---- GRPO end to end ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_speculative_exact_rollouts_gap_is_exactly_zero(tmp_path, dtype):
    """MTP-drafted rollouts verified on the exact paths: the verification's log-probs are the trainer's bits."""
    per_rank = _grpo(tmp_path, dtype, ["rl.speculative=mtp", "rl.draft_tokens=2"], 1)
    _check(per_rank)
    assert all(r["draft_acceptance"] > 0 for r in per_rank[0]["rows"])


def _grpo(tmp_path, dtype, layout, world):
    overrides = _overrides(tmp_path, dtype, layout)
    if world == 1:
        return [exact_grpo_worker(0, 1, overrides)]
    return run_ranks(exact_grpo_worker, world, overrides)


def _overrides(tmp_path, dtype, layout):
    return [f"train.run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/data", "train.steps=3", *layout,
            f"train.dtype={dtype}", "rl.exact_rollouts=true", "rl.tis=true",
            "rl.group_size=4", "rl.prompts_per_step=4", "rl.updates_per_rollout=1",
            "rl.entropy_coef=0.05",  # an update every step, whatever the rewards: step 2 samples new weights
            "data.micro_batch_size=8", "data.global_batch_size=8", "data.synthetic_docs=300"]


def _check(per_rank):
    rows = per_rank[0]["rows"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["logprob_gap_max"] == 0.0 and r["logprob_gap_mean"] == 0.0 and r["sampler_kl"] == 0.0, r
        assert r["clip_frac"] == 0.0 and r["tis_capped_frac"] == 0.0, r
    assert any(r["grad_norm"] > 0 for r in rows)  # the weights moved between rollouts
    for rank in per_rank:
        for call in rank["calls"]:  # one minibatch per rollout: every update is a first one
            assert call["ratio"].numel() == 0 or bool((call["ratio"] == 1).all())
            assert call["tis"] is not None and bool((call["tis"] == 1).all())
    assert any(call["ratio"].numel() for rank in per_rank for call in rank["calls"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_grpo_gap_is_exactly_zero_one_process(tmp_path, dtype):
    _check(_grpo(tmp_path, dtype, [], 1))


TWO_RANK_LAYOUTS = {"tp2xep2": ["parallel.tp=2", "parallel.ep=2", "parallel.etp=1"], "pp2": ["parallel.pp=2"]}


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    """Every (layout, dtype) case below in one spawn of two ranks, each in its own run directory."""
    from spawn_cases import run_cases

    root = tmp_path_factory.mktemp("exact_two_ranks")
    return run_cases(2, {f"{name}-{dtype}": (exact_grpo_worker, (_overrides(root / f"{name}-{dtype}", dtype, layout),))
                         for name, layout in TWO_RANK_LAYOUTS.items() for dtype in ("float32", "bfloat16")})


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layout", list(TWO_RANK_LAYOUTS))
def test_grpo_gap_is_exactly_zero_under_a_layout(two_rank_runs, dtype, layout):
    _check(two_rank_runs[f"{layout}-{dtype}"])


def test_exact_mode_computes_the_same_model():
    """The exact paths are another way of computing the same model: packed rows' logits and
    gradients within float32 rounding of the default paths, and greedy decoding picks the same tokens."""
    from r1mega.config import Config, ModelConfig, validate
    from r1mega.inference.generate import GenerationConfig, generate
    from r1mega.parallel.layout import single_process_state
    from r1mega.train.setup import build_chunks, init_weights

    cfg = validate(Config(model=ModelConfig(vocab_size=128, num_layers=3, num_mtp_layers=0)), 1)
    ps = single_process_state()
    chunks = build_chunks(cfg, ps)
    init_weights(chunks, seed=4)
    model = chunks[0]
    torch.manual_seed(0)
    ids = torch.randint(1, 128, (2, 45))
    docs = torch.tensor([[0] * 20 + [1] * 25, [0] * 40 + [-1, -2, -3, -4, -5]])
    pos = torch.cat([torch.arange(20), torch.arange(25)]).expand(2, 45).clone()
    pos[1] = torch.cat([torch.arange(40), torch.arange(40, 45)])

    def run(exact: bool):
        model.zero_grad()
        with bi.exact_mode(exact):
            out = model(ids, position_ids=pos, attn_mask=docs)
            out.logits.float().logsumexp(-1).sum().backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    logits, grads = run(False)
    logits_x, grads_x = run(True)
    assert torch.allclose(logits_x, logits, atol=1e-5, rtol=1e-5)
    assert grads.keys() == grads_x.keys()
    for name in grads:
        assert torch.allclose(grads_x[name], grads[name], atol=1e-5, rtol=1e-4), name
    prompts = [[5, 6, 7, 8, 9], [10, 11], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]]
    gen = GenerationConfig(max_new_tokens=40, temperature=0.0, max_rows=2)
    plain = generate(chunks, ps, prompts, gen)
    with bi.exact_mode():
        exact = generate(chunks, ps, prompts, gen)
    assert torch.equal(exact.tokens, plain.tokens)
    assert torch.allclose(exact.logprobs, plain.logprobs, atol=1e-5)


def test_recompute_reruns_in_the_forward_mode():
    from r1mega.parallel.recompute import recomputed

    seen = []

    def body(t):
        seen.append(bi.enabled())
        return bi.silu(t) if bi.enabled() else F.silu(t)

    x = torch.randn(3, 4, requires_grad=True)
    with bi.exact_mode():
        y = recomputed(True, body, x)
    assert not bi.enabled()
    y.sum().backward()  # outside the block
    assert seen == [True, True]


@pytest.mark.slow  # four ranks on a shared CPU
@pytest.mark.parametrize("dtype", ["float32"])
def test_grpo_gap_is_exactly_zero_under_tp4(tmp_path, dtype):
    """Four TP ranks: partial sums are added in rank order (a ring all-reduce's order would depend on
    where a value sits in the buffer)."""
    _check(_grpo(tmp_path, dtype, ["parallel.tp=4"], 4))
