"""Rejection-sampling filters: which sampled completions become SFT data (DeepSeek-R1, stage 3).

Each check returns a rejection reason or None; `judge_sample` applies them in a fixed order and
reports the first that fails, so the counts per reason add up to the rejected total.
  truncated        the sample hit the token limit (no finished answer)
  too_long         more completion tokens than the cap, or more characters than the judge reads
                   (r1mega.judge.MAX_RESPONSE_CHARS)
  format           not "<think> ... </think> answer" (when the format is required)
  wrong            final answer (after the thought) not equal to the reference, or no answer
All judging is r1mega.judge's, the same as the RL rewards' and `r1mega eval`'s: the format check is
the format reward's, `wrong` the accuracy reward's, the language share the language reward's.
  tests_failed     code that does not pass the record's tests in the sandbox
  language_mixing  the chain of thought is not written in the target language (share of words)
  long_paragraph   a paragraph of the chain of thought longer than the limit
  code_in_cot      a fenced code block inside the chain of thought
  duplicate        the same completion (whitespace-normalised) already kept for this problem
Records with neither `answer` nor `tests` (non-reasoning data) have no correctness check; the
published pipeline asked a judge model about those, which r1mega does not ship.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from r1mega import judge
from r1mega.generation.store import response_text
from r1mega.judge.code_blocks import has_fence
from r1mega.judge.response import split_thought
from r1mega.rl.rewards import code_reward

REASONS = ("truncated", "too_long", "format", "wrong", "tests_failed", "language_mixing", "long_paragraph",
           "code_in_cot", "duplicate")


@dataclass
class FilterConfig:
    max_tokens: int = 0  # 0: no cap beyond the generation limit
    require_format: bool = True
    language: str = "en"  # target language of the chain of thought (a record's `language` wins)
    min_language_share: float = 0.95
    max_paragraph_chars: int = 3000
    allow_code_in_cot: bool = False
    answer_fallback: str = "auto"  # r1mega/judge/answers.py


def chain_of_thought(text: str) -> tuple[str, bool]:
    """(the reasoning before </think>, True) or (the whole text, False) without think tags."""
    parts = split_thought(text)
    return parts.reasoning_text(text), parts.tagged


def language_share(cot: str, language: str) -> Optional[float]:
    """Share of the CoT's words in the target language (the RL language reward's function);
    None: no words (pure mathematics), which is kept."""
    return judge.language_share(cot, language)


def longest_paragraph(cot: str) -> int:
    return max((len(p.strip()) for p in re.split(r"\n\s*\n", cot)), default=0)


def correctness(rec: dict, completion: str, fallback: str = "auto") -> Optional[str]:
    if rec.get("answer") is not None:
        return None if judge.is_correct(completion, rec["answer"], fallback)[1] else "wrong"
    if rec.get("tests") is not None:
        return None if code_reward(completion, rec) > 0 else "tests_failed"
    return None


def judge_sample(rec: dict, sample: dict, cfg: FilterConfig) -> Optional[str]:
    """The first reason to reject this sample, or None to keep it (before dedup and the quota)."""
    text = response_text(sample)
    if sample.get("finish_reason") == "length":
        return "truncated"
    if cfg.max_tokens and sample.get("completion_tokens", 0) > cfg.max_tokens:
        return "too_long"
    if len(text) > judge.MAX_RESPONSE_CHARS:  # the judge does not read it (r1mega/judge/limits.py)
        return "too_long"
    if cfg.require_format and not judge.well_formed(text):
        return "format"
    wrong = correctness(rec, text, cfg.answer_fallback)
    if wrong:
        return wrong
    cot, tagged = chain_of_thought(text)
    share = language_share(cot, rec.get("language") or cfg.language)
    if share is not None and share < cfg.min_language_share:
        return "language_mixing"
    if longest_paragraph(cot) > cfg.max_paragraph_chars:
        return "long_paragraph"
    if tagged and not cfg.allow_code_in_cot and has_fence(cot):
        return "code_in_cot"
    return None


def normalized(text: str) -> str:
    return " ".join(text.split())
