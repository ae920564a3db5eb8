"""Long sequences: attention without an s x s mask, activation recompute, memory linear in s."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from r1mega.config import Config, ConfigError, ModelConfig, ParallelConfig, TrainConfig, validate, validate_training
from r1mega.data.sft import block_causal_mask
from r1mega.inference.generate import left_padded_causal_mask
from r1mega.models.activation_memory import PeakLiveBytes, saved_bytes
from r1mega.kernels.block_attention import block_attention, documents_from_pad
from r1mega.models.deepseek_v3.model import DeepseekV3
from r1mega.models.family import family_of
from r1mega.parallel.recompute import set_recompute
from r1mega.parallel.layout import single_process_state
from r1mega.train.setup import init_weights


def tiny_model(seed=1, **model):
    cfg = validate(Config(model=ModelConfig(**model)), 1).model
    m = DeepseekV3(cfg, single_process_state())
    init_weights(torch.nn.ModuleList([m]), seed=seed)
    return m


def packed_docs(b, s, g):
    """Random packed rows: documents of random lengths, trailing padding as document -1."""
    rows = []
    for _ in range(b):
        cuts = sorted(torch.randint(1, s, (3,), generator=g).tolist())
        ids = torch.zeros(s, dtype=torch.long)
        for d, c in enumerate(cuts):
            ids[c:] = d + 1
        ids[cuts[-1] + (s - cuts[-1]) // 2:] = -1
        rows.append(ids)
    return torch.stack(rows)


def test_block_attention_matches_dense_masks_and_gradients():
    g = torch.Generator().manual_seed(0)
    b, h, s = 2, 3, 45
    q, k = (torch.randn(b, h, s, 12, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(b, h, s, 8, generator=g, dtype=torch.float64, requires_grad=True)
    docs = packed_docs(b, s, g)
    pad = torch.tensor([7, 0])
    for ids, dense in [(docs, block_causal_mask(docs)), (documents_from_pad(pad, s), left_padded_causal_mask(pad, s))]:
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense, scale=0.3)
        grad = torch.randn_like(ref)
        want = torch.autograd.grad(ref, (q, k, v), grad)
        for block in (4, 16, 64):
            out, _ = block_attention(q, k, v, 0.3, ids, ids, block=block)
            torch.testing.assert_close(out, ref)
            for a, w in zip(torch.autograd.grad(out, (q, k, v), grad), want):
                torch.testing.assert_close(a, w)
    # queries that start mid-sequence (a context-parallel chunk), the log-sum-exp differentiated too
    qs = q[:1, :1, 20:26].detach().requires_grad_()
    ks, vs = k[:1, :1, :30].detach().requires_grad_(), v[:1, :1, :30].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda q_, k_, v_: block_attention(q_, k_, v_, 0.3, docs[:1, 20:26], docs[:1, :30],
                                                                       q_start=20, block=4), (qs, ks, vs))


def test_model_with_document_ids_equals_dense_mask_path():
    """Logits and every gradient equal today's dense-mask path, for packing and left padding."""
    model = tiny_model()
    g = torch.Generator().manual_seed(3)
    b, s = 2, 40
    ids = torch.randint(0, 256, (b, s), generator=g)
    labels = torch.randint(0, 256, (b, s), generator=g)
    docs = packed_docs(b, s, g)
    pad = torch.tensor([5, 11])
    cases = [(docs, block_causal_mask(docs)), (documents_from_pad(pad, s), left_padded_causal_mask(pad, s))]
    for compact, dense in cases:
        results = []
        for mask in (compact, dense):
            model.zero_grad()
            out = model(ids, labels=labels, attn_mask=mask)
            out.token_loss.sum().backward()
            results.append((out.logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
        torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
        assert len(results[0][1]) == len(results[1][1])
        for a, w in zip(results[0][1], results[1][1]):
            torch.testing.assert_close(a, w, atol=1e-5, rtol=1e-4)


class ShapeRecorder(TorchDispatchMode):
    """Records the shape of every tensor an op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def test_no_s_by_s_tensor_in_training_or_grpo_forward():
    """A training step (plain causal, packed rows) and GRPO's left-padded forward+backward allocate nothing with
    two dimensions of the sequence's order (attention blocks are 512 x s at most)."""
    s = 2048
    model = tiny_model(max_position_embeddings=s)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (1, s), generator=g)
    for mask in (None, packed_docs(1, s, g), documents_from_pad(torch.tensor([300]), s)):
        rec = ShapeRecorder()
        with rec:
            out = model(ids, labels=ids, attn_mask=mask)
            out.token_loss.sum().backward()
        assert len(rec.shapes) > 100
        quadratic = [sh for sh in rec.shapes if sum(d >= s // 2 for d in sh) >= 2]
        assert not quadratic, quadratic[:5]


def test_rollout_prompt_forward_has_no_s_by_s_tensor():
    """A long left-padded prompt's first forward through the KV cache (MLA and a dense student) attends
    like training, with no prompt x prompt mask or scores; decoding then continues from the cache and
    gives the tokens of re-running the whole sequence."""
    from r1mega.config import DenseConfig
    from r1mega.inference.generate import GenerationConfig, generate, greedy_by_full_forward
    from r1mega.models.dense.model import DenseStudent

    s = 2048  # attention blocks are 512 x s at most
    ps = single_process_state()
    students = DenseStudent(DenseConfig(hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                                      num_kv_heads=2, vocab_size=256, max_position_embeddings=s + 8), ps)
    for model in (tiny_model(max_position_embeddings=s + 8), students):
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (s, s - 700)]
        rec = ShapeRecorder()
        with rec:
            out = generate(model, ps, prompts, GenerationConfig(max_new_tokens=3, temperature=0.0))
        assert len(rec.shapes) > 100
        quadratic = [sh for sh in rec.shapes if sum(d >= s // 2 for d in sh) >= 2]
        assert not quadratic, (type(model).__name__, quadratic[:5])
        assert torch.equal(out.tokens, greedy_by_full_forward(model, ps, prompts, 3))


def test_recompute_gives_identical_gradients_and_saves_measured_memory():
    s = 256
    model = tiny_model(max_position_embeddings=s).train()
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 256, (2, s), generator=g)
    docs = packed_docs(2, s, g)
    grads, held = {}, {}
    for mode in ("none", "selective", "full"):
        set_recompute(model, mode, family_of(model).recompute_units)
        run = lambda: model(ids, labels=ids, attn_mask=docs).token_loss.sum()  # noqa: E731
        held[mode] = saved_bytes(run, model)
        model.zero_grad()
        run().backward()
        grads[mode] = [p.grad.clone() for p in model.parameters()]
    for mode in ("selective", "full"):
        for a, w in zip(grads[mode], grads["none"]):
            assert torch.equal(a, w)
    assert held["full"] < 0.3 * held["none"] and held["selective"] < 0.8 * held["none"], held
    assert held["full"] < held["selective"]


def test_training_step_peak_memory_grows_linearly_in_sequence_length():
    """Peak live tensor bytes of one forward+backward at 512 and 4K tokens: ~8x apart (an s x s
    tensor anywhere would make it ~64x)."""
    peak = {}
    for s in (512, 4096):
        model = tiny_model(max_position_embeddings=s)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 256, (1, s), generator=g)
        docs = packed_docs(1, s, g)
        rec = PeakLiveBytes()
        with rec:
            model(ids, labels=ids, attn_mask=docs).token_loss.sum().backward()
        peak[s] = rec.peak
    assert 6 < peak[4096] / peak[512] < 10, peak


def test_long_context_keys_are_validated():
    cases = [(dict(train=TrainConfig(recompute="partial")), 1, "train.recompute"),
             (dict(train=TrainConfig(recompute="selective", recompute_modules=["mlp"])), 1, "train.recompute_modules"),
             (dict(parallel=ParallelConfig(cp=4)), 4, "data.seq_length")]
    for kw, world, key in cases:
        cfg = Config(**kw)
        cfg.data.seq_length = 36  # not a multiple of 2 x cp = 8
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate_training(cfg, world)
