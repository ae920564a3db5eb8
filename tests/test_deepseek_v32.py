"""DeepSeek-V3.2 (DeepSeek Sparse Attention): tiny checkpoints built with transformers match it in
logits, loss and every gradient, with top-k below the sequence (selection matters) and above it
(dense); layouts equal one process; cached decoding equals full re-forwards; the selection runs by
query blocks; the indexer's KL loss trains the indexer only; conversion round-trips bit-exactly."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from r1mega.models.family import family_for_hf
from r1mega.models.weights import load_hf_weights
from r1mega.parallel.layout import single_process_state
from r1mega.verify_hf import hf_param_grads
from student_workers import PROMPTS, decode, evaluate, students_worker
from tiny_hf import BASE, batch, randomize

BATCH, SEQ = 4, 12
# enough indexer heads that no two keys tie exactly at a query's k-th place (a key whose every head
# scores <= 0 gets I = 0 exactly; how transformers' topk breaks such ties is unspecified)
INDEXER = dict(n_group=2, topk_group=1, index_n_heads=16, index_head_dim=16)
SHAPES = {
    # top-5 of 12 tokens: most queries attend to a selection
    "sparse": dict(**BASE, **INDEXER, index_topk=5),
    # top-64 of 12: every key selected, the dense path
    "dense": dict(**BASE, **INDEXER, index_topk=64),
    # a held-out shape: YaRN, wider rope, index head = rope dim, 12 index heads, MoE from layer 0, top-3
    "yarn": dict(vocab_size=96, hidden_size=48, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=4,
                 num_attention_heads=4, n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=0,
                 q_lora_rank=24, kv_lora_rank=12, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=12,
                 n_shared_experts=1, max_position_embeddings=256, n_group=2, topk_group=1, index_n_heads=12,
                 index_head_dim=8, index_topk=3,
                 rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "mscale": 1.0,
                                  "mscale_all_dim": 1.0, "original_max_position_embeddings": 8,
                                  "beta_fast": 32, "beta_slow": 1}),
}


def make_v32(kind: str, path: str, seed: int = 0):
    import transformers

    cfg = transformers.DeepseekV32Config(**SHAPES[kind])
    torch.manual_seed(seed)
    model = transformers.DeepseekV32ForCausalLM(cfg).float().eval()
    randomize(model, seed)
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("v32")
    return {kind: (str(root / kind), make_v32(kind, str(root / kind))) for kind in SHAPES}


@pytest.fixture(scope="module")
def data():
    return batch(96, BATCH, SEQ, seed=3)


@pytest.fixture(scope="module")
def reference(models, data):
    ids, labels = data
    return {kind: evaluate(path, {}, 1, ids, labels) for kind, (path, _) in models.items()}


def one_process(path: str):
    family, cfg = family_for_hf(path)
    model = family.build_stage(cfg, single_process_state())
    load_hf_weights(model, path)
    return family, model


def test_config_round_trip(models):
    from r1mega.models.deepseek_v32.config import DSAConfig

    family, cfg = family_for_hf(models["yarn"][0])
    assert family.name == "deepseek_v32" and isinstance(cfg, DSAConfig)
    assert (cfg.index_n_heads, cfg.index_head_dim, cfg.index_topk) == (12, 8, 3)
    assert DSAConfig.from_hf(cfg.to_hf()) == cfg
    assert cfg.to_hf()["model_type"] == "deepseek_v32"


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_matches_transformers(kind, models, data, reference):
    _, hf = models[kind]
    ids, labels = data
    ref_logits = hf(ids).logits
    ref_loss = F.cross_entropy(ref_logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    hf.zero_grad()
    ref_loss.backward()
    ours = reference[kind]
    torch.testing.assert_close(ours["logits"], ref_logits.detach(), atol=1e-4, rtol=1e-4)
    assert abs(ours["loss"] - ref_loss.item()) < 1e-5
    hf_grads = hf_param_grads(hf)
    # transformers' indexer runs without gradient; ours gets none from the LM loss either
    indexer = {k for k in ours["grads"] if ".indexer." in k}
    assert indexer and all(ours["grads"][k].abs().max() == 0 for k in indexer)
    buffers = {k for k in ours["grads"] if k.endswith("e_score_correction_bias")}  # a buffer: zero
    assert set(ours["grads"]) - indexer - buffers == set(hf_grads)
    for name, g in hf_grads.items():
        torch.testing.assert_close(ours["grads"][name], g, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_selection_matters_and_dense_path_is_mla(models, data, reference):
    """With top-k below the sequence the logits differ from the same weights attending densely."""
    ids, _ = data
    _, model = one_process(models["sparse"][0])
    with torch.no_grad():
        sparse = model(ids).logits
        for attn in model.modules():
            if hasattr(attn, "indexer"):
                attn.dense = True
        dense = model(ids).logits
    assert (sparse - dense).abs().max() > 1e-3
    torch.testing.assert_close(sparse.transpose(0, 1), reference["sparse"]["logits"], atol=1e-5, rtol=1e-5)


def test_selection_by_query_blocks_and_documents(models, monkeypatch):
    """Tiny score budget (one query per block) selects exactly what one block does; packed documents
    attend like separate sequences."""
    import r1mega.models.deepseek_v32.indexer as indexer_mod

    _, model = one_process(models["sparse"][0])
    g = torch.Generator().manual_seed(5)
    a, b = torch.randint(0, 96, (1, 9), generator=g), torch.randint(0, 96, (1, 7), generator=g)
    packed = torch.cat([a, b], 1)
    docs = torch.tensor([[0] * 9 + [1] * 7])
    positions = torch.cat([torch.arange(9), torch.arange(7)])[None]
    with torch.no_grad():
        whole = model(packed, attn_mask=docs, position_ids=positions).logits
        monkeypatch.setattr(indexer_mod, "SCORE_BUDGET", 1)
        blocked = model(packed, attn_mask=docs, position_ids=positions).logits
        apart = torch.cat([model(a).logits, model(b).logits], 0)
    torch.testing.assert_close(whole, blocked, atol=1e-6, rtol=1e-6)  # same picks, other matmul shapes
    indexer = model.layers["0"].self_attn.indexer
    q, w, k = (torch.randn(16, 2, 16, 16, generator=g), torch.randn(16, 2, 16, generator=g),
               torch.randn(16, 2, 16, generator=g))
    picks = indexer.select(q, w, k, docs.expand(2, -1), docs.expand(2, -1), 5)
    monkeypatch.setattr(indexer_mod, "SCORE_BUDGET", 1 << 24)
    assert all(torch.equal(x, y) for x, y in zip(picks, indexer.select(q, w, k, docs.expand(2, -1), docs.expand(2, -1), 5)))
    assert not picks[1][:, :4].all() and picks[1][:, 4:9].all() and not picks[1][:, 9:13].all()
    torch.testing.assert_close(whole, apart, atol=1e-5, rtol=1e-5)


def test_cached_decode_equals_full_forward(models):
    """Greedy decoding with the indexer's keys cached (paged cache of continuous batching, and the
    static cache of the reference engine) equals full re-forwards; prompts + 5 tokens > top-k, so
    decoding steps select."""
    from r1mega.inference.generate import GenerationConfig, generate_static
    from student_workers import build

    for kind in ("sparse", "yarn"):
        res = decode(models[kind][0], {}, 1)
        assert torch.equal(res["cached"], res["full"]), kind
        assert res["cached"].shape == (len(PROMPTS), 8 + 5)
        cfg = family_for_hf(models[kind][0])[1]
        assert res["values_per_token"] == cfg.kv_lora_rank + cfg.qk_rope_head_dim + cfg.index_head_dim
        _, chunks, ps, _, _ = build(models[kind][0], {}, 1)
        with torch.no_grad():
            for p in chunks.parameters():
                if p.dim() > 1:
                    p.mul_(3)  # as decode() does
        static = generate_static(chunks, ps, PROMPTS, GenerationConfig(max_new_tokens=5, temperature=0.0))
        assert torch.equal(static.tokens, res["full"]), kind


def test_parameter_count_equals_transformers(models):
    from r1mega.models.deepseek_v32.params import count_params

    for kind, (path, hf) in models.items():
        cfg = family_for_hf(path)[1]
        assert count_params(cfg)["total"] == sum(p.numel() for p in hf.parameters()), kind


def test_index_loss_trains_the_indexer_only(models, data):
    """The KL loss gives the indexer (and only it) a gradient; the LM loss gives it none, and the
    main model's gradients are the same with and without the indexer loss."""
    ids, labels = data
    for kind, dense in (("sparse", False), ("sparse", True), ("dense", False)):
        grads = {}
        for scale in (0.0, 1.0):
            _, model = one_process(models[kind][0])
            model.train()
            attns = [m for m in model.modules() if hasattr(m, "indexer")]
            for m in attns:
                m.dense, m.index_loss_scale = dense, scale
            out = model(ids, labels=labels)
            out.token_loss.sum().backward()
            grads[scale] = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                            for n, p in model.named_parameters()}
            if scale:
                kl = sum(m.index_loss_sum for m in attns)
                assert kl > 0
        for n in grads[0.0]:
            if ".indexer." in n:
                assert grads[0.0][n].abs().max() == 0, n
            else:
                torch.testing.assert_close(grads[1.0][n], grads[0.0][n], atol=0, rtol=0, msg=n)
        assert any(grads[1.0][n].abs().max() > 0 for n in grads[1.0] if ".indexer.wq_b" in n)


