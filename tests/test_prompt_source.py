"""GRPO's PromptSource over its two kinds of questions (prompt files, synthetic sums), the Template
objects behind `rl.template`, and the KL anchor's NoReference: each answers as the name-based code
it replaced did (stop rules, held-out split, prompt-length check, BOS, stop strings)."""
import os

import pytest

from r1mega.config import Config, ConfigError
from r1mega.data.synthetic import pretrain_corpus
from r1mega.data.prompts import (CHAT_TEMPLATES, PromptFiles, PromptSource, R1_ZERO, STOP_TAIL_TOKENS,
                                 SyntheticQuestions, TEMPLATES, render, stop_strings)
from r1mega.data.tokenizer import Tokenizer, train_sentencepiece
from r1mega.rl.reference import NoReference
from r1mega.data.synthetic import every_prompt, stops_after_answer, synthetic_prompts
from rl_data import write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    texts = pretrain_corpus(200, seed=0) + ["<think> </think> <answer> </answer> A conversation between User"]
    return Tokenizer(train_sentencepiece(texts, str(root / "tokenizer"), 384))


def test_synthetic_questions_keep_the_sums_split_and_stop_rule(tok):
    cfg = Config()
    cfg.data.synthetic = "addition"
    source = PromptSource(cfg.rl, "addition", 7, tok)
    assert isinstance(source.questions, SyntheticQuestions)
    drawn = source.take(100, 5, 3)  # the position does not matter: a rollout's sums are keyed by (seed, rollout)
    assert [{k: p[k] for k in ("prompt", "answer")} for p in drawn] == synthetic_prompts("addition", 5, 7 * 100_003 + 3,
                                                                                          heldout=False)
    assert all(p["language"] == cfg.rl.language for p in drawn)
    assert source.held_out(4) == synthetic_prompts("addition", 4, 0, heldout=True)
    # the longest question the task can pose counts in the positions check (it counted 0 tokens)
    assert source.longest_prompt(positions=1) == max(len(tok.encode(p["prompt"])) for p in every_prompt("addition")) > 0
    stop = source.stop()
    for text in ("Q: 3+4= A: 7\nQ:", "Q: 3+4= A: 7", "A: 1\n"):
        ids = tok.encode(text)
        assert stop(ids) == stops_after_answer(tok.decode(ids)) == source.is_stopped(tok.decode(ids))
    assert stop(tok.encode("Q: 3+4= A: 7\nQ:")) and not stop(tok.encode("Q: 3+4= A: 7"))


@pytest.mark.parametrize("kind", ["addition", "sum3", "arithmetic"])
def test_every_prompt_holds_whatever_a_synthetic_task_draws(kind):
    every = {p["prompt"] for p in every_prompt(kind)}
    drawn = [p["prompt"] for seed in range(3) for split in (False, True) for p in synthetic_prompts(kind, 200, seed, split)]
    assert set(drawn) <= every and len(every) == {"addition": 100, "sum3": 1000, "arithmetic": 15050}[kind]


def test_synthetic_responses_that_run_past_the_positions_are_refused_at_start(tmp_path):
    """rl.max_new_tokens after the longest synthetic question must fit the model's positions: a demo run
    with 62 new tokens on 64 positions sampled past them (its prompts counted 0 tokens)."""
    from r1mega.config import load_config
    from r1mega.rl.grpo import grpo

    cfg = load_config(os.path.join(ROOT, "configs", "tiny", "r1_zero_demo.yaml"), [
        f"train.run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/data", "data.synthetic_docs=64",
        "train.steps=1", "rl.max_new_tokens=62", "model.max_position_embeddings=64", "data.seq_length=64"])
    with pytest.raises(ConfigError, match=r"rl.max_new_tokens.*62 new tokens after the longest prompt \(7 tokens\)"
                                          r".*at most 57"):
        grpo(cfg, eval_problems=0)
    assert not os.path.exists(os.path.join(tmp_path, "run", "checkpoints"))


