"""The host's top-p support at the edges: ties across the sorted prefix's end, -inf logits, one row
under several threads, neighbouring floats, extreme magnitudes, half-precision and padded logits. It
must be the 48 tensor rounds' support exactly, and decided on the host (no fallback to the rounds)."""
import pytest
import torch

from r1mega.inference import sampling
from r1mega.parallel.layout import single_process_state

PS = single_process_state()


def _tensor_rounds(monkeypatch):
    monkeypatch.setattr(sampling, "_bisection_settled", lambda *a: False)
    monkeypatch.setattr(sampling, "_bisection_on_host", lambda *a: None)


def _on_host(monkeypatch, cases):
    """Each case's support, and whether the host decided it."""
    used = []
    real = sampling._bisection_on_host
    monkeypatch.setattr(sampling, "_bisection_on_host", lambda *a: used.append(real(*a)) or used[-1])
    out = []
    for x, p, k, vocab in cases:
        used.clear()
        out.append((sampling.sampler_support(x, PS, p, k, vocab), used[0] is not None))
    monkeypatch.setattr(sampling, "_bisection_on_host", real)
    return out


def _edge_cases():
    g = torch.Generator().manual_seed(5)
    cases = []
    for V, b in ((4096, 300), (4097, 1), (32001, 2)):
        x = torch.randn(b, V, generator=g) * 3
        up = torch.nextafter(torch.ones(b, V), torch.full((b, V), 2.0))
        cases += [
            (torch.where(torch.rand(b, V, generator=g) < 0.5, up, torch.ones(b, V)), 0.5, 0, None),  # neighbours
            (1.0 + torch.arange(V).float().expand(b, V) * 2**-23, 0.9, 0, None),  # consecutive floats
            (3e38 + x * 1e31, 0.9, 0, None),  # midpoints overflow to inf, as in the tensor loop
            (x * 1e-40, 0.9, 0, None),  # denormals
            ((x * 2).bfloat16(), 0.9, 0, None), ((x * 2).half(), 0.95, 0, None),
            (x, 0.9, 20, V - 100), (x, 0.95, 0, V - 3),  # a padded vocabulary, with and without top-k
            (x, 1e-9, 0, None), (x, 1 - 1e-9, 0, None), (x, 1 - 2**-20, 0, None),
            (torch.zeros(b, V), 0.5, 0, None),  # all tied
            (torch.full((b, V), -1e4).index_fill(1, torch.tensor([3]), 0.0), 1 - 1e-9, 0, None),  # one token
        ]
    return cases


def test_edge_cases_on_the_host_equal_the_tensor_rounds(monkeypatch):
    cases = _edge_cases()
    fast = _on_host(monkeypatch, cases)
    assert all(used for _, used in fast)
    _tensor_rounds(monkeypatch)
    for i, ((x, p, k, vocab), (got, _)) in enumerate(zip(cases, fast)):
        assert torch.equal(got, sampling.sampler_support(x, PS, p, k, vocab)), (i, x.shape, p, k, vocab)


def test_a_threshold_tied_with_the_prefix_end_grows_the_prefix(monkeypatch):
    # half-step logits: the crossing of a row lies in a tie group that runs past the 2,048-logit prefix
    x = ((torch.randn(5, 32001, generator=torch.Generator().manual_seed(0)) * 3) * 2).round() / 2
    (got, used), = _on_host(monkeypatch, [(x, 0.9, 0, None)])
    assert used  # before: the tensor rounds ran for all 5 rows (after sorting 2,048 of each)
    _tensor_rounds(monkeypatch)
    assert torch.equal(got, sampling.sampler_support(x, PS, 0.9, 0))


