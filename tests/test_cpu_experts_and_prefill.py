"""Hostile probes of the CPU expert spreading, prompt prefill over documents and the stacked
gate|up expert weight that found bugs (each test failed before its fix)."""
from __future__ import annotations

import contextlib

import torch

from r1mega.kernels import cpu_experts
from r1mega.kernels import grouped_linear


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_spread_experts_under_inference_mode_match_plain_path():
    """A caller in torch.inference_mode (or no_grad) with weights that require grad: the worker
    threads must not record autograd (grad mode is per thread), so the result is the plain one."""
    g = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(8, 32, 16, generator=g))
    rows = torch.randn(9, 16, generator=g)
    offsets = torch.tensor([1, 2, 2, 4, 5, 7, 8, 9], dtype=torch.int32)
    with torch.no_grad(), _threads(1):
        want = grouped_linear(rows, weight, offsets)
    with _threads(2), cpu_experts.experts_over_cores(torch.device("cpu")):
        assert cpu_experts._active == 2
        with torch.inference_mode():
            got = grouped_linear(rows.clone(), weight, offsets)
        with torch.no_grad():
            got_no_grad = grouped_linear(rows, weight, offsets)
    assert cpu_experts._active == 0
    assert torch.equal(got, want) and torch.equal(got_no_grad, want)
    assert not got_no_grad.requires_grad


def test_spread_experts_survive_another_thread_leaving_mid_call(monkeypatch):
    """Concurrent generate calls share the module's worker count: one leaving experts_over_cores()
    (worker count back to 0) or another entering with a different thread count (pool resized)
    while this one is between splitting the experts and submitting them must not break it."""
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(8, 32, 16, generator=g)
    rows = torch.randn(9, 16, generator=g)
    offsets = torch.tensor([1, 2, 2, 4, 5, 7, 8, 9], dtype=torch.int32)
    with torch.no_grad(), _threads(1):
        want = grouped_linear(rows, weight, offsets)
    split = cpu_experts.split_runs
    for interleave in ("leave", "resize"):
        def split_then_other_thread(ends, parts):
            runs = split(ends, parts)
            if interleave == "leave":
                cpu_experts._active = 0  # as the other thread's exit does
            else:
                cpu_experts._workers(parts + 1)  # as another thread entering with more threads does
            return runs

        with _threads(2), torch.no_grad(), cpu_experts.experts_over_cores(torch.device("cpu")):
            monkeypatch.setattr(cpu_experts, "split_runs", split_then_other_thread)
            got = grouped_linear(rows, weight, offsets)
            monkeypatch.setattr(cpu_experts, "split_runs", split)
        assert torch.equal(got, want), interleave
        assert cpu_experts._active == 0


def test_prompt_forward_keeps_every_thread_and_decoding_spreads_experts(monkeypatch):
    """The prompt's forward has many rows per expert and attention over the whole prompt: it runs
    with every intra-op thread; only the decoding steps take the one-thread expert-spreading path
    (with it, a 512-token prompt's prefill ran 1.65x slower)."""
    from r1mega.config import ModelConfig
    from r1mega.inference.generate import GenerationConfig, generate
    from r1mega.models.deepseek_v3.model import DeepseekV3
    from r1mega.parallel.layout import single_process_state

    monkeypatch.setattr(cpu_experts, "SPREAD", True)  # on any CPU (MKL on Intel: spreading_pays says no)
    torch.manual_seed(0)
    model = DeepseekV3(ModelConfig(num_layers=2, n_routed_experts=32, num_experts_per_tok=2, n_group=1,
                                   topk_group=1, num_mtp_layers=0), single_process_state())
    seen = []
    model.register_forward_pre_hook(lambda *_: seen.append((torch.get_num_threads(), cpu_experts._active)))
    with _threads(2):
        generate(model, single_process_state(), [[5, 6, 7, 8], [9, 10]], GenerationConfig(max_new_tokens=3))
        assert torch.get_num_threads() == 2
    assert seen == [(2, 0), (1, 2), (1, 2)], seen
