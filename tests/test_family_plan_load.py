"""`r1mega plan --config RUN.yaml` where the run config has `train.load` and no model section: the run
trains the checkpoint's model (family and shapes from its meta.json), but plan counted and sized
DeepSeek-V3's default model (139,168 parameters for a 34,204-parameter Qwen3 student); `--dry-run`
already took the checkpoint's. Plan now does too."""
import re

import torch
import transformers

from r1mega.plan import main as plan
from tools.convert import main as convert


def test_plan_takes_the_model_train_load_holds(tmp_path, capsys):
    cfg = transformers.Qwen3Config(vocab_size=96, hidden_size=36, intermediate_size=72, num_hidden_layers=2,
                                   num_attention_heads=6, num_key_value_heads=2, head_dim=10, max_position_embeddings=128)
    torch.manual_seed(0)
    hf = transformers.Qwen3ForCausalLM(cfg)
    hf.save_pretrained(tmp_path / "hf")
    assert convert(["import", "--hf-dir", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 0
    run = tmp_path / "run.yaml"
    run.write_text(f"train:\n  load: {tmp_path / 'ckpt'}\n")
    capsys.readouterr()
    assert plan(["--config", str(run), "--seq-length", "64"]) == 0
    total = int(re.search(r"total_params=(\d+)", capsys.readouterr().out).group(1))
    assert total == sum(p.numel() for p in hf.parameters())


def test_plan_of_a_hugging_face_config_json_says_how_to_plan_it(tmp_path, capsys):
    """`r1mega plan --config DIR/config.json` (a model's own config, as a user would try first) said
    "config error at 'architectures': Key 'architectures' not in 'Config'"; it now says what the file is
    and how to plan that model."""
    cfg = transformers.Qwen3Config(vocab_size=96, hidden_size=36, intermediate_size=72, num_hidden_layers=2,
                                   num_attention_heads=6, num_key_value_heads=2, head_dim=10, max_position_embeddings=128)
    cfg.save_pretrained(tmp_path)
    capsys.readouterr()
    from r1mega.cli import main

    assert main(["plan", "--config", str(tmp_path / "config.json"), "--seq-length", "64"]) == 2
    err = capsys.readouterr().err
    assert "'--config'" in err and "is a Hugging Face config.json" in err and "r1mega-convert import" in err, err
    assert "architectures" not in err
