"""The torch backend's grouped expert GEMM (F.grouped_mm) equals the per-expert loop: outputs and
gradients of rows and weights, fp32 and bf16, with empty experts, no rows at all, and shapes
grouped_mm cannot take (which must fall back to the loop)."""
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
