"""A prompt's forward in generation: rows without padding attend through SDPA's fused causal kernel
(the blockwise document kernel made a 3,000-token prefill of a dense student 2-3x slower than
transformers on CPU), padded rows through the document kernel; both give the uncached tokens."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from r1mega.config import Config, DenseConfig, ModelConfig, validate
from r1mega.inference.generate import GenerationConfig, generate, generate_static, greedy_by_full_forward
from r1mega.kernels import block_attention as kernel
from r1mega.models.deepseek_v3 import attention as mla
from r1mega.models.deepseek_v3.model import DeepseekV3
from r1mega.models.dense import model as dense
from r1mega.models.dense.model import DenseStudent
from r1mega.parallel.layout import single_process_state
from r1mega.train.setup import init_weights


class _Shapes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def _models(positions: int):
    ps = single_process_state()
    moe = DeepseekV3(validate(Config(model=ModelConfig(max_position_embeddings=positions)), 1).model, ps)
    init_weights(torch.nn.ModuleList([moe]), seed=1)
    torch.manual_seed(0)
    student = DenseStudent(DenseConfig(hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                                       num_kv_heads=2, vocab_size=256, max_position_embeddings=positions), ps)
    return {"moe": moe.eval(), "dense": student.eval()}


def test_prompt_attention_rule():
    unpadded = kernel.documents_from_valid(torch.ones(2, 5, dtype=torch.bool))
    padded = kernel.documents_from_pad(torch.tensor([0, 2]), 5)
    assert kernel.prompt_attention(unpadded) is None
    assert kernel.prompt_attention(padded) is padded


@pytest.mark.parametrize("family", ["moe", "dense"])
@pytest.mark.parametrize("engine", [generate, generate_static])
def test_unpadded_prompts_skip_the_document_kernel_padded_ones_keep_it(family, engine, monkeypatch):
    model, ps = _models(64)[family], single_process_state()
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return kernel.block_attention(*args, **kwargs)

    monkeypatch.setattr(mla, "block_attention", counting)
    monkeypatch.setattr(dense, "block_attention", counting)
    g = torch.Generator().manual_seed(2)
    gen = GenerationConfig(max_new_tokens=4, temperature=0.0)
    for lengths, padded in (((9, 9, 9), False), ((9, 4, 7), True)):
        prompts = [torch.randint(1, 256, (n,), generator=g).tolist() for n in lengths]
        calls.clear()
        got = engine(model, ps, prompts, gen).tokens
        assert bool(calls) == padded, (lengths, calls)
        assert torch.equal(got, greedy_by_full_forward(model, ps, prompts, 4)), (family, lengths)


@pytest.mark.parametrize("family", ["moe", "dense"])
def test_unpadded_long_prompt_allocates_no_s_by_s_tensor(family):
    """SDPA's fused kernel, not its math fallback (which builds s x s scores: GQA, MLA's head dims)."""
    s = 2048  # the document kernel's blocks are 512 x s at most
    model, ps = _models(s + 8)[family], single_process_state()
    prompt = torch.randint(1, 256, (s,), generator=torch.Generator().manual_seed(3)).tolist()
    rec = _Shapes()
    with rec:
        generate(model, ps, [prompt], GenerationConfig(max_new_tokens=2, temperature=0.0))
    assert len(rec.shapes) > 100
    assert not [sh for sh in rec.shapes if sum(d >= s // 2 for d in sh) >= 2]