def test_prompt_files_stop_on_the_templates_strings_in_the_tail_and_check_lengths(tmp_path, tok):
    cfg = Config()
    cfg.rl.template = "r1_zero"
    cfg.rl.prompts = [write_jsonl(str(tmp_path / "p.jsonl"), [{"prompt": "1+2", "answer": "3"},
                                                            {"prompt": "12+34+56+78", "answer": "180"}])]
    source = PromptSource(cfg.rl, None, 0, tok)
    assert isinstance(source.questions, PromptFiles) and source.held_out(8) is None
    lengths = [len(source.encode(source.render(p))) for p in source.questions.order.problems]
    bos = [tok.bos_id] if tok.add_bos and tok.bos_id is not None else []  # r1_zero writes no BOS of its own
    assert source.encode(source.render({"prompt": "1+2"})) == bos + tok.encode(R1_ZERO.format(prompt="1+2"))
    assert source.longest_prompt(max(lengths) + 1) == max(lengths)
    with pytest.raises(ConfigError, match=f"rl.prompts.*{max(lengths)} tokens but the model has {max(lengths)}"):
        source.longest_prompt(max(lengths))
    stop = source.stop()
    answered = tok.encode("<think> 1 </think> <answer> 3 </answer>")
    assert stop(answered) and source.is_stopped(tok.decode(answered))
    later = answered + tok.encode(" 1 2 3 4 5 6 7 8 9" * 8)  # the stop string left the last 32 tokens
    assert len(later) - len(answered) > STOP_TAIL_TOKENS
    assert not stop(later) and source.is_stopped(tok.decode(later))
    # a prompt file's questions come back in the seeded order, whatever the rollout index
    assert source.take(0, 3, 0) == source.take(0, 3, 99)


def test_a_stop_string_ending_inside_a_token_ends_the_judged_text_with_it(tmp_path, tok):
    """The rewards judge (and rollouts.jsonl shows) a stopped response up to the end of its earliest stop
    string, as vLLM's text ends; the sampled ids, which the update trains, keep the whole last token."""
    from r1mega.data.prompts import Rendered

    cfg = Config()
    cfg.rl.prompts = [write_jsonl(str(tmp_path / "p.jsonl"), [{"prompt": "1+2", "answer": "3"}])]
    source = PromptSource(cfg.rl, None, 0, tok)
    answer = tok.encode("answer")
    assert [tok.decode([i]) for i in answer[-1:]] == ["answer"]  # one token: a stop "answ" ends inside it
    ids = tok.encode("A: 3 ") + answer[-1:]
    sampled, whole = list(ids), tok.decode(ids)
    assert whole.endswith("answer") and whole.count("answ") == 1
    source.questions = PromptFiles(cfg.rl.prompts, ["wer", "answ"], 0)  # "answ" ends first, whatever the order
    assert source.stop()(ids)
    assert source.response_text(Rendered("Q", "<think>"), ids) == "<think>" + whole[:-len("er")]
    assert ids == sampled
    source.questions = PromptFiles(cfg.rl.prompts, ["zz"], 0)  # no stop string in it: the whole text
    assert source.response_text(Rendered("Q", ""), ids) == whole
    ended = ids + [tok.eos_id]  # ended by EOS: the text without it, whole
    source.questions = PromptFiles(cfg.rl.prompts, ["answ"], 0)
    assert source.response_text(Rendered("Q", ""), ended) == whole


def test_templates_answer_as_their_names_did(tok):
    problem = {"prompt": "What is 2+2?", "answer": "4"}
    assert CHAT_TEMPLATES == ("chat", "chat_think")
    assert {name: stop_strings(name) for name in TEMPLATES} == {"r1_zero": ["</answer>"], "chat": [], "chat_think": [],
                                                                  "raw": []}
    assert stop_strings("no_such_template") == []
    assert render(problem, "r1_zero").text == R1_ZERO.format(prompt="What is 2+2?")
    assert (render(problem, "raw").text, render(problem, "raw").response_prefix) == ("What is 2+2?", "")
    for name in ("r1_zero", "raw"):
        assert render(problem, name) == TEMPLATES[name].render(problem)
    with pytest.raises(ValueError, match="rl.template: unknown template 'nope'"):
        render(problem, "nope")


def test_no_reference_keeps_nothing():
    ref = NoReference()
    assert ref.model is None and not ref.due(100) and ref.save("/nonexistent") is None
    assert ref.restore("/nonexistent", "reference/step_00000001", 1) is False
    ref.refresh(None, 3)  # nothing to copy