def test_neg_inf_logits_have_no_mass_and_leave_top_p_on(monkeypatch):
    # -inf logits (a caller's mask; a top-k wider than the finite logits): the support is the one of
    # the same logits at -1e30 (no mass either), not the whole vocabulary (the rounds started at -inf)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 5000, generator=g) * 3
    masked = torch.rand(4, 5000, generator=g) < 0.4
    x[3, 10:] = float("-inf")  # a row of 10 finite logits, under top-k 50
    low = x.masked_fill(masked, -1e30).masked_fill(x == float("-inf"), -1e30)
    x = x.masked_fill(masked, float("-inf"))
    cases = [(x, 0.9, 0, None), (x, 0.9, 50, None), (x, 0.5, 0, 4990)]
    fast = _on_host(monkeypatch, cases)
    for (_, p, k, vocab), (got, used) in zip(cases, fast):
        want = sampling.sampler_support(low, PS, p, k, vocab)
        assert used and torch.equal(got, want) and int(got.sum()) < 2000, (p, k, int(got.sum()))
    _tensor_rounds(monkeypatch)
    for (_, p, k, vocab), (got, _) in zip(cases, fast):
        assert torch.equal(got, sampling.sampler_support(x, PS, p, k, vocab))
    keys = sampling.row_keys(1, 2, torch.arange(4))
    tokens, logprobs = sampling.sample(x, PS, 1.0, 0.9, keys=keys)
    assert torch.isfinite(logprobs).all() and torch.equal(tokens, sampling.sample(low, PS, 1.0, 0.9, keys=keys)[0])


def test_one_row_under_several_threads_equals_the_tensor_rounds(monkeypatch):
    # with several threads a one-row [1, V] sum is split among them, a [1, m, V] one is not: the host's
    # verdicts must be the loop's own sums (at top_p between the two, one id in or out)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        if torch.get_num_threads() < 2:
            pytest.skip("one intra-op thread only")
        x = torch.randn(1, 151936, generator=torch.Generator().manual_seed(0)) * 0.5
        probs = (x - x.max()).exp()
        total = probs.sum(-1)
        top = x.sort(-1, descending=True).values[0]
        disputed = []
        for j in range(1000, 60000, 997):
            t = top[j:j + 1]
            split = (probs * (x >= t[:, None])).sum(-1) / total
            serial = (probs[:, None] * (x[:, None] >= t.expand(1, 2)[:, :, None])).sum(-1)[:, 0] / total
            if not torch.equal(split, serial):
                disputed.append(max(split.item(), serial.item()))
            if len(disputed) == 4:
                break
        assert len(disputed) == 4
        fast = _on_host(monkeypatch, [(x, p, 0, None) for p in disputed])
        _tensor_rounds(monkeypatch)
        for p, (got, used) in zip(disputed, fast):
            assert used and torch.equal(got, sampling.sampler_support(x, PS, p, 0)), p
    finally:
        torch.set_num_threads(threads)


def _tp_support(rank: int, world: int, x: torch.Tensor, p: float, k: int) -> torch.Tensor:
    from r1mega.parallel.layout import ParallelConfig, build_parallel_state
    ps = build_parallel_state(ParallelConfig(tp=world, pp=1, ep=1, etp=1, dp=1))
    n = x.shape[-1] // world
    return sampling.sampler_support(x[:, rank * n:(rank + 1) * n].contiguous(), ps, p, k)


def test_masked_rows_under_tp_keep_the_one_process_support():
    # masked ids on one shard (wide: the bisection starts at the lowest logit with mass), and on the
    # other a logit 500 below the top (no mass either, but not masked): every rank, and one process,
    # must start alike
    from spawn_cases import run_ranks
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 8192, generator=g) * 3
    x[0, :4096:3] = float("-inf")
    x[1, :4096:2] = -1e30
    x[1, 5000] = x[1].max() - 500
    x[2, 100] = float("-inf")
    for p, k in ((0.9, 0), (0.5, 40)):
        shards = run_ranks(_tp_support, 2, x, p, k)
        assert torch.equal(torch.cat(shards, -1), sampling.sampler_support(x, PS, p, k)), (p, k)