LAYOUTS = {
    "sparse TP2+SP x DP2": ("sparse", dict(tp=2, sp=True)),
    "sparse PP2 x DP2": ("sparse", dict(pp=3 - 1, microbatches=2)),
    "sparse EP2 x DP2": ("sparse", dict(ep=2)),
    "yarn TP2 x PP2": ("yarn", dict(tp=2, pp=2, microbatches=2)),
    "yarn EP2 x TP2 (etp 1)": ("yarn", dict(tp=2, ep=2, etp=1)),
}


def _layout_cases(models):
    cases = [("eval", models[k][0], lay) for k, lay in LAYOUTS.values()]
    cases.append(("decode", models["sparse"][0], dict(tp=2, pp=2)))
    return cases


def _index_loss_cases(models):
    return [(models["sparse"][0], dict(tp=2, sp=True), "sparse"), (models["sparse"][0], dict(pp=2, microbatches=2),
                                                                      "sparse"),
            (models["yarn"][0], dict(tp=2, pp=2, microbatches=2), "sparse"),
            (models["sparse"][0], dict(tp=2), "dense_warmup"),
            # context parallel: zigzag query chunks select over the whole causal prefix
            (models["sparse"][0], dict(cp=2), "sparse"), (models["yarn"][0], dict(cp=2, tp=2), "sparse"),
            (models["sparse"][0], dict(cp=2), "dense_warmup")]


