"""A tiny DeepSeek-V3 pretraining run on a small indexed corpus, in-process (a few seconds): for
reliability tests that stop, damage and resume runs."""
import numpy as np

from r1mega.config import load_config
from r1mega.data.pretrain import write_indexed
from r1mega.train.trainer import train

TINY = ["model.vocab_size=64", "model.hidden_size=16", "model.intermediate_size=32", "model.moe_intermediate_size=8",
        "model.num_layers=2", "model.num_heads=2", "model.q_lora_rank=8", "model.kv_lora_rank=8",
        "model.qk_nope_head_dim=4", "model.qk_rope_head_dim=4", "model.v_head_dim=4", "model.n_routed_experts=4",
        "model.num_experts_per_tok=2", "model.n_group=1", "model.topk_group=1", "model.num_mtp_layers=0",
        "data.seq_length=8", "data.micro_batch_size=2", "data.global_batch_size=2", "train.save_interval=1"]


def corpus(prefix, seed, docs=40, length=30):
    """<prefix>.bin/.idx of `docs` random documents of `length` tokens."""
    rng = np.random.default_rng(seed)
    write_indexed(str(prefix), ([int(x) for x in rng.integers(3, 64, size=length)] for _ in range(docs)), 64)


def pretrain(tmp_path, steps, *extra):
    """Train (or resume) <tmp_path>/run on the corpus <tmp_path>/d/c."""
    cfg = load_config(None, TINY + [f"data.paths=[{tmp_path / 'd' / 'c'}]", f"train.run_dir={tmp_path / 'run'}",
                                    f"train.steps={steps}", *extra])
    return train(cfg, "pretrain")
