"""Prompt datasets, templates and real tokenizers for GRPO on a user's own data."""
import json
import shutil

import pytest

from r1mega.config import ConfigError
from r1mega.data.jsonl import DataError
from r1mega.data.prompts import PromptOrder, R1_ZERO, THINK_PREFIX, load_prompts, render, stop_strings
from r1mega.data.tokenizer import BOS, EOS, Tokenizer, check_fits
from rl_data import CODE, MATH, write_jsonl, write_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return Tokenizer(write_tokenizer(str(tmp_path_factory.mktemp("tok"))))


def test_records_of_every_kind_load(tmp_path):
    probs = load_prompts([write_jsonl(str(tmp_path / "m.jsonl"), MATH), write_jsonl(str(tmp_path / "c.jsonl"), CODE)])
    assert len(probs) == len(MATH) + len(CODE)
    assert probs[0]["answer"] == "3" and probs[0]["id"] == "add-1-2"
    code = probs[len(MATH):]
    assert code[1]["entry_point"] == "double" and isinstance(code[2]["tests"], list)
    assert code[3]["messages"][0]["content"].startswith("Write neg") and code[3]["id"].endswith("c.jsonl:4")


@pytest.mark.parametrize("record, message", [
    ({"answer": "1"}, "needs 'prompt' (a string) or 'messages'"),
    ({"prompt": "", "answer": "1"}, "'prompt' must be a non-empty string"),
    ({"prompt": "q"}, "needs 'answer' (math) or 'tests' (code)"),
    ({"prompt": "q", "answer": [1]}, "'answer' must be a string or a number"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "answer": "1"},
     "the last message must be the user's"),
    ({"messages": [{"role": "bot", "content": "q"}], "answer": "1"}, "messages[0] needs role"),
    ({"prompt": "q", "tests": [{"input": "1"}]}, "tests[0] must be"),
    ({"prompt": "q", "tests": [{"input": "1", "output": "2"}], "entry_point": "f"}, "'entry_point' goes with"),
    ({"prompt": "q", "tests": "assert True", "entry_point": "not valid"}, "'entry_point' must be a Python identifier"),
    ({"prompt": "q", "answer": "1", "language": "xx"}, "'language' must be one of"),
    ({"prompt": "q", "answer": "1", "tests": "assert f() == 1"}, "has both 'answer' and 'tests'"),
    ({"prompt": "q", "answer": 0, "tests": [{"input": "", "output": "0"}]}, "has both 'answer' and 'tests'"),
])
def test_bad_records_are_named_by_file_and_line(tmp_path, record, message):
    from r1mega.generation.records import read_prompt_records

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(MATH[0]) + "\n\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError) as e:
        load_prompts([str(path)])
    assert str(e.value).startswith(f"{path}:3: ") and message in str(e.value)
    # generation reads the same format through the same reader: the same error, unless the record
    # is one generation takes (no answer; a chat ending with the assistant's reply)
    if "needs 'answer'" in message or "the last message" in message:
        assert read_prompt_records(str(path))[1]["id"] == "3"
        return
    with pytest.raises(DataError) as gen:
        read_prompt_records(str(path))
    assert str(gen.value) == str(e.value)


def test_generation_records_answerless_sft_chats_and_keyed_ids(tmp_path):
    from r1mega.generation.records import apply_template, read_prompt_records, render_prompt

    sft = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+2?"},
                        {"role": "assistant", "content": "3"}]}
    path = write_jsonl(str(tmp_path / "g.jsonl"), [{"prompt": "hi"}, {"id": 7, "prompt": "q", "answer": 5}, sft])
    recs = read_prompt_records(path)
    assert [r["id"] for r in recs] == ["1", "7", "3"] and recs[1]["answer"] == "5"
    # the SFT reply is dropped: every template poses the user's question
    assert recs[2]["messages"][-1] == {"role": "user", "content": "1+2?"}
    assert render_prompt(recs[2], "r1_zero")[0] == R1_ZERO.format(prompt="1+2?")
    assert apply_template(recs[2], "raw") == "Be brief.\n1+2?"
    with pytest.raises(DataError, match=r"g.jsonl:1: needs 'answer' \(math\) or 'tests'"):
        read_prompt_records(path, need_answer=True)
    dup = write_jsonl(str(tmp_path / "d.jsonl"), [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])
    with pytest.raises(DataError, match=r"d.jsonl:2: id 'a' already used at .*d.jsonl:1"):
        read_prompt_records(dup)
    (tmp_path / "empty.jsonl").write_text("\n")
    for read in (read_prompt_records, lambda p: load_prompts([p])):
        with pytest.raises(DataError, match="empty.jsonl: no problems in the file"):
            read(str(tmp_path / "empty.jsonl"))
        with pytest.raises(DataError, match="nope.jsonl: prompt file not found"):
            read(str(tmp_path / "nope.jsonl"))


