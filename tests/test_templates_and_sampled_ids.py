"""Templates (chat = the model's own, chat_think = plus R1's "<think>\\n"), SFT in the model's own chat
template, sampled token ids kept from rejection sampling into SFT, eval's summary and the rollout table."""
from __future__ import annotations

import json
import os
import sys

import pytest

from r1mega.data.sft import IGNORE, SFTData, render
from r1mega.data.tokenizer import Tokenizer, train_sentencepiece
from r1mega.generation.filters import FilterConfig
from r1mega.generation.reject_sample import select

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """A SentencePiece BPE ("▁A") and a byte-level BPE ("ĠA"): both have leading-space tokens."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from rl_data import CHAT_TEMPLATE, SPECIAL
    from r1mega.data.tokenizer import BOS, EOS

    root = tmp_path_factory.mktemp("toks")
    texts = [f"Q: {a}+{b}= A: {a + b}" for a in range(10) for b in range(10)] * 5
    texts += [f"<think> {a} plus {b} is {a + b} </think> {a + b}" for a in range(10) for b in range(10)]
    sp = Tokenizer(train_sentencepiece(texts, str(root / "sp"), 300))
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL, show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    (root / "bpe").mkdir()
    hf.save(str(root / "bpe" / "tokenizer.json"))
    (root / "bpe" / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "chat_template": CHAT_TEMPLATE}, ensure_ascii=False))
    return {"sentencepiece": (sp, "▁"), "bpe": (Tokenizer(str(root / "bpe")), "Ġ")}


@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
def test_sft_trains_exactly_the_sampled_ids(tokenizers, kind, tmp_path):
    tok, space = tokenizers[kind]
    assert tok.token_id(space + "A") is not None, "the tokenizer has a leading-space token"
    prompt_ids = tok.encode("Q: 3+4=")
    # the model sampled the space and "A" as two tokens: decoding and encoding again merges them
    completion_ids = [tok.token_id(space), tok.token_id("A")] + tok.encode(": 7") + [tok.eos_id]
    text = tok.decode(completion_ids[:-1])
    rec = {"id": "p", "prompt": "Q: 3+4=", "answer": "7"}
    sample = {"id": "p", "sample": 0, "completion": text, "finish_reason": "eos",
              "completion_tokens": len(completion_ids), "prompt_ids": prompt_ids, "completion_ids": completion_ids,
              "tokenizer": tok.fingerprint()}
    rows, counts = select([rec], {"p": [sample]}, FilterConfig(require_format=False), keep=1)
    assert counts == {"kept": 1} and rows[0]["completion_ids"] == completion_ids
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n")
    data = SFTData(str(path), tok, seq_length=32, seed=0, template="raw")
    row = data.rows[0]
    trained = row.labels[row.labels != IGNORE].tolist()
    assert data.sampled == 1 and trained == completion_ids
    assert row.input_ids[:len(prompt_ids)].tolist() == prompt_ids
    # the text alone would train other tokens (what SFT did before): this test can tell them apart
    ids, learn = render(rows[0]["messages"], tok, "raw")
    assert [i for i, keep in zip(ids, learn) if keep] != completion_ids
    # ids of another tokenizer are not trusted: the record's text is rendered instead
    other = json.loads(path.read_text())
    other["tokenizer"] = "0123456789abcdef"
    path.write_text(json.dumps(other) + "\n")
    assert SFTData(str(path), tok, seq_length=32, seed=0, template="raw").sampled == 0


def test_chat_is_the_models_own_template_and_chat_think_adds_the_thought(tokenizers):
    from r1mega.data.prompts import render as render_prompt
    from r1mega.rl.rewards import accuracy_reward

    tok = tokenizers["bpe"][0]
    problem = {"prompt": "What is 3 + 18?", "answer": "21"}
    chat, think = render_prompt(problem, "chat", tok), render_prompt(problem, "chat_think", tok)
    assert chat.text == tok.apply_chat_template([{"role": "user", "content": "What is 3 + 18?"}])
    assert chat.response_prefix == "" and think.text == chat.text + "<think>\n"
    # a non-reasoning chat model's reply: judged under chat, hidden in an unclosed thought under chat_think
    reply = "Sure! 3 + 18 = 21"
    assert accuracy_reward(chat.response_prefix + reply, problem) == 1.0
    assert accuracy_reward(think.response_prefix + reply, problem) == 0.0


def test_sft_renders_with_the_models_own_chat_template(tokenizers):
    tok = tokenizers["bpe"][0]
    msgs = [{"role": "user", "content": "What is 1 + 2?"}, {"role": "assistant", "content": "<think> 1 plus 2 </think> 3"},
            {"role": "user", "content": "And 2 + 2?"}, {"role": "assistant", "content": "4"}]
    ids, learn = render(msgs, tok, "auto")  # the tokenizer has a chat template: it is used
    assert tok.decode(ids) == tok.apply_chat_template(msgs, add_generation_prompt=False)
    learned = tok.decode([i for i, k in zip(ids, learn) if k])
    assert learned == "<think> 1 plus 2 </think> 3" + tok.special["eos_token"] + "4" + tok.special["eos_token"]
    sp = tokenizers["sentencepiece"][0]  # no chat template: DeepSeek-R1's format
    assert render(msgs, sp, "auto") == render(msgs, sp, "r1")
    from r1mega.errors import ConfigError

    with pytest.raises(ConfigError, match="data.sft_template"):
        render(msgs, sp, "model")


def test_eval_summary_states_k_temperature_top_p_and_cons_at_64(tmp_path):
    data, comp = tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "prompt": "q", "answer": "4"}) + "\n" for i in range(2)))
    # p0: 40 of 64 say 4 (the vote is right); p1: 20 say 4, 44 say 5 (the vote is wrong)
    lines = [("p0", "4" if s < 40 else "5") for s in range(64)] + [("p1", "4" if s < 20 else "5") for s in range(64)]
    comp.write_text("".join(json.dumps({"id": i, "completion": f"<think>t</think> {a}"}) + "\n" for i, a in lines))
    from cli_in_process import run_main  # `r1mega eval ...` in this process (its summary, not the interpreter)
    from r1mega.cli import main

    out = run_main(main, ["eval", "--data", data, "--completions", comp, "--out", tmp_path / "ev", "--temperature", "0.6",
                          "--top-p", "0.95"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == (
        "pass@1=0.4688 cons@64=0.5000 problems=2 samples=64 temperature=0.6 top_p=0.95")
    summary = json.loads((tmp_path / "ev" / "b" / "summary.json").read_text())
    assert summary["cons@64"] == 0.5 and summary["samples"] == 64
    assert summary["temperature"] == 0.6 and summary["top_p"] == 0.95 and "pass@64" in summary
    assert "| temperature | top_p |" in (tmp_path / "ev" / "summary.md").read_text()


def test_rollout_table_rows_and_schedule(tmp_path):
    from r1mega.train.metrics_log import MetricsLog, rollout_table_rows, table_due

    rollouts = [{"step": 3, "id": "a", "prompt": "Q", "completion": "<think>t</think> 4", "reward": 2.0,
                 "rewards": {"accuracy": 1.0, "format": 1.0}, "answer": 4, "truncated": False},
                {"step": 3, "id": "b", "prompt": "Q2", "completion": "5", "reward": 0.0,
                 "rewards": {"accuracy": 0.0, "format": 0.0}, "answer": None, "truncated": True}]
    columns, rows = rollout_table_rows(rollouts)
    assert columns == ["step", "id", "prompt", "completion", "reward", "reward/accuracy", "reward/format", "answer",
                       "truncated"]
    assert rows[0] == [3, "a", "Q", "<think>t</think> 4", 2.0, 1.0, 1.0, "4", False]
    assert rows[1][-2:] == [None, True]
    # a rollout of 4 minibatch steps from step 8 passes step 10: due every 10 steps; 0 never
    assert table_due(8, 4, 10) and not table_due(0, 4, 10) and not table_due(8, 4, 0) and table_due(9, 1, 10)
    log = MetricsLog(str(tmp_path), 10, 0, True)  # no wandb: the table is a no-op
    log.rollout_table(1, rollouts)
    log.close()
    try:
        import wandb  # noqa: F401
    except ImportError:
        return  # the wandb part needs the package (optional dependency)
    os.environ.setdefault("WANDB_MODE", "offline")
    log = MetricsLog(str(tmp_path / "w"), 10, 0, True, wandb_project="r1mega-test")
    log.rollout_table(1, rollouts)
    log.close()
    assert any(f.endswith(".wandb") for _, _, fs in os.walk(tmp_path / "w") for f in fs)
