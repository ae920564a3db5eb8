"""verify-hf on a MoE whose rows are not 16-byte aligned (hidden 33 in float32): r1mega runs it, but
transformers' default grouped_mm experts raised 'strides should be multiple of 16 bytes' and
verify-hf ended in a traceback. The reference now runs transformers' per-expert loop."""
from r1mega.verify_hf import main as verify_hf
from tests.tiny_hf import make_hf_model


def test_verify_hf_on_unaligned_moe_rows(tmp_path):
    make_hf_model("DeepseekV3", num_attention_heads=3, hidden_size=33, qk_nope_head_dim=6, qk_rope_head_dim=2,
                  v_head_dim=5, moe_intermediate_size=10, n_group=2, topk_group=1).save_pretrained(tmp_path)
    assert verify_hf(["--hf-dir", str(tmp_path), "--seq-length", "16"]) == 0
