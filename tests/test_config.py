"""Config loading, validation errors that name the key, and the rank layout."""
import argparse
import json
import os

import pytest

from r1mega import verify_hf
from r1mega.config import Config, ConfigError, ModelConfig, ParallelConfig, load_config, validate
from r1mega.models.deepseek_v3 import model as model_module
from r1mega.parallel.layout import attention_dims, expert_dims, rank_groups

# the published DeepSeek-V3 (= R1) config.json, kept in the repo
REFERENCE = os.path.join(os.path.dirname(__file__), "..", "configs", "model", "hf", "deepseek_v3_671b.json")


def cfg_with(world, model=None, **par):
    return validate(Config(model=ModelConfig(**(model or {})), parallel=ParallelConfig(**par)), world)


@pytest.mark.parametrize("world, model, par, key, text", [
    (3, {}, dict(tp=3), "model.num_heads", "not divisible by parallel.tp=3"),
    (3, {}, dict(ep=3, etp=1), "model.n_routed_experts", "8 experts are not divisible by parallel.ep=3"),
    (4, {"num_layers": 2}, dict(pp=4), "parallel.pp", "2 layers cannot fill 4 pipeline stages"),
    (2, {}, dict(tp=2, dp=2), "parallel.dp", "world size 2 != tp x pp x dp"),
    (6, {}, dict(tp=4), "parallel", "world size 6 is not divisible by tp x pp = 4 x 1"),
    (2, {"num_layers": 3}, dict(pp=2, pp_layers=[1, 1]), "parallel.pp_layers", "sums to 2"),
    (1, {"n_group": 2, "topk_group": 3}, {}, "model.topk_group", "must be in [1, n_group=2]"),
    (1, {"num_experts_per_tok": 9}, {}, "model.num_experts_per_tok", "exceeds"),
    (4, {}, dict(tp=2, ep=4), "parallel.ep", "does not divide"),
    (2, {"vocab_size": 127}, dict(tp=2), "model.vocab_size", "not divisible"),
    (1, {"scoring_func": "relu"}, {}, "model.scoring_func", "sigmoid or softmax"),
    (1, {}, dict(cp=0), "parallel.cp", "must be >= 1"),
    (6, {}, dict(tp=2, cp=2), "parallel", "not divisible by tp x cp x pp = 2 x 2 x 1"),
    (4, {}, dict(cp=2, ep=8, etp=1), "parallel.ep", "(tp x cp x dp)"),
])
def test_bad_layouts_name_the_key(world, model, par, key, text):
    with pytest.raises(ConfigError) as err:
        cfg_with(world, model, **par)
    assert err.value.key == key
    assert text in str(err.value)


def test_good_layout_derives_dp():
    cfg = cfg_with(8, {}, tp=2, pp=2, ep=2)
    assert (cfg.parallel.dp, cfg.parallel.expert_tp) == (2, 2)


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  num_layers: 6\n  hidden_size: 96\nparallel:\n  tp: 2\n")
    cfg = load_config(str(path), ["model.num_layers=4", "parallel.sp=true", "model.q_lora_rank=null"])
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.parallel.tp) == (4, 96, 2)
    assert cfg.parallel.sp is True and cfg.model.q_lora_rank is None


@pytest.mark.parametrize("override, key", [
    ("model.hiden_size=3", "model.hiden_size"),
    ("parallel.tp=two", "parallel.tp"),
])
def test_bad_override_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert err.value.key == key


def test_missing_yaml_file_is_reported():
    with pytest.raises(ConfigError, match="file not found"):
        load_config("/nonexistent/r1mega.yaml")


def test_published_deepseek_v3_config_reads():
    with open(REFERENCE) as f:
        hf = json.load(f)
    m = ModelConfig.from_hf(hf)
    assert (m.num_layers, m.hidden_size, m.num_heads, m.n_routed_experts) == (61, 7168, 128, 256)
    assert (m.q_lora_rank, m.kv_lora_rank, m.qk_rope_head_dim, m.num_mtp_layers) == (1536, 512, 64, 1)
    assert (m.scoring_func, m.n_group, m.topk_group, m.first_k_dense_replace) == ("sigmoid", 8, 4, 3)
    assert m.rope_scaling["type"] == "yarn" and m.rope_scaling["factor"] == 40
    # the production layout of the megatron-core DeepSeek-V3 recipe validates
    validate(Config(model=m, parallel=ParallelConfig(tp=2, pp=8, ep=64, etp=1)), 1024)


