"""Hostile probes of the family training hooks (extra losses, training keys in the model section,
their deprecated train.* aliases): errors name the key the user wrote, a conflict between the two
names says which wins, and DeepSeek-V3.2's documented warm-up -> sparse step loads."""
import json
import os
import warnings
from dataclasses import asdict

import pytest

from r1mega.config import load_config, validate, validate_training
from r1mega.errors import ConfigError
from r1mega.train.trainer import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(ROOT, "configs", "tiny", "pretrain.yaml")
V32 = ["model.family=deepseek_v32", "model.index_n_heads=2", "model.index_head_dim=8", "model.index_topk=8"]


def _tiny(tmp_path, name, *overrides):
    """The tiny pretraining config, shrunk to seconds: 2 layers, 2 steps of 4 sequences of 32 tokens."""
    return load_config(PRETRAIN, [f"train.run_dir={tmp_path / name}", f"data.cache_dir={tmp_path / 'data'}",
                                  "data.synthetic_docs=64", "data.seq_length=32", "data.micro_batch_size=2",
                                  "data.global_batch_size=4", "model.num_layers=2", "train.steps=2",
                                  "optim.warmup_steps=1", *overrides])


def _checked(overrides, path=PRETRAIN):
    cfg = load_config(path, overrides)
    validate(cfg, 1)
    validate_training(cfg, 1)
    return cfg


def test_alias_error_names_the_key_written():
    """train.dsa_stage=bogus (the deprecated name) is refused under train.dsa_stage, the key the user
    wrote (it was refused as model.dsa_stage, a key the config does not contain)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with pytest.raises(ConfigError) as e:
            _checked([*V32, "train.dsa_stage=bogus"])
    assert e.value.key == "train.dsa_stage", str(e.value)
    assert "model.dsa_stage" in str(e.value)  # and says what it is an alias of


def test_both_names_set_warns_which_wins():
    """model.mtp_weight and train.mtp_weight both set: the train.* alias wins (README), and the warning
    says so with both values rather than only that the name is deprecated."""
    with pytest.warns(FutureWarning) as w:
        cfg = _checked(["model.mtp_weight=0.2", "train.mtp_weight=0.5"])
    assert cfg.model.mtp_weight == 0.5
    text = " ".join(str(x.message) for x in w)
    assert "model.mtp_weight=0.2" in text and "0.5" in text, text


def test_dense_warmup_checkpoint_trains_sparse(tmp_path):
    """README (DeepSeek-V3.2): `train.load=WARM model.dsa_stage=sparse` after a dense warm-up. The
    warm-up froze all but the indexer, so its checkpoint holds no AdamW moments for those weights;
    the sparse run must start them fresh, not call the checkpoint unusable."""
    warm = train(_tiny(tmp_path, "warm", *V32, "model.dsa_stage=dense_warmup"), "pretrain")
    assert warm["steps"] == 2
    root = tmp_path / "warm" / "checkpoints"
    step = sorted(p for p in os.listdir(root) if p.startswith("step_"))[-1]
    out = train(_tiny(tmp_path, "sparse", *V32, "model.dsa_stage=sparse", "train.steps=3",
                      f"train.load={root / step}"), "pretrain")
    assert out["steps"] == 3 and len(out["losses"]) == 1
    rows = [json.loads(x) for x in open(tmp_path / "sparse" / "metrics.jsonl")]
    assert rows[-1]["step"] == 3 and rows[-1]["grad_norm"] > 0.01  # the whole model trains again


@pytest.mark.parametrize("dense, unit", [
    (False, "indexer"),  # DeepSeek-V3 has no indexer: DeepSeek-V3.2's unit
    (True, "moe_act"),  # a dense `model:` section: no MoE
])
def test_recompute_unit_of_another_family_is_refused(tmp_path, dense, unit):
    """train.recompute_modules naming a part the model's family does not have would recompute nothing:
    refused by key, naming the family's own units (the dense `student:` section was, others were not)."""
    path = PRETRAIN
    if dense:  # the tiny student as a `model:` section naming its family
        path = tmp_path / "dense.yaml"
        text = open(os.path.join(ROOT, "configs", "tiny", "distill_student.yaml")).read()
        path.write_text(text.replace("student:\n", "model:\n  family: dense\n"))
    with pytest.raises(ConfigError) as e:
        _checked(["train.recompute=selective", f"train.recompute_modules=[{unit}]"], str(path))
    assert e.value.key == "train.recompute_modules" and unit in str(e.value), str(e.value)


def test_recompute_units_of_the_family_and_the_default_list_pass():
    assert _checked([*V32, "train.recompute=selective", "train.recompute_modules=[indexer,mla_up_proj]"])
    assert _checked(["train.recompute=selective"])  # the default: every family's units


def test_training_keys_come_from_the_config_not_the_checkpoint_of_another_family(tmp_path):
    """A stage config that leaves the model to train.load (configs/stage/cold_start_sft.yaml:
    `model: {mtp_weight: 0.1}`) loading a DeepSeek-V3.2 checkpoint saved in its dense warm-up: the run
    trains with the config's mtp_weight, and not in the checkpoint's dsa_stage (a training mode, not
    architecture: the SFT would silently freeze all but the indexer) nor its index_loss_weight."""
    from r1mega.models.family import family_named, model_of_checkpoint

    fam = family_named("deepseek_v32")
    saved = fam.config_cls(num_layers=2, dsa_stage="dense_warmup", index_loss_weight=3.0, mtp_weight=0.3)
    meta = {"family": fam.name, "model_config": asdict(saved)}
    cfg = load_config(os.path.join(ROOT, "configs", "stage", "cold_start_sft.yaml"), [])
    assert cfg.model.mtp_weight == 0.1
    got_family, got = model_of_checkpoint(meta, cfg.active_model, "CKPT")
    assert got_family is fam and got.num_layers == 2
    assert got.mtp_weight == 0.1
    assert got.dsa_stage is None and got.index_loss_weight == fam.config_cls().index_loss_weight