@pytest.fixture(scope="module")
def four_rank_runs(request, models, data):
    """Both four-rank tests below (those selected) in one spawn. {node name: per-rank results}."""
    from dsa_workers import dsa_worker
    from spawn_cases import run_selected

    ids, labels = data
    return run_selected(request, {
        "test_layouts_equal_one_process": lambda p: (4, students_worker, (_layout_cases(models), ids, labels)),
        "test_index_loss_layouts_equal_one_process":
            lambda p: (4, dsa_worker, (_index_loss_cases(models), ids, labels)),
    })


def test_layouts_equal_one_process(request, four_rank_runs, models, data, reference):
    from test_students import check

    per_rank = four_rank_runs[request.node.name]
    for i, (name, (kind, _)) in enumerate(LAYOUTS.items()):
        check([r[i] for r in per_rank], reference[kind], name)
    one = decode(models["sparse"][0], {}, 1)
    for r in per_rank:
        assert torch.equal(r[-1]["cached"], one["cached"])


def all_tensors(directory: str) -> dict:
    from safetensors.torch import load_file

    out = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(directory, name)))
    return out


def test_convert_round_trip_is_bit_exact(models, tmp_path):
    from tools.convert import do_export, do_import

    path = models["yarn"][0]
    do_import(path, str(tmp_path / "ck"), dtype="float32")
    do_export(str(tmp_path / "ck"), str(tmp_path / "out"))
    a, b = all_tensors(path), all_tensors(str(tmp_path / "out"))
    assert set(a) == set(b) and any(".indexer.k_norm.bias" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.load(open(tmp_path / "out" / "config.json"))["model_type"] == "deepseek_v32"


@pytest.mark.parametrize("stage, keys", [
    ("dense_warmup", ["train.dsa_stage=dense_warmup"]),  # the older name of the key, still read
    ("sparse", ["model.family=deepseek_v32", "model.dsa_stage=sparse"]),
])
def test_dsa_training_stage_from_a_converted_checkpoint(stage, keys, tmp_path):
    """r1mega-convert import of a tiny transformers V3.2, then `model.dsa_stage`: the indexer's KL
    loss falls; the warm-up changes the indexer only, sparse training changes everything."""
    import transformers

    from r1mega.config import load_config
    from r1mega.train.trainer import train
    from tools.convert import do_export, do_import

    shapes = {**SHAPES["sparse"], "vocab_size": 384, "index_topk": 16}
    hf_cfg = transformers.DeepseekV32Config(**shapes)
    torch.manual_seed(0)
    hf = transformers.DeepseekV32ForCausalLM(hf_cfg)
    randomize(hf)  # peaked attention, an untrained indexer: a KL to close
    hf.save_pretrained(str(tmp_path / "hf"))
    do_import(str(tmp_path / "hf"), str(tmp_path / "ck"), dtype="float32")
    run = tmp_path / "run"
    cfg = load_config(None, [f"train.run_dir={run}", f"data.cache_dir={tmp_path / 'data'}", "data.synthetic=arithmetic",
                             "data.synthetic_docs=300", "data.seq_length=48", "data.micro_batch_size=4",
                             "data.global_batch_size=4", "train.steps=10", f"train.load={tmp_path / 'ck'}",
                             *keys, "optim.lr=0.003", "optim.min_lr=0.003", "optim.decay=constant",
                             "optim.weight_decay=0"])
    train(cfg, "pretrain")
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    index = [r["index_loss"] for r in rows]
    assert len(index) == 10 and index[0] > 0
    assert sum(index[-3:]) / 3 < 0.8 * sum(index[:3]) / 3, index
    do_export(str(run / "checkpoints" / "step_00000010"), str(tmp_path / "out"))
    before, after = all_tensors(str(tmp_path / "hf")), all_tensors(str(tmp_path / "out"))
    changed = {k: not torch.equal(before[k], after[k]) for k in before}
    indexer = [k for k in changed if ".indexer." in k]
    assert all(changed[k] for k in indexer if "k_norm" not in k)
    others = [changed[k] for k in changed if ".indexer." not in k]
    assert (not any(others)) if stage == "dense_warmup" else all(others)


def test_fp8_checkpoint_round_trips_with_its_scales(tmp_path):
    """DeepSeek's FP8 layout for V3.2: *_proj weights and the indexer's wq_b/wk in e4m3 with 128x128
    scale_inv (ragged edge blocks); weights_proj, norms, router, embeddings in high precision.
    fp8=keep passes them through bit-exactly; fp8=dequant then --fp8-blocks gives the scales back."""
    import transformers
    from safetensors.torch import load_file, save_file

    from r1mega.models.family import family_named
    from r1mega.models.fp8 import FP8, quantize
    from tools.convert import do_export, do_import, fp8_quantizable

    src = str(tmp_path / "hf")
    shapes = {**SHAPES["sparse"], "hidden_size": 160, "intermediate_size": 200, "moe_intermediate_size": 136,
              "q_lora_rank": 132, "index_n_heads": 2, "index_head_dim": 72, "num_hidden_layers": 2}
    transformers.DeepseekV32ForCausalLM(transformers.DeepseekV32Config(**shapes)).save_pretrained(src)
    sd = load_file(os.path.join(src, "model.safetensors"))
    for k in list(sd):
        if fp8_quantizable(k, sd[k], family_named("deepseek_v32")):
            sd[k], sd[k + "_scale_inv"] = quantize(sd[k] * 40)
    assert "model.layers.0.self_attn.indexer.wk.weight_scale_inv" in sd
    assert sd["model.layers.0.self_attn.indexer.weights_proj.weight"].dtype != FP8
    save_file(sd, os.path.join(src, "model.safetensors"), metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                  "weight_block_size": [128, 128]}
    json.dump(cfg, open(os.path.join(src, "config.json"), "w"))

    def same(a, b):
        return a.dtype == b.dtype and torch.equal(a.view(torch.uint8) if a.dtype == FP8 else a,
                                                  b.view(torch.uint8) if b.dtype == FP8 else b)

    do_import(src, str(tmp_path / "keep"), fp8="keep")
    do_export(str(tmp_path / "keep"), str(tmp_path / "out_keep"))
    back = all_tensors(str(tmp_path / "out_keep"))
    assert set(back) == set(sd) and all(same(back[k], v) for k, v in sd.items())

    do_import(src, str(tmp_path / "deq"), fp8="dequant", dtype="float32")
    do_export(str(tmp_path / "deq"), str(tmp_path / "out_deq"), fp8_blocks=True)
    back = all_tensors(str(tmp_path / "out_deq"))
    assert set(back) == set(sd)
    for k, v in sd.items():
        if v.dtype == FP8:
            assert back[k].dtype == FP8 and torch.equal(back[k].view(torch.uint8), v.view(torch.uint8)), k
        elif k.endswith("_scale_inv"):
            torch.testing.assert_close(back[k], v, rtol=1e-6, atol=0)


def test_index_loss_layouts_equal_one_process(request, four_rank_runs, models, data):
    """The indexer's KL loss and every gradient (the indexer's from the KL, the rest from the LM
    loss) under TP (+SP), PP, CP and DP equal one process, in both stages."""
    from dsa_workers import evaluate_with_index_loss

    ids, labels = data
    cases = _index_loss_cases(models)
    per_rank = four_rank_runs[request.node.name]
    for i, (path, lay, stage) in enumerate(cases):
        ref = evaluate_with_index_loss(path, {}, 1, stage, ids, labels)
        assert ref["index_loss"] > 0
        grads = {}
        for r in per_rank:
            assert r[i]["loss"] == pytest.approx(ref["loss"], abs=1e-5)
            assert r[i]["index_loss"] == pytest.approx(ref["index_loss"], rel=1e-4)
            grads.update(r[i].get("grads", {}))
        assert set(grads) == set(ref["grads"])
        assert any(g.abs().max() > 0 for k, g in ref["grads"].items() if ".indexer.wq_b" in k)
        for key, g in ref["grads"].items():
            torch.testing.assert_close(grads[key], g, atol=1e-6, rtol=1e-4, msg=lambda m: f"{lay} {stage} {key}: {m}")


def test_sparse_attention_by_recomputed_query_blocks(models, data, monkeypatch):
    """One query per block (each recomputed in backward) gives the loss and gradients of one block."""
    import r1mega.models.deepseek_v32.sparse_mla as sparse_mod

    ids, labels = data
    results = []
    for budget in (sparse_mod.GATHER_BUDGET, 1):
        monkeypatch.setattr(sparse_mod, "GATHER_BUDGET", budget)
        family, model = one_process(models["sparse"][0])
        loss = model(ids, labels=labels).token_loss.sum()
        loss.backward()
        results.append((loss.detach(), family.gather_full(model, grads=True)))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-6)
    for k, g in results[0][1].items():
        assert (results[1][1][k] - g).abs().max() <= 1e-5 * g.abs().max() + 1e-7, k


