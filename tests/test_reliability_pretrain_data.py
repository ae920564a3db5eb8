"""A pretraining run resumed on changed .bin/.idx files (or another data.seq_length) is refused by
file and key: the saved position (consumed samples) means nothing in other data, and the run that
continued silently would not be the one that was resumed."""
import numpy as np
import pytest

from r1mega.config import load_config
from r1mega.data.pretrain import write_indexed
from r1mega.errors import ConfigError
from r1mega.train.trainer import train

TINY = ["model.vocab_size=64", "model.hidden_size=16", "model.intermediate_size=32", "model.moe_intermediate_size=8",
        "model.num_layers=2", "model.num_heads=2", "model.q_lora_rank=8", "model.kv_lora_rank=8",
        "model.qk_nope_head_dim=4", "model.qk_rope_head_dim=4", "model.v_head_dim=4", "model.n_routed_experts=4",
        "model.num_experts_per_tok=2", "model.n_group=1", "model.topk_group=1", "model.num_mtp_layers=0",
        "data.seq_length=8", "data.micro_batch_size=2", "data.global_batch_size=2", "train.save_interval=1"]


def corpus(prefix, seed, docs=40, length=30):
    rng = np.random.default_rng(seed)
    write_indexed(str(prefix), ([int(x) for x in rng.integers(3, 64, size=length)] for _ in range(docs)), 64)


def run(tmp_path, steps, *extra):
    cfg = load_config(None, TINY + [f"data.paths=[{tmp_path / 'd' / 'c'}]", f"train.run_dir={tmp_path / 'run'}",
                                    f"train.steps={steps}", *extra])
    return train(cfg, "pretrain")


@pytest.fixture
def started(tmp_path):
    (tmp_path / "d").mkdir()
    corpus(tmp_path / "d" / "c", seed=0)
    run(tmp_path, 2)
    return tmp_path


def test_same_data_resumes(started):
    assert run(started, 3)["steps"] == 3


def test_changed_tokens_of_equal_sizes_are_refused_by_file(started):
    before = {p: p.stat().st_size for p in (started / "d").iterdir()}
    corpus(started / "d" / "c", seed=1)  # same document lengths: same sizes, same .idx, other tokens
    assert {p: p.stat().st_size for p in (started / "d").iterdir()} == before
    with pytest.raises(ConfigError) as e:
        run(started, 3)
    assert "data.paths" in str(e.value) and "c.bin" in str(e.value) and "train.allow_data_change" in str(e.value)


def test_a_longer_corpus_is_refused_and_the_override_continues(started):
    corpus(started / "d" / "c", seed=0, docs=50)  # documents appended: the saved windows moved
    with pytest.raises(ConfigError, match="data.paths"):
        run(started, 3)
    assert run(started, 3, "train.allow_data_change=true")["steps"] == 3


def test_another_seq_length_is_refused_by_key(started):
    with pytest.raises(ConfigError, match="data.seq_length"):
        run(started, 3, "data.seq_length=4")
