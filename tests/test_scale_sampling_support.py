"""Scale probe: rl.keep_sampling_mask keeps, for every token of the rollout until its last update, the
sampler's top-p/top-k support over this rank's vocab shard. It was stored as int64 indices of the kept
entries: 8 bytes per kept entry, so a wide support (top-p 0.95 of a high-entropy policy keeps most of
the vocabulary) cost twice the token's float32 logits, for every token at once (at DeepSeek-V3's
129,280 / tp 8 = 16,160 entries: up to 129 KB per token). Now the smaller of int32 indices and a
bitmask (numel / 8 bytes) is kept."""
import torch

from r1mega.parallel.layout import single_process_state
from r1mega.rl.policy_scores import pack_support, sampler_support, support_with_targets, unpack_support

V = 16160  # one TP rank's shard of DeepSeek-V3's vocabulary under tp 8


def _support(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    ps = single_process_state()
    targets = logits.argmax(-1)
    return support_with_targets(sampler_support(logits, ps, top_p, 0), targets, ps)


def _stored_bytes(packed) -> int:
    return packed[1].numel() * packed[1].element_size()


def test_a_wide_support_takes_a_bit_per_vocab_entry():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, V, generator=g) * 0.1  # a high-entropy policy: top-p 0.95 keeps most ids
    keep = _support(logits, 0.95)
    assert keep.sum() > 0.8 * keep.numel()
    packed = pack_support(keep)
    assert _stored_bytes(packed) <= -(-keep.numel() // 8)
    assert torch.equal(unpack_support(packed), keep)


def test_a_narrow_support_takes_four_bytes_per_kept_entry():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, V, generator=g) * 8.0  # a confident policy: a handful of ids per token
    keep = _support(logits, 0.9)
    assert keep.sum() < 0.001 * keep.numel()
    packed = pack_support(keep)
    assert _stored_bytes(packed) <= 4 * int(keep.sum())
    assert torch.equal(unpack_support(packed), keep)