def test_671b_yaml_is_the_published_config():
    """configs/model/deepseek_v32_671b.yaml (model.family: deepseek_v32) is the published config.json."""
    from r1mega.config import load_config
    from r1mega.models.deepseek_v32.config import DSAConfig

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    yaml_cfg = load_config(os.path.join(root, "configs", "model", "deepseek_v32_671b.yaml")).model
    assert isinstance(yaml_cfg, DSAConfig)
    assert yaml_cfg == DSAConfig.from_hf(os.path.join(root, "configs", "model", "hf", "deepseek_v32_671b.json"))


@pytest.mark.slow
def test_671b_config_and_the_long_context_plan():
    """The published V3.2 shapes: transformers' DeepseekV32Config defaults, our count equals its
    (meta-device) parameter count; the planner adds the indexer; DSA's attention FLOPs per token stop
    growing past top-k while dense MLA's grow linearly."""
    import transformers

    from r1mega.config import ParallelConfig
    from r1mega.models.deepseek_v32.config import DSAConfig
    from r1mega.models.deepseek_v32.params import attention_flops_per_token, count_params
    from r1mega.models.deepseek_v32.plan import base_config, long_context_table
    from r1mega.config import build_config
    from r1mega.plan import plan_for

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    m = DSAConfig.from_hf(os.path.join(root, "configs", "model", "hf", "deepseek_v32_671b.json"))
    d = transformers.DeepseekV32Config()
    assert (m.index_n_heads, m.index_head_dim, m.index_topk) == (d.index_n_heads, d.index_head_dim, d.index_topk)
    with torch.device("meta"):
        hf = transformers.DeepseekV32ForCausalLM(d)
    assert count_params(m)["total"] == sum(p.numel() for p in hf.parameters()) == 671_877_929_216
    k = m.index_topk
    assert attention_flops_per_token(m, k, sparse=False) < attention_flops_per_token(m, k, sparse=True)  # + indexer
    rows = {r["seq"]: r for r in long_context_table(m)}
    assert rows[131072]["attn_tflop_per_token_dense"] == pytest.approx(4 * rows[32768]["attn_tflop_per_token_dense"])
    assert rows[131072]["attn_tflop_per_token_dsa"] < 0.25 * rows[131072]["attn_tflop_per_token_dense"]
    par = dict(tp=8, pp=16, ep=64, etp=1, dp=8, cp=4, sp=True)
    plans = [plan_for(build_config(x, ParallelConfig(**par)), 8 * 16 * 8 * 4, 1, 32768, 64, rollout_batch=64,
                      rollout_len=32768) for x in (m, base_config(m))]
    assert plans[0].counts["total"] == count_params(m)["total"]
    assert plans[0].memory["weights"] > plans[1].memory["weights"]
    assert plans[0].kv_cache["index_keys"] == pytest.approx(plans[0].kv_cache["mla_latent"] * 128 / 576)


