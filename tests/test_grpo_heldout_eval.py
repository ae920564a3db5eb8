"""GRPO's held-out accuracy judges its greedy answers as the rollout judges samples: with the run's
rl.answer_fallback (it used "auto" whatever the key said) and once per model replica (judge_batch)."""
import dataclasses

import pytest
import torch

import r1mega.rl.grpo as grpo_module
from r1mega.config import Config
from r1mega.data.prompts import PromptSource
from r1mega.data.synthetic import pretrain_corpus
from r1mega.data.tokenizer import Tokenizer, train_sentencepiece
from r1mega.parallel.layout import single_process_state


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return Tokenizer(train_sentencepiece(pretrain_corpus(200, seed=0), str(root / "tokenizer"), 384))


class _Answers:
    """What generate returns, reduced to the completions the evaluation reads."""

    def __init__(self, ids):
        self.ids = ids

    def completions(self):
        return self.ids


@pytest.mark.parametrize("fallback, expected", [("auto", 1.0), ("last_number", 1.0), ("a_colon", 0.5),
                                                ("none", 0.0)])
def test_heldout_accuracy_reads_answers_with_the_runs_fallback(tok, monkeypatch, fallback, expected):
    cfg = Config()
    source = PromptSource(cfg.rl, "addition", 0, tok)
    problems = source.held_out(2)[:2]
    # one answer after "A:", one bare last number: only the fallbacks that read each score it
    texts = [f" A: {problems[0]['answer']}\n", f" so it is {problems[1]['answer']}"]
    seen = {}

    def fake_generate(chunks, ps, prompts, gen):
        seen["prompts"] = prompts
        return _Answers([tok.encode(t) for t in texts])

    monkeypatch.setattr(grpo_module, "generate", fake_generate)
    chunks = torch.nn.Linear(1, 1)  # only its device is read
    rl = dataclasses.replace(cfg.rl, max_new_tokens=8, answer_fallback=fallback)
    acc = grpo_module.evaluate_accuracy(chunks, single_process_state(), source, problems, rl)
    assert acc == expected
    assert seen["prompts"] == [source.encode(source.render(p)) for p in problems]