def _train_rank(rank, world, run_dir, data_dir, overrides):
    """A spawned rank: the tiny pretraining run; the metrics rank 0 logs."""
    cfg = load_config(PRETRAIN, [f"train.run_dir={run_dir}", f"data.cache_dir={data_dir}", "data.synthetic_docs=64",
                                 "data.seq_length=32", "data.micro_batch_size=2", "data.global_batch_size=4",
                                 "train.steps=1", "optim.warmup_steps=1", "model.balance_alpha=0.05",
                                 "model.mtp_weight=0.5", *overrides])
    train(cfg, "pretrain")
    return [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))] if rank == 0 else []


@pytest.fixture(scope="module")
def balance_runs(request, tmp_path_factory):
    """Each selected case below: its one-process run here (which builds the data), then every case's
    two-rank run in one spawn on that data. {node name: (one-process row, rank 0's two-rank row)}."""
    from spawn_cases import run_cases, selected_params

    root = tmp_path_factory.mktemp("balance")
    cases = selected_params(request, "test_balance_metrics_cover_every_stage_and_data_rank")
    dirs = {node: root / f"case{i}" for i, node in enumerate(cases)}
    one = {node: _train_rank(0, 1, str(dirs[node] / "one"), str(dirs[node] / "data"), p["model"])[0]
           for node, p in cases.items()}
    two = run_cases(2, {node: (_train_rank, (str(dirs[node] / "two"), str(dirs[node] / "data"),
                                             [*p["model"], *p["layout"]])) for node, p in cases.items()})
    return {node: (one[node], two[node][0][0]) for node in cases}


@pytest.mark.slow  # three 2-rank runs and their 1-rank runs: 24-55 s measured on two shared cores
@pytest.mark.parametrize("model, layout", [
    ([], ["parallel.pp=2"]),
    (["model.first_k_dense_replace=2"], ["parallel.pp=2"]),  # rank 0's stage has no MoE layer
    ([], ["parallel.ep=2"]),
])
def test_balance_metrics_cover_every_stage_and_data_rank(request, balance_runs, model, layout):
    """The logged balance_loss and expert load ratios are the whole model's over the global batch, as
    one process logs them (rank 0 logged its own stage's layers and its own DP rank's sequences:
    a quarter of the balance loss under PP2, half under EP2 = DP2); the losses were right already."""
    one, two = balance_runs[request.node.name]
    assert one["balance_loss"] > 0
    for key in ("loss", "mtp_loss", "balance_loss", "expert_max_load", "expert_min_load"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key


@pytest.mark.parametrize("stage", ["cold_start_sft.yaml", "rejection_sampling_sft.yaml"])
def test_shipped_stage_config_runs_a_dense_model_section(stage):
    """configs/stage/*_sft.yaml write `model: {mtp_weight: 0.1}` ("other families ignore it"); naming the
    dense family (model.family=dense, README) must not be refused for that key, as train.mtp_weight
    was not; a training mode the family lacks (model.dsa_stage) still is."""
    path = os.path.join(ROOT, "configs", "stage", stage)
    cfg = load_config(path, ["model.family=dense"])
    assert type(cfg.active_model).__name__ == "DenseConfig" and not hasattr(cfg.active_model, "mtp_weight")
    assert load_config(path, ["model.family=deepseek_v32"]).model.mtp_weight == 0.1
    with pytest.raises(ConfigError) as e:
        load_config(path, ["model.family=dense", "model.dsa_stage=sparse"])
    assert e.value.key == "model.dsa_stage"


def test_requeued_sparse_run_does_not_call_its_warmup_load_another_model(tmp_path, capsys):
    """A requeued `train.load=WARM model.dsa_stage=sparse` run resumes its own checkpoint; WARM differs
    from it only in training keys (dsa_stage), so no warning calls train.load another model."""
    from r1mega.train.setup import _warn_if_load_differs
    from r1mega.models.family import family_named

    fam = family_named("deepseek_v32")
    for name, stage in (("warm", "dense_warmup"), ("own", "sparse")):
        (tmp_path / name).mkdir()
        meta = {"family": fam.name, "model_config": asdict(fam.config_cls(dsa_stage=stage))}
        (tmp_path / name / "meta.json").write_text(json.dumps(meta))
    _warn_if_load_differs(str(tmp_path / "own"), str(tmp_path / "warm"))
    assert "another model" not in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["dense_warmup", "sparse"])
def test_grpo_refuses_an_indexer_training_stage_it_would_ignore(stage):
    """GRPO runs none of DeepSeek-V3.2's indexer stages (no freezing, no KL loss): model.dsa_stage set
    for it is refused by key, not silently ignored (it was, under train.dsa_stage too)."""
    from r1mega.config import validate_rl

    cfg = load_config(os.path.join(ROOT, "configs", "tiny", "r1_zero_demo.yaml"), [*V32, f"model.dsa_stage={stage}"])
    with pytest.raises(ConfigError) as e:
        validate_rl(validate(cfg, 1), 1)
    assert e.value.key == "model.dsa_stage", str(e.value)
    assert validate_rl(validate(load_config(os.path.join(ROOT, "configs", "tiny", "r1_zero_demo.yaml"), V32), 1), 1)
