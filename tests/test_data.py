"""Data: indexed datasets through megatron-core, blending, SFT rendering/packing, bad lines."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from r1mega.config import Config, ModelConfig, validate
from r1mega.data.jsonl import DataError
from r1mega.data.pretrain import PretrainData, TokenStream, write_indexed
from r1mega.data.sft import IGNORE, SFTData, block_causal_mask, pack, read_chat_jsonl, render
from r1mega.data.tokenizer import Tokenizer, train_sentencepiece
from r1mega.models.deepseek_v3.model import DeepseekV3
from r1mega.parallel.layout import single_process_state
from r1mega.train.setup import init_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [f"Q: {a}+{b}= A: {a + b}" for a in range(30) for b in range(30)] + ["What is it?", "<think>x</think>"]
    return Tokenizer(train_sentencepiece(texts, str(tmp_path_factory.mktemp("tok") / "t"), 320))


def test_indexed_stream_and_blending(tmp_path):
    a = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    b = [[100 + i for i in range(20)]]
    write_indexed(str(tmp_path / "a"), a, 512)
    write_indexed(str(tmp_path / "b"), b, 512)
    assert TokenStream(str(tmp_path / "a")).window(2, 5).tolist() == [3, 4, 5, 6, 7]
    data = PretrainData([str(tmp_path / "a"), str(tmp_path / "b")], [1.0, 3.0], seq_length=2, seed=0)
    picks = [data.sample(i)[0] >= 100 for i in range(40)]
    assert sum(picks) == 30  # 3:1 blend, exactly, by Megatron's greedy rule
    again = PretrainData([str(tmp_path / "a"), str(tmp_path / "b")], [1.0, 3.0], seq_length=2, seed=0)
    assert all(np.array_equal(data.sample(i), again.sample(i)) for i in range(40))  # a pure function


def test_preprocess_tool_and_bad_line(tmp_path, tok):
    good = tmp_path / "docs.jsonl"
    good.write_text(json.dumps({"text": "Q: 1+2= A: 3"}) + "\n" + json.dumps({"text": "Q: 4+5= A: 9"}) + "\n")
    run = lambda *a: subprocess.run([sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), *a],  # noqa
                                    capture_output=True, text=True, cwd=ROOT)
    ok = run("--input", str(good), "--tokenizer", tok.path, "--output-prefix", str(tmp_path / "c"))
    assert ok.returncode == 0, ok.stderr
    stream = TokenStream(str(tmp_path / "c"))
    assert tok.decode(stream.window(0, stream.num_tokens)).startswith("Q: 1+2= A: 3")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + '{"text": "broken\n')
    # the bad line through the tool's main() in this process (the run above starts the script)
    from cli_in_process import run_main
    from tools import preprocess_data

    res = run_main(preprocess_data.main, ["--input", bad, "--tokenizer", tok.path, "--output-prefix", tmp_path / "d"])
    assert res.returncode == 2 and f"{bad}:2: not valid JSON" in res.stderr


@pytest.mark.parametrize("line, message", [
    ('{"messages": []}', "non-empty 'messages'"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "messages[0] needs role"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant message"),
    ('[1, 2]', "expected a JSON object"),
])
def test_malformed_chat_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "chat.jsonl"
    ok = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    path.write_text(json.dumps(ok) + "\n\n" + line + "\n")
    with pytest.raises(DataError, match=f"{path}:3: .*{message}".replace("[", r"\[").replace("]", r"\]")):
        read_chat_jsonl(str(path))


def test_loss_only_on_assistant_tokens(tok):
    msgs = [{"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "<think>2+2 is 4</think> A: 4"}]
    ids, learn = render(msgs, tok)
    learned = tok.decode([i for i, m in zip(ids, learn) if m])
    assert learned.startswith("<think>2+2 is 4</think> A: 4") and "What" not in learned


def test_packing_has_no_cross_document_attention(tok):
    """A packed row gives each document exactly the logits it gets alone."""
    docs = [render([{"role": "user", "content": f"What is {a}+{a}?"},
                    {"role": "assistant", "content": f"<think>{a}+{a}</think> A: {2 * a}"}], tok) for a in (3, 17, 25)]
    rows, truncated = pack(docs, seq_length=96, pad_id=0)
    assert len(rows) == 1 and truncated == 0
    row = rows[0]
    cfg = validate(Config(model=ModelConfig(vocab_size=384)), 1).model
    model = DeepseekV3(cfg, single_process_state()).eval()
    init_weights(torch.nn.ModuleList([model]), seed=1)
    ids = torch.from_numpy(row.input_ids)[None]
    with torch.no_grad():
        packed = model(ids, attn_mask=block_causal_mask(torch.from_numpy(row.doc_ids)[None]),
                       position_ids=torch.from_numpy(row.position_ids)[None]).logits[:, 0]
        at = 0
        for doc_ids, _ in docs:
            n = len(doc_ids)
            alone = model(torch.tensor(doc_ids[: n])[None]).logits[:, 0]
            end = min(at + n, ids.shape[1])
            torch.testing.assert_close(packed[at:end], alone[: end - at], atol=1e-5, rtol=1e-5)
            at += n
    labels = row.labels
    boundaries = np.flatnonzero(row.doc_ids[1:] != row.doc_ids[:-1])
    assert (labels[boundaries] == IGNORE).all()  # never predict the next document's first token


def test_sft_data_batches_are_deterministic(tmp_path, tok):
    path = tmp_path / "c.jsonl"
    with open(path, "w") as f:
        for a in range(20):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"{a}+1?"},
                                             {"role": "assistant", "content": f"A: {a + 1}"}]}) + "\n")
    d1, d2 = SFTData(str(path), tok, 32, seed=4), SFTData(str(path), tok, 32, seed=4)
    b1, b2 = d1.batch(5, 3), d2.batch(5, 3)
    assert all(torch.equal(b1[k], b2[k]) for k in b1)
    assert b1["attn_mask"].shape == (3, 32)  # document ids, not an s x s mask
