"""A DeepSeek checkpoint saved by transformers holds no MTP layer (transformers drops it); loading it for
generation left that layer at the process's unseeded constructor init, so `--speculative mtp` drafted
with other weights in every process: sampled rollouts differed run to run (and between a run and its
resume, or between layouts), although the noise is keyed by (seed, problem, sample, position)."""
import torch
import transformers

from r1mega.config import ParallelConfig
from r1mega.generation.model_source import load_model
from r1mega.inference.generate import GenerationConfig, generate


def _tiny_v3(path):
    torch.manual_seed(0)
    cfg = transformers.DeepseekV3Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2,
        n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8,
        qk_nope_head_dim=8, v_head_dim=8, n_group=1, topk_group=1, max_position_embeddings=128,
        num_nextn_predict_layers=1)
    model = transformers.DeepseekV3ForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1:
                p.normal_(0, 0.3)
    model.save_pretrained(path)


def _load(path, global_seed):
    torch.manual_seed(global_seed)  # what another process, or a resumed run, starts from
    return load_model(str(path), ParallelConfig(), 1, False, tokenizer="unused")


def test_a_checkpoint_without_mtp_layer_loads_the_same_draft_in_every_process(tmp_path):
    _tiny_v3(tmp_path)
    a, b = _load(tmp_path, 1), _load(tmp_path, 2)
    mtp_a = dict(a.chunks[0].mtp.named_parameters())
    mtp_b = dict(b.chunks[0].mtp.named_parameters())
    assert mtp_a, "the model should have an MTP layer"
    for name, p in mtp_a.items():
        assert torch.equal(p, mtp_b[name]), name

    # sampled speculative rollouts: the draft decides which tokens come out (the distribution is exact)
    prompts = [[5, 9, 11, 3] * 4, [7, 2]]
    gen = GenerationConfig(max_new_tokens=24, temperature=1.0, top_k=8, seed=3, speculative="mtp", draft_tokens=2)
    out_a = generate(a.chunks, a.ps, prompts, gen).completions()
    out_b = generate(b.chunks, b.ps, prompts, gen).completions()
    assert out_a == out_b


def test_last_pipeline_stage_reads_its_embedding_copy_when_the_mtp_layer_is_absent(tmp_path):
    """Under PP the last stage holds a copy of the embedding for the MTP layer (stored with the MTP
    layer in DeepSeek's own checkpoints). Without that layer in the checkpoint the copy kept its init:
    generation under PP drafted on a random embedding, unlike one process (GRPO's optimizer load happened
    to overwrite it from the master weights)."""
    from safetensors.torch import load_file

    from r1mega.models.family import family_for_hf
    from r1mega.models.weights import load_hf_weights
    from r1mega.parallel.layout import single_process_state

    _tiny_v3(tmp_path)
    family, cfg = family_for_hf(str(tmp_path))
    last = family.build_stage(cfg, single_process_state(), stage=1, num_stages=2)  # PP2's last stage
    assert last.mtp_embed is not None
    report = load_hf_weights(last, str(tmp_path))
    embedding = load_file(str(tmp_path / "model.safetensors"))["model.embed_tokens.weight"]
    assert torch.equal(last.mtp_embed.weight, embedding)
    assert not any(name.startswith("mtp_embed") for name in report.kept_init)
