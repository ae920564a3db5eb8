"""The torch backend's grouped expert GEMM (F.grouped_mm) equals the per-expert loop: outputs and
gradients of rows and weights, fp32 and bf16, with empty experts, no rows at all, and shapes
grouped_mm cannot take (which must fall back to the loop)."""
import os

import pytest
import torch

from r1mega.kernels import grouped_linear
from r1mega.kernels.linear import TorchBackend, _GroupedLinear, grouped_linear_loop, grouped_mm_usable


def _case(counts, d_in, d_out, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(counts)
    rows = torch.randn(n, d_in, generator=g).to(dtype)
    weight = (torch.randn(len(counts), d_out, d_in, generator=g) / d_in ** 0.5).to(dtype)
    offsets = torch.tensor(counts).cumsum(0).to(torch.int32)
    grad = torch.randn(n, d_out, generator=g).to(dtype)
    return rows, weight, offsets, grad


def _run(fn, rows, weight, offsets, grad):
    rows, weight = rows.clone().requires_grad_(), weight.clone().requires_grad_()
    out = fn(rows, weight, offsets)
    out.backward(grad)
    return out.detach(), rows.grad, weight.grad


def _reference(rows, weight, offsets, grad):
    """Independent float64 reference: each expert's block by hand."""
    rows, weight = rows.double().requires_grad_(), weight.double().requires_grad_()
    out = torch.zeros(rows.shape[0], weight.shape[1], dtype=torch.float64)
    start = 0
    for e, end in enumerate(offsets.tolist()):
        out[start:end] = rows[start:end] @ weight[e].t()
        start = end
    out.backward(grad.double())
    return out.detach(), rows.grad, weight.grad


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("counts", [[3, 0, 5, 1], [0, 0, 7, 0], [0, 0, 0], [2, 4, 0, 0, 9, 1, 0, 3]])
def test_grouped_mm_equals_loop(dtype, tol, counts):
    rows, weight, offsets, grad = _case(counts, 32, 16, dtype)
    assert grouped_mm_usable(rows, weight)
    grouped = _run(_GroupedLinear.apply, rows, weight, offsets, grad)
    loop = _run(grouped_linear_loop, rows, weight, offsets, grad)
    ref = _reference(rows, weight, offsets, grad)
    for a, b, r, what in zip(grouped, loop, ref, ("output", "d_rows", "d_weight")):
        assert a.dtype == b.dtype == dtype, what
        torch.testing.assert_close(a.double(), r, atol=tol, rtol=tol, msg=lambda m: f"grouped {what}: {m}")
        torch.testing.assert_close(b.double(), r, atol=tol, rtol=tol, msg=lambda m: f"loop {what}: {m}")
    if sum(counts):  # a non-trivial product, not zeros everywhere
        assert ref[0].abs().max() > 0.1 and ref[2].abs().max() > 0.1
    # empty experts get exactly zero weight gradient
    for e, c in enumerate(counts):
        if c == 0:
            assert grouped[2][e].abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unaligned_shapes_fall_back_and_agree(dtype):
    # inner dims of 6 / 10 elements break grouped_mm's 16-byte stride rule in forward or backward
    for d_in, d_out in ((6, 16), (16, 10), (6, 10)):
        rows, weight, offsets, grad = _case([2, 0, 3], d_in, d_out, dtype, seed=1)
        assert not grouped_mm_usable(rows, weight)
        ours = _run(TorchBackend().grouped_linear, rows, weight, offsets, grad)
        ref = _reference(rows, weight, offsets, grad)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        for a, r in zip(ours, ref):
            torch.testing.assert_close(a.double(), r, atol=tol, rtol=tol)


def test_backend_seam_uses_grouped_mm_and_takes_any_gradient_layout():
    rows, weight, offsets, _ = _case([4, 0, 2, 6], 16, 8, torch.float32, seed=2)
    rows.requires_grad_(), weight.requires_grad_()
    out = grouped_linear(rows, weight, offsets)
    assert out.grad_fn is not None and "GroupedLinear" in type(out.grad_fn).__name__
    # .sum() hands back an expanded (stride-0) gradient, .t() a transposed one
    (out.sum() + (out.t() * 2).sum()).backward()
    ref_rows, ref_weight = rows.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    (3 * grouped_linear_loop(ref_rows, ref_weight, offsets).sum()).backward()
    torch.testing.assert_close(rows.grad, ref_rows.grad)
    torch.testing.assert_close(weight.grad, ref_weight.grad)
    # a view whose start is not 16-byte aligned is accepted too
    view = torch.randn(13 * 16 + 1)[1:].view(13, 16)
    torch.testing.assert_close(grouped_linear(view[1:], weight.detach(), offsets),
                               grouped_linear_loop(view[1:], weight.detach(), offsets))


# ---- decoding on a multi-core CPU: experts spread over cores (kernels/cpu_experts.py) ----------
def test_split_runs_covers_every_expert_with_rows_once():
    from r1mega.kernels.cpu_experts import split_runs

    for counts in ([0, 3, 0, 0, 5, 1, 0], [4], [0, 0, 2], [1] * 9, [7, 0, 0, 0, 0, 0, 1], [0, 5, 0]):
        ends = torch.tensor(counts).cumsum(0).tolist()
        for parts in (2, 3, 4):
            runs = split_runs(ends, parts)
            assert len(runs) <= parts
            assert all(e0 < e1 for e0, e1 in runs) and all(a[1] <= b[0] for a, b in zip(runs, runs[1:]))
            covered = [e for e0, e1 in runs for e in range(e0, e1)]
            assert [e for e, c in enumerate(counts) if c] == [e for e in covered if counts[e]]
            assert sum(counts[e] for e in covered) == sum(counts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_experts_over_cores_is_bitwise_one_grouped_mm(dtype):
    """Every expert's GEMM is the same single-threaded call on the same rows, only on another thread."""
    from r1mega.kernels import cpu_experts

    threads = torch.get_num_threads()
    try:
        for seed, counts in enumerate(([0, 3, 0, 0, 5, 1, 0, 2], [0, 0, 0, 4], [1, 1, 1, 1, 1, 1], [6, 0, 0, 0])):
            rows, weight, offsets, _ = _case(counts, 32, 24, dtype, seed)
            with torch.no_grad():
                torch.set_num_threads(1)
                plain = grouped_linear(rows, weight, offsets)
                torch.set_num_threads(3)
                assert not cpu_experts.usable(rows)
                with cpu_experts.experts_over_cores(torch.device("cpu")):
                    assert torch.get_num_threads() == 1 and cpu_experts.usable(rows)
                    spread = grouped_linear(rows, weight, offsets)
            assert torch.equal(plain, spread), counts
        assert torch.get_num_threads() == 3  # given back
        with cpu_experts.experts_over_cores(torch.device("cpu")):  # with autograd on: the plain path
            assert not cpu_experts.usable(rows)
    finally:
        torch.set_num_threads(threads)


def test_spreading_is_left_to_the_blas_where_it_threads_small_gemms(monkeypatch):
    """MKL on an Intel CPU splits decode-sized GEMMs over its threads: the engines keep every thread for
    the whole step there and spread the experts elsewhere; SPREAD overrides the guess."""
    from r1mega.kernels import cpu_experts

    cpu = torch.device("cpu")
    for vendor, mkl, threads_small in (("GenuineIntel", True, True), ("AuthenticAMD", True, False),
                                       ("GenuineIntel", False, False), ("", True, False)):
        monkeypatch.setattr(cpu_experts, "cpu_vendor", lambda v=vendor: v)
        monkeypatch.setattr(torch.backends.mkl, "is_available", lambda m=mkl: m)
        cpu_experts.blas_threads_small_gemms.cache_clear()
        assert cpu_experts.blas_threads_small_gemms() is threads_small, (vendor, mkl)
        assert cpu_experts.spreading_pays(cpu) is not threads_small
        for forced in (True, False):
            monkeypatch.setattr(cpu_experts, "SPREAD", forced)
            assert cpu_experts.spreading_pays(cpu) is forced
            assert not cpu_experts.spreading_pays(torch.device("cuda"))
        monkeypatch.setattr(cpu_experts, "SPREAD", None)
    monkeypatch.undo()
    cpu_experts.blas_threads_small_gemms.cache_clear()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            want = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("vendor_id")), "")
        assert cpu_experts.cpu_vendor() == want


