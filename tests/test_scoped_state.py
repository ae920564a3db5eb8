"""Modes that hold for a block of code, not for the process: the kernels backend and decoding
without sequence parallelism are context-scoped, and activation recompute keeps the forward's backend."""
from __future__ import annotations

import threading

import torch

from r1mega.config import ParallelConfig
from r1mega.kernels import linear, use_backend
from r1mega.kernels.linear import TorchBackend, active_backend
from r1mega.parallel.layout import ParallelState, sequence_parallel_off
from r1mega.parallel.recompute import recomputed


class CountingBackend(TorchBackend):
    name = "counting"

    def __init__(self):
        self.calls = 0

    def linear(self, x, weight, bias=None):
        self.calls += 1
        return super().linear(x, weight, bias)


def test_backend_is_scoped_to_the_block_and_its_thread():
    spy = CountingBackend()
    seen = []
    with use_backend(spy):
        assert active_backend() is spy
        other = threading.Thread(target=lambda: seen.append(active_backend()))
        other.start()
        other.join()
    assert seen[0] is not spy  # another thread keeps its own choice
    assert active_backend() is not spy


def test_recompute_reruns_the_forward_with_the_forward_backend():
    w = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(3, 4, requires_grad=True)
    spy = CountingBackend()
    with use_backend(spy):
        y = recomputed(True, lambda t: torch.tanh(linear(t, w)), x)
    assert spy.calls == 1
    y.sum().backward()  # outside the block, as on a GPU's autograd thread
    assert spy.calls == 2  # the rerun went through the same backend
    ref_w = w.detach().clone().requires_grad_()
    torch.tanh(x.detach() @ ref_w.t()).sum().backward()
    torch.testing.assert_close(w.grad, ref_w.grad)


def test_sequence_parallel_off_changes_no_layout():
    ps = ParallelState(cfg=ParallelConfig(tp=2, sp=True, dp=1))
    other = ParallelState(cfg=ParallelConfig(tp=2, sp=True, dp=1))
    with sequence_parallel_off(ps):
        assert not ps.sp and other.sp
        assert ps.cfg.sp  # the config is left as it is
    assert ps.sp