def test_broken_json_and_missing_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(MATH[0]) + "\n{\"prompt\": \n")
    with pytest.raises(DataError, match=f"{path}:2: not valid JSON"):
        load_prompts([str(path)])
    with pytest.raises(DataError, match="prompt file not found"):
        load_prompts([str(tmp_path / "nope.jsonl")])


def test_order_is_a_seeded_shuffle_per_epoch_and_a_pure_function_of_position():
    problems = [{"id": i} for i in range(10)]
    order = PromptOrder(problems, seed=3)
    first = [p["id"] for p in order.take(0, 10)]
    second = [p["id"] for p in order.take(10, 10)]
    assert sorted(first) == sorted(second) == list(range(10))  # each epoch is a permutation
    assert first != second and first != list(range(10))  # reshuffled per epoch
    # any split of positions (resume, DP ranks) gives the same problems
    again = PromptOrder(problems, seed=3)
    assert [p["id"] for p in again.take(7, 6)] == (first + second)[7:13]
    assert [p["id"] for p in PromptOrder(problems, seed=4).take(0, 10)] != first


def test_templates(tok):
    p = {"prompt": "What is 1 + 2?", "messages": None}
    r1 = render(p, "r1_zero")
    assert r1.text == R1_ZERO.format(prompt="What is 1 + 2?") and r1.response_prefix == ""
    assert r1.text.startswith("A conversation between User and Assistant.") and r1.text.endswith(
        "User: What is 1 + 2?. Assistant:")
    assert stop_strings("r1_zero") == ["</answer>"] and stop_strings("chat") == [] and stop_strings("raw") == []
    assert render(p, "raw").text == "What is 1 + 2?"
    hi = {"prompt": None, "messages": [{"role": "user", "content": "hi"}]}
    chat = render(hi, "chat", tok)  # the model's own template, nothing added
    assert chat.text == f"{BOS}<｜User｜>hi<｜Assistant｜>" and chat.response_prefix == ""
    think = render(hi, "chat_think", tok)  # R1's thinking prefix, part of the response
    assert think.text == f"{BOS}<｜User｜>hi<｜Assistant｜>{THINK_PREFIX}" and think.response_prefix == THINK_PREFIX
    with pytest.raises(ValueError, match="unknown template"):
        render(p, "alpaca")


def test_tokenizer_directory_with_config(tmp_path, tok):
    assert tok.eos_id == tok.token_id(EOS) and tok.bos_id == tok.token_id(BOS) and tok.add_bos
    ids = tok.encode(f"<think> 3 </think> <answer> 3 </answer>{EOS}")
    assert ids[-1] == tok.eos_id and tok.token_id("<answer>") in ids  # special tokens stay atomic
    assert tok.decode(ids) == f"<think> 3 </think> <answer> 3 </answer>{EOS}"
    check_fits(tok, tok.vocab_size)
    with pytest.raises(ConfigError, match=f"data.tokenizer.*{tok.vocab_size} tokens.*model.vocab_size=64"):
        check_fits(tok, 64)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer(str(tmp_path))
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(f"{tok.path}/tokenizer.json", bare)  # no tokenizer_config.json: no chat template
    with pytest.raises(ValueError, match="no chat_template"):
        render({"prompt": "q"}, "chat", Tokenizer(str(bare)))


@pytest.mark.parametrize("content", [None, b"not a sentencepiece model", b'{"model": '])
def test_grpo_prompt_tokenizer_missing_or_damaged_is_named(tmp_path, content):
    """GRPO's data.tokenizer that is missing or cannot be loaded: a named error (exit 2), as pretraining
    and SFT give. Before: sentencepiece's RuntimeError or tokenizers' bare Exception, a traceback."""
    from r1mega.config import DataConfig
    from r1mega.data.prompts import prompt_tokenizer

    path = tmp_path / ("tokenizer.json" if content and content.startswith(b"{") else "tok.model")
    if content is not None:
        path.write_bytes(content)
    with pytest.raises((ConfigError, DataError), match=f"data.tokenizer.*{path}"):
        prompt_tokenizer(DataConfig(tokenizer=str(path)), 384, None)
    assert content is None or path.read_bytes() == content