def _spread_test_model():
    from r1mega.config import ModelConfig
    from r1mega.models.deepseek_v3.model import DeepseekV3
    from r1mega.parallel.layout import single_process_state

    torch.manual_seed(0)
    # 32 experts, top-2, 4 sequences: 0.25 rows per expert, below SPREAD_EXPERTS_BELOW_ROWS
    model = DeepseekV3(ModelConfig(num_layers=2, n_routed_experts=32, num_experts_per_tok=2, n_group=1,
                                   topk_group=1, num_mtp_layers=0), single_process_state())
    assert model.routed_rows_per_expert(4) <= 2
    return model


@pytest.mark.parametrize("spread", [True, False])
def test_decoding_threads_follow_the_spreading_choice(monkeypatch, spread):
    """Spreading: decoding steps on one intra-op thread with the workers; not spreading: every step on
    every thread. Either way float32 gives the one-thread run's tokens (log-probs within rounding:
    multi-threaded GEMMs may round differently)."""
    from r1mega.inference.generate import GenerationConfig, generate, generate_static
    from r1mega.kernels import cpu_experts
    from r1mega.parallel.layout import single_process_state

    monkeypatch.setattr(cpu_experts, "SPREAD", spread)
    model, ps = _spread_test_model(), single_process_state()
    prompts = [torch.randint(0, 256, (n,)).tolist() for n in (5, 3, 7, 4)]
    gen = GenerationConfig(max_new_tokens=4, temperature=1.0, seed=3)
    seen = []
    model.register_forward_pre_hook(lambda *_: seen.append((torch.get_num_threads(), cpu_experts._active)))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        plain = generate(model, ps, prompts, gen)
        torch.set_num_threads(2)
        for engine in (generate, generate_static):
            seen.clear()
            got = engine(model, ps, prompts, gen)
            assert seen == [(2, 0)] + [(1, 2) if spread else (2, 0)] * 3, (engine.__name__, seen)
            assert torch.get_num_threads() == 2 and cpu_experts._active == 0
            assert torch.equal(plain.tokens, got.tokens), engine.__name__
            torch.testing.assert_close(plain.logprobs, got.logprobs, atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_generation_with_experts_over_cores_gives_the_same_tokens_and_logprobs(monkeypatch):
    from r1mega.config import ModelConfig
    from r1mega.inference.generate import GenerationConfig, generate
    from r1mega.kernels import cpu_experts
    from r1mega.models.deepseek_v3.model import DeepseekV3
    from r1mega.parallel.layout import single_process_state

    monkeypatch.setattr(cpu_experts, "SPREAD", True)  # on any CPU
    torch.manual_seed(0)
    ps = single_process_state()
    # 32 experts, top-2, 4 sequences: 0.25 rows per expert, the spread path
    model = DeepseekV3(ModelConfig(num_layers=2, n_routed_experts=32, num_experts_per_tok=2, n_group=1,
                                   topk_group=1, num_mtp_layers=0), ps)
    assert model.routed_rows_per_expert(4) <= 2
    prompts = [torch.randint(0, 256, (n,)).tolist() for n in (5, 3, 7, 4)]
    gen = GenerationConfig(max_new_tokens=8, temperature=1.0, seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        plain = generate(model, ps, prompts, gen)
        torch.set_num_threads(2)
        spread = generate(model, ps, prompts, gen)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(plain.tokens, spread.tokens)
    torch.testing.assert_close(plain.logprobs, spread.logprobs, atol=1e-6, rtol=1e-6)
