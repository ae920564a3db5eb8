"""A DeepSeek-V3-shaped proxy built by `transformers` and the same weights loaded into r1mega.

Shared by the side-by-side benchmarks (train_throughput.py, decode_throughput.py). The default
shape is the one the performance issue names: hidden 512, 4 layers with the first dense, top-6 of
64 routed experts in 8 groups / top-4 groups, one shared expert, q_lora 256, kv_lora 128, rope 32,
nope 64, v 64, vocab 8192. Weights go through a safetensors directory written by transformers and
r1mega's HF loader, exactly what a user converting a checkpoint does.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import torch

from r1mega.config import Config, ModelConfig, validate
from r1mega.models.deepseek_v3.hf_weights import load_hf_weights
from r1mega.models.deepseek_v3.model import DeepseekV3
from r1mega.parallel.layout import single_process_state

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def add_shape_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experts", type=int, nargs="+", default=[8, 64, 256], help="routed expert counts to run")
    p.add_argument("--topk", type=int, default=6)
    p.add_argument("--groups", type=int, default=8, help="routing groups (n_group)")
    p.add_argument("--topk-groups", type=int, default=4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dense-layers", type=int, default=1, help="first_k_dense_replace")
    p.add_argument("--shared", type=int, default=1, help="shared experts")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=1024, help="dense intermediate size")
    p.add_argument("--moe-ffn", type=int, default=256, help="routed/shared expert intermediate size")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (both engines)")


def routing_groups(experts: int, topk: int, groups: int, topk_groups: int) -> tuple[int, int]:
    """Group-limited routing needs >= 2 experts per group and enough experts in the kept groups for
    top-k; fall back to one group when a small expert count cannot satisfy that."""
    if experts % groups or experts // groups < 2 or experts // groups * topk_groups < topk:
        return 1, 1
    return groups, topk_groups


def hf_config(args: argparse.Namespace, experts: int):
    import transformers

    n_group, topk_group = routing_groups(experts, args.topk, args.groups, args.topk_groups)
    return transformers.DeepseekV3Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn,
        moe_intermediate_size=args.moe_ffn, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.heads, n_routed_experts=experts, num_experts_per_tok=args.topk,
        n_group=n_group, topk_group=topk_group, n_shared_experts=args.shared,
        first_k_dense_replace=args.dense_layers, q_lora_rank=256, kv_lora_rank=128, qk_rope_head_dim=32,
        qk_nope_head_dim=64, v_head_dim=64, max_position_embeddings=1024, routed_scaling_factor=2.5,
        tie_word_embeddings=False,
    )


def build_pair(args: argparse.Namespace, experts: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """(transformers model, r1mega model) holding the same weights, in eval mode, on `device`."""
    import transformers

    torch.manual_seed(seed)
    hf = transformers.DeepseekV3ForCausalLM(hf_config(args, experts)).float()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a non-zero selection bias, so routing is not the plain top-k of scores
        for name, b in hf.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.01 * torch.randn(b.shape, generator=g))
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model_cfg = ModelConfig.from_hf(tmp)
        model_cfg.num_mtp_layers = 0  # transformers does not run the MTP module; neither do we here
        cfg = validate(Config(model=model_cfg), 1)
        ours = DeepseekV3(cfg.model, single_process_state())
        load_hf_weights(ours, tmp)
    return hf.to(device=device, dtype=dtype).eval(), ours.to(device=device, dtype=dtype).eval()


def describe(args: argparse.Namespace) -> str:
    return (f"DeepSeek-V3 proxy: hidden {args.hidden}, {args.layers} layers ({args.dense_layers} dense), "
            f"top-{args.topk} routed + {args.shared} shared, moe ffn {args.moe_ffn}, vocab {args.vocab}")


def setup(args: argparse.Namespace) -> torch.device:
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
