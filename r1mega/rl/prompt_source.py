"""Where GRPO's questions come from: the user's prompt files (`rl.prompts`, rendered by
`rl.template`) or the built-in synthetic sums (`data.synthetic`), as token ids with a stop rule.

Both are addressed by a global position (questions drawn so far), saved in the checkpoint: the
questions of a rollout are a pure function of (seed, position), whatever the DP size.
"""
from __future__ import annotations

from typing import Callable, Optional, Protocol

from r1mega.config import RLConfig
from r1mega.data.prompts import PromptOrder, check_prompts_fit, load_prompts
from r1mega.data.templates import TEMPLATES, Rendered, encode_prompt
from r1mega.data.tokenizer import Tokenizer
from r1mega.rl.tasks import stops_after_answer, synthetic_prompts


STOP_TAIL_TOKENS = 32


class Questions(Protocol):
    """The one difference between prompt files and synthetic sums: which questions, and when a
    response to them is finished. PromptSource holds one and does the rest (language, template,
    tokens) the same way for both."""
    stop_tail: Optional[int]  # a completion's last tokens the stop rule needs to read (None: all of it)

    def take(self, position: int, n: int, rollout_index: int) -> list[dict]:
        """n questions from global position `position` (rollout_index keys drawn ones)."""

    def held_out(self, n: int) -> Optional[list[dict]]:
        """Questions for greedy held-out accuracy, None where there is no held-out split."""

    def longest_prompt(self, count_tokens: Callable[[dict], int], positions: int) -> int:
        """The longest prompt in tokens, after checking that each leaves room in the model's `positions`
        (the first that does not is named); 0 for drawn questions, short by construction."""

    def is_stopped(self, text: str) -> bool:
        """A response (decoded) that has said all it should (EOS is handled by generation itself)."""


class PromptFiles:
    """rl.prompts: the user's JSONL problems in a seeded order; a response ends at the template's stop strings."""
    stop_tail = STOP_TAIL_TOKENS  # a stop string spans a few tokens: decoding the tail is enough

    def __init__(self, paths: list[str], stops: list[str], seed: int):
        self.order = PromptOrder(load_prompts(paths), seed)
        self.stops = stops

    def take(self, position: int, n: int, rollout_index: int) -> list[dict]:
        return self.order.take(position, n)

    def held_out(self, n: int) -> Optional[list[dict]]:
        return None

    def longest_prompt(self, count_tokens: Callable[[dict], int], positions: int) -> int:
        tokens = {id(p): count_tokens(p) for p in self.order.problems}  # each encoded once
        check_prompts_fit(self.order.problems, lambda p: tokens[id(p)], positions)
        return max(tokens.values(), default=0)

    def is_stopped(self, text: str) -> bool:
        return any(s in text for s in self.stops)


class SyntheticQuestions:
    """data.synthetic: fresh sums for every rollout, seeded by (run seed, rollout); a response ends
    after its answer line, as the corpus writes it."""
    stop_tail = None

    def __init__(self, kind: Optional[str], seed: int):
        self.kind, self.seed = kind, seed

    def take(self, position: int, n: int, rollout_index: int) -> list[dict]:
        return synthetic_prompts(self.kind, n, self.seed * 100_003 + rollout_index, heldout=False)

    def held_out(self, n: int) -> Optional[list[dict]]:
        return synthetic_prompts(self.kind, n, 0, heldout=True)

    def longest_prompt(self, count_tokens: Callable[[dict], int], positions: int) -> int:
        return 0

    def is_stopped(self, text: str) -> bool:
        return stops_after_answer(text)


class PromptSource:
    def __init__(self, rl: RLConfig, synthetic: Optional[str], seed: int, tok: Tokenizer):
        """rl: the prompt files, template and default language; synthetic: data.synthetic (used
        without prompt files); seed: the run's, which orders the prompts."""
        self.tok, self.template = tok, TEMPLATES[rl.template]  # a known name: validate_rl checks it first
        self.default_language = rl.language
        self.questions: Questions = (PromptFiles(rl.prompts, list(self.template.stops), seed) if rl.prompts
                                     else SyntheticQuestions(synthetic, seed))

    def take(self, position: int, n: int, rollout_index: int) -> list[dict]:
        """n problems from global position `position` (files), or n fresh synthetic ones."""
        problems = self.questions.take(position, n, rollout_index)
        # the target language travels with the problem, so every reward sees the same one
        return [{**p, "language": p.get("language") or self.default_language} for p in problems]

    def held_out(self, n: int) -> Optional[list[dict]]:
        """Problems for greedy held-out accuracy: the synthetic task's held-out split (none for files)."""
        return self.questions.held_out(n)

    def longest_prompt(self, positions: int) -> int:
        """The longest rendered prompt in tokens (0 for synthetic questions); prompt files are checked
        against the model's `positions` first, so a run never starts on a prompt it cannot hold."""
        return self.questions.longest_prompt(lambda p: len(self.encode(self.render(p))), positions)

    def render(self, problem: dict) -> Rendered:
        return self.template.render(problem, self.tok)

    def encode(self, rendered: Rendered) -> list[int]:
        return encode_prompt(self.tok, rendered.text, self.template)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    def stop(self) -> Callable[[list[int]], bool]:
        """Stop predicate on a completion's ids (EOS is handled by generation itself)."""
        questions, tail = self.questions, self.questions.stop_tail
        if tail is None:
            return lambda ids: questions.is_stopped(self.tok.decode(ids))
        return lambda ids: questions.is_stopped(self.tok.decode(ids[-tail:]))

    def is_stopped(self, text: str) -> bool:
        return self.questions.is_stopped(text)
