"""Hostile probe: a math prompt whose reference answer is empty (`"answer": ""` or blanks). No response
can ever match it (the judge scores every completion 0), so GRPO trained on a group of zero rewards
and eval counted it wrong, silently; it must be refused by file:line like an empty `tests`."""
from __future__ import annotations

import json

import pytest

from r1mega.errors import DataError


@pytest.mark.parametrize("answer", ["", "   ", "\n\t"])
def test_empty_answer_refused_by_line(tmp_path, answer):
    from r1mega.data.prompts import read_problems

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "2+2?", "answer": "4"}) + "\n"
                    + json.dumps({"prompt": "3+3?", "answer": answer}) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl:2: 'answer' is empty"):
        read_problems(str(path))


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_number_answer_refused_by_line(tmp_path, raw):
    """Python's json reads NaN/Infinity (json.dumps writes a missing float so) and turns 1e400 into inf:
    a NaN answer is never matched, and inf is not the 1e400 the file meant."""
    from r1mega.data.prompts import read_problems

    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "q", "answer": %s}\n' % raw)
    with pytest.raises(DataError, match=r"p\.jsonl:1: 'answer' is the non-finite number"):
        read_problems(str(path))


def test_the_judge_never_rewards_an_empty_answer():
    """Why it is refused: whatever the response, the reward is 0."""
    from r1mega.rl.rewards import total_reward

    for text in ["<think>x</think> <answer></answer>", "<think>x</think> <answer> </answer>", "A: ", "",
                 "<think>x</think> <answer>nan</answer>"]:
        for answer in ("", "nan"):
            assert total_reward(["accuracy"], text, {"prompt": "q", "answer": answer}) == 0.0


def test_numbers_and_padded_answers_still_read(tmp_path):
    from r1mega.data.prompts import read_problems

    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": "q", "answer": a}) for a in (0, 2.5, " 5 ")) + "\n")
    assert [p["answer"] for p in read_problems(str(path))] == ["0", "2.5", " 5 "]


@pytest.mark.parametrize("content", ["", "  \n"])
def test_empty_question_in_a_chat_refused_as_an_empty_prompt_is(tmp_path, content):
    from r1mega.data.prompts import read_problems

    path = tmp_path / "p.jsonl"
    chat = [{"role": "system", "content": ""}, {"role": "user", "content": content}]
    path.write_text(json.dumps({"messages": chat, "answer": "5"}) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl:1: messages\[1\]: the user's question is empty"):
        read_problems(str(path))
    path.write_text(json.dumps({"messages": chat[:1] + [{"role": "user", "content": "2+3?"}], "answer": "5"}) + "\n")
    assert read_problems(str(path))[0]["messages"][1]["content"] == "2+3?"  # an empty system turn is fine