def test_v2_lite_style_config_reads():
    hf = dict(model_type="deepseek_v2", vocab_size=102400, hidden_size=2048, intermediate_size=10944,
              moe_intermediate_size=1408, num_hidden_layers=27, num_attention_heads=16, q_lora_rank=None,
              kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
              n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, topk_method="greedy",
              first_k_dense_replace=1, rope_scaling={"type": "yarn", "factor": 40, "mscale": 0.707,
                                                     "mscale_all_dim": 0.707,
                                                     "original_max_position_embeddings": 4096})
    m = ModelConfig.from_hf(hf)
    assert m.q_lora_rank is None and m.scoring_func == "softmax" and not m.norm_topk_prob
    validate(Config(model=m, parallel=ParallelConfig(tp=2, ep=8, etp=1)), 16)


def test_bad_layout_fails_before_any_weight_is_allocated(tmp_path, monkeypatch):
    from tiny_hf import make_hf_model

    make_hf_model("DeepseekV3").save_pretrained(tmp_path)

    def no_allocation(*a, **k):
        raise AssertionError("model was built before the layout was validated")

    monkeypatch.setattr(model_module.DeepseekV3, "__init__", no_allocation)
    parser = argparse.ArgumentParser()
    verify_hf.add_args(parser)
    with pytest.raises(ConfigError, match="world size 1 is not divisible by tp x pp = 3 x 1"):
        verify_hf.run(parser.parse_args(["--hf-dir", str(tmp_path), "--tp", "3"]))


@pytest.mark.parametrize("tp, pp, ep, etp, dp, cp", [(2, 2, 2, 2, 2, 1), (2, 2, 4, 1, 2, 1), (1, 2, 4, 1, 4, 1),
                                                (4, 1, 2, 2, 2, 1), (2, 2, 4, 1, 1, 2), (1, 1, 8, 1, 2, 4),
                                                (2, 1, 2, 2, 2, 2)])
def test_rank_layout_matches_megatron_core(tp, pp, ep, etp, dp, cp):
    from megatron.core.parallel_state import RankGenerator

    par = ParallelConfig(tp=tp, pp=pp, ep=ep, etp=etp, dp=dp, cp=cp)
    dense = RankGenerator(tp=tp, ep=1, dp=dp, pp=pp, cp=cp, order="tp-cp-ep-dp-pp")
    edp = tp * cp * dp // (etp * ep)
    expert = RankGenerator(tp=etp, ep=ep, dp=edp, pp=pp, cp=1, order="tp-cp-ep-dp-pp")
    for name in ("tp", "cp", "dp", "pp", "cp-dp"):
        assert rank_groups(attention_dims(par), name) == dense.get_ranks(name if name != "cp-dp" else "dp-cp")
    for ours, theirs in (("etp", "tp"), ("ep", "ep"), ("edp", "dp"), ("pp", "pp")):
        assert rank_groups(expert_dims(par), ours) == expert.get_ranks(theirs)

@pytest.mark.parametrize("config, overrides, key", [
    # model.* beside a student: never read (a distillation run trained the same student as without them)
    ("distill_student.yaml", ["model.num_layers=3", "model.hidden_size=128"], "model.num_layers"),
    # one stray student key turned an MoE SFT run into a default-shaped dense student (vocab 151,936)
    ("sft.yaml", ["student.num_layers=3"], "student.vocab_size"),
])
def test_overrides_of_the_section_the_run_does_not_train_are_refused(config, overrides, key):
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny", config)
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    assert e.value.key == key


def test_a_student_given_by_its_shape_in_overrides_is_still_taken():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny", "sft.yaml")
    cfg = load_config(path, ["student.vocab_size=384", "student.hidden_size=32", "student.num_layers=2",
                             "student.num_heads=4"])
    assert cfg.model_section == "student" and cfg.active_model.num_layers == 2
