"""Top-p sampling with a real vocabulary (tens of thousands of tokens, many rows): one process finds
the support on the host from the largest logits alone; it must be the 48 tensor rounds' exactly."""
import pytest
import torch

from r1mega.inference import sampling
from r1mega.parallel.layout import single_process_state


def _cases():
    g = torch.Generator().manual_seed(0)
    cases = []
    for V, b in ((5000, 64), (50000, 3), (32001, 20)):
        for kind in ("peaked", "flat", "ties", "one", "zipf"):
            x = torch.randn(b, V, generator=g)
            if kind == "peaked":
                x = x * 4
            elif kind == "flat":
                x = x * 0.05  # the top-p set is most of the vocabulary: the prefix grows to a full sort
            elif kind == "ties":
                x = (x * 3).round()
            elif kind == "one":
                x[:, 7] += 40  # one token holds nearly all the mass
            else:  # a language model's long tail: logits falling with the log of the rank
                x = -1.1 * torch.log1p(torch.rand(b, V, generator=g).argsort(-1).float()) + 0.3 * x
            for top_p, top_k in ((0.95, 0), (0.5, 0), (1e-6, 0), (0.999, 0), (0.9, 50)):
                cases.append((x, top_p, top_k))
    return cases


@pytest.mark.parametrize("one_pass", [sampling.ONE_PASS_ELEMENTS, 0])  # 0: two rows at a time
def test_large_vocab_top_p_support_on_the_host_equals_the_tensor_rounds(monkeypatch, one_pass):
    ps = single_process_state()
    monkeypatch.setattr(sampling, "ONE_PASS_ELEMENTS", one_pass)
    cases = _cases()
    used = []
    real = sampling._bisection_on_host
    monkeypatch.setattr(sampling, "_bisection_on_host", lambda *a: used.append(real(*a)) or used[-1])
    fast = [sampling.sampler_support(x, ps, p, k) for x, p, k in cases]
    assert sum(u is not None for u in used) >= len(cases) - 3  # the host path decided (almost) every case
    monkeypatch.setattr(sampling, "_bisection_settled", lambda *a: False)
    monkeypatch.setattr(sampling, "_bisection_on_host", lambda *a: None)
    for (x, p, k), got in zip(cases, fast):
        assert torch.equal(got, sampling.sampler_support(x, ps, p, k)), (x.shape, p, k)


def test_noise_drawn_for_the_support_alone_has_the_whole_noise_bits():
    keys = torch.randint(-2**63, 2**63 - 1, (7,), dtype=torch.int64, generator=torch.Generator().manual_seed(1))
    for first, n in ((0, 1003), (500, 64), (-3, 5)):
        whole = sampling.gumbel_noise(keys, first, n)
        rows = torch.randint(0, 7, (301,), generator=torch.Generator().manual_seed(n))
        cols = torch.randint(0, n, (301,), generator=torch.Generator().manual_seed(first + 9))
        assert torch.equal(sampling.gumbel_noise_at(keys, rows, cols + first), whole[rows, cols])
        assert torch.equal(sampling.uniform_noise_at(keys, rows, cols + first),
                           sampling.uniform_noise(keys, first, n)[rows, cols])


def test_sampling_with_the_support_noise_draws_the_whole_noise_samples(monkeypatch):
    ps = single_process_state()
    draws = []
    for x, p, k in _cases()[::2]:
        for temperature in (1.0, 0.6):
            keys = sampling.row_keys(3, 11, torch.arange(x.shape[0]))
            draws.append((x, p, k, temperature, keys, sampling.sample(x, ps, temperature, p, k, keys=keys)))
    monkeypatch.setattr(sampling, "SPARSE_NOISE", 10**18)  # the whole vocabulary's noise, every time
    sparse_seen = 0
    for x, p, k, temperature, keys, (tokens, logprobs) in draws:
        support = sampling.sampler_support(x / temperature, ps, p, k)
        sparse_seen += int(support.sum()) * 8 < support.numel()
        got = sampling.sample(x, ps, temperature, p, k, keys=keys)
        assert torch.equal(got[0], tokens) and torch.equal(got[1], logprobs)
    assert sparse_seen >= len(draws) // 2  # most cases drew the support's noise alone above
