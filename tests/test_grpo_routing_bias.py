"""GRPO runs the model family's work around each optimizer step as pretraining and SFT do: DeepSeek-V3's
aux-loss-free routing biases move by model.bias_update_rate x sign(mean load - load), the loads counted
by the update's forward only (not the old log-probs' forwards), a skipped step leaves them, and every
layout moves them as one process does."""
import pytest
import torch

from rl_workers import grpo_bias_worker

RATE = 0.01
K = 2  # the demo model's experts per token


def _overrides(tmp_path, name, *extra):
    return [f"train.run_dir={tmp_path}/{name}", f"data.cache_dir={tmp_path}/data", "data.synthetic_docs=300",
            "train.steps=3", "rl.group_size=4", "rl.prompts_per_step=2", "rl.minibatches=3", "rl.max_new_tokens=6",
            "data.micro_batch_size=4", "data.global_batch_size=8", "rl.log_rollouts=0", "rl.routing_replay=true",
            f"model.bias_update_rate={RATE}", *extra]


def test_biases_move_by_the_update_s_loads_and_not_on_a_skipped_step(tmp_path):
    torch.set_num_threads(1)
    out = grpo_bias_worker(0, 1, _overrides(tmp_path, "one"), poison_step=2)
    rows, biases, loads = out["rows"], out["biases"], out["loads"]
    assert [r["skipped"] for r in rows] == [False, True, False]
    assert len(biases) == len(loads) + 1 == 4
    moved = 0
    for i, (row, load) in enumerate(zip(rows, loads)):
        routed = load["0.layers.1.mlp"]
        # the update's forward alone: each of its token slots chose K experts (old log-probs counted nothing)
        assert int(routed.sum()) == K * out["slots"][i]
        assert int(load["0.mtp.2.mlp"].sum()) == 0  # rl.mtp_weight=0: the MTP module does not run
        for name, count in load.items():
            mean = count.double().mean()
            step = 0.0 if row["skipped"] else RATE * torch.sign(mean - count.double())
            torch.testing.assert_close(biases[i + 1][name], biases[i][name] + torch.as_tensor(step).float())
        moved += int((biases[i + 1]["0.layers.1.mlp"] != biases[i]["0.layers.1.mlp"]).sum())
        ratio = routed.double() / routed.double().mean()
        assert row["expert_max_load"] == pytest.approx(float(ratio.max()))
        assert row["expert_min_load"] == pytest.approx(float(ratio.min()))
        assert row["balance_loss"] == 0.0  # GRPO adds no balance loss
    assert moved > 8  # the two steps moved most experts' biases


@pytest.mark.parametrize("layout", [["parallel.ep=2"], ["parallel.tp=2", "parallel.ep=2", "parallel.etp=1"],
                                    ["parallel.pp=2"]], ids=["dp2-ep2", "tp2-ep2", "pp2"])
def test_layouts_move_the_biases_as_one_process(tmp_path, layout):
    from spawn_cases import run_ranks

    torch.set_num_threads(1)
    one = grpo_bias_worker(0, 1, _overrides(tmp_path, "one"))
    many = run_ranks(grpo_bias_worker, 2, _overrides(tmp_path, "many", *layout))
    assert set().union(*(b for r in many for b in r["biases"])) == set(one["biases"][0])  # PP2: each stage its own
    for rank in many:
        for a, b in zip(one["biases"], rank["biases"]):
            for name in b:
                torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    assert any(bool((b["0.layers.1.mlp"] != 0).any()) for b in one["biases"][1:])
    for a, b in zip(one["rows"], many[0]["rows"]):
        for key in ("expert_max_load", "expert_min_load", "reward", "response_len"):
            assert a[key] == pytest.approx(b[key], abs=1e-9), key


@pytest.mark.parametrize("stage", ["r1_zero", "reasoning_rl", "alignment_rl"])
def test_rl_stages_keep_the_pretrained_biases_on_an_imported_model(tmp_path, stage):
    """The RL stage configs set model.bias_update_rate=0 (their comment says why) and still take the
    model's shapes from train.load."""
    import os

    from r1mega.config import load_config
    from r1mega.train.setup import model_from_checkpoint
    from rl_data import imported_checkpoint

    ckpt = imported_checkpoint(str(tmp_path))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, "configs", "stage", f"{stage}.yaml"), [f"train.load={ckpt}"])
    assert cfg.model.bias_update_rate == 0.0
    cfg, family = model_from_checkpoint(cfg)
    assert family.name == "deepseek_v3" and cfg.model.bias_update_rate == 0.0
    assert cfg.model.vocab_size == 640 and cfg.model.num_layers == 2  # rl_data's imported model