@pytest.mark.slow
def test_verify_hf_command_on_v32(models):
    """`r1mega verify-hf` on V3.2 (selection active at 32 tokens): TP2 x EP2, TP2+SP x PP2, CP2 x TP2."""
    from test_students import verify_on_ranks

    assert verify_on_ranks(4, "--hf-dir", models["sparse"][0], "--tp", "2", "--ep", "2") < 1e-4
    assert verify_on_ranks(4, "--hf-dir", models["yarn"][0], "--tp", "2", "--pp", "2", "--sp") < 1e-4
    assert verify_on_ranks(4, "--hf-dir", models["sparse"][0], "--cp", "2", "--tp", "2") < 1e-4


@pytest.mark.parametrize("mode, modules", [("full", None), ("selective", ["indexer"]),
                                           ("selective", ["indexer", "mla_up_proj", "core_attn"])])
def test_full_recompute_with_the_index_loss(models, data, mode, modules):
    """train.recompute=full re-runs each DSA layer in backward, selective ["indexer"] the indexer's
    projections: same gradients, the KL counted once."""
    from r1mega.parallel.recompute import set_recompute

    ids, labels = data
    runs = []
    for m_, mods in (("none", None), (mode, modules)):
        family, model = one_process(models["sparse"][0])
        model.train()
        set_recompute(model, m_, *([mods] if mods else []))
        attns = [m for m in model.modules() if hasattr(m, "indexer")]
        calls = []  # the indexer's key projection runs again in backward when it is recomputed
        for m in attns:
            m.index_loss_scale = 0.5
            m.indexer.wk.register_forward_hook(lambda *_: calls.append(1))
        model(ids, labels=labels).token_loss.sum().backward()
        runs.append((sum(m.index_loss_sum for m in attns), family.gather_full(model, grads=True), len(calls)))
    assert runs[1][2] == 2 * runs[0][2] > 0, (runs[0][2], runs[1][2])
    torch.testing.assert_close(runs[1][0], runs[0][0], atol=0, rtol=1e-6)
    for k, g in runs[0][1].items():
        torch.testing.assert_close(runs[1][1][k], g, atol=1e-6, rtol=1e-5, msg=k)


def test_grpo_on_v32_rollout_logprobs_equal_training(tmp_path):
    """GRPO runs on a V3.2 model: rollouts (paged cache with the indexer's keys, top-4 per decoding
    step) and the training forward (blockwise top-4) give the same log-probs."""
    from dataclasses import asdict

    from r1mega.config import load_config
    from r1mega.models.deepseek_v32.config import DSAConfig
    from r1mega.rl.grpo import grpo

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, "configs", "tiny", "r1_zero_demo.yaml"),
                      [f"train.run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/data", "train.steps=2",
                       "rl.group_size=4", "rl.prompts_per_step=4", "data.micro_batch_size=8",
                       "data.global_batch_size=8", "data.synthetic_docs=300"])
    cfg.model = DSAConfig(**asdict(cfg.model), index_n_heads=8, index_head_dim=16, index_topk=4)
    grpo(cfg, eval_problems=0)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["logprob_gap_max"] < 1e-4 and r["response_len"] > 0, r
