"""Where GRPO's questions come from: the user's prompt files (`rl.prompts`, rendered by
`rl.template`) or the built-in synthetic sums (`data.synthetic`), as token ids with a stop rule.

Both are addressed by a global position (questions drawn so far), saved in the checkpoint: the
questions of a rollout are a pure function of (seed, position), whatever the DP size.
"""
from __future__ import annotations

from typing import Callable, Optional

from r1mega.config import RLConfig
from r1mega.data.prompts import PromptOrder, load_prompts
from r1mega.data.templates import CHAT_TEMPLATES, Rendered, render, stop_strings
from r1mega.data.tokenizer import Tokenizer
from r1mega.rl.tasks import stops_after_answer, synthetic_prompts


STOP_TAIL_TOKENS = 32


class PromptSource:
    def __init__(self, rl: RLConfig, synthetic: Optional[str], seed: int, tok: Tokenizer):
        """rl: the prompt files, template and default language; synthetic: data.synthetic (used
        without prompt files); seed: the run's, which orders the prompts."""
        self.tok, self.template, self.seed = tok, rl.template, seed
        self.default_language = rl.language
        self.order = PromptOrder(load_prompts(rl.prompts), seed) if rl.prompts else None
        self.synthetic = None if rl.prompts else synthetic
        self.stops = stop_strings(self.template) if self.order is not None else []

    def take(self, position: int, n: int, rollout_index: int) -> list[dict]:
        """n problems from global position `position` (files), or n fresh synthetic ones."""
        if self.order is not None:
            problems = self.order.take(position, n)
        else:
            seed = self.seed * 100_003 + rollout_index
            problems = synthetic_prompts(self.synthetic, n, seed, heldout=False)
        # the target language travels with the problem, so every reward sees the same one
        return [{**p, "language": p.get("language") or self.default_language} for p in problems]

    def held_out(self, n: int) -> Optional[list[dict]]:
        """Problems for greedy held-out accuracy: the synthetic task's held-out split (none for files)."""
        if self.synthetic is None:
            return None
        return synthetic_prompts(self.synthetic, n, 0, heldout=True)

    def render(self, problem: dict) -> Rendered:
        return render(problem, self.template, self.tok)

    def encode(self, rendered: Rendered) -> list[int]:
        ids = self.tok.encode(rendered.text)
        if self.tok.add_bos and self.tok.bos_id is not None and self.template not in CHAT_TEMPLATES:
            ids = [self.tok.bos_id] + ids  # the chat template writes its own BOS
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    def stop(self) -> Callable[[list[int]], bool]:
        """Stop predicate on a completion's ids (EOS is handled by generation itself)."""
        if self.order is None:
            return lambda ids: stops_after_answer(self.tok.decode(ids))
        stops = self.stops  # a stop string spans a few tokens: decoding the tail is enough
        return lambda ids: any(s in self.tok.decode(ids[-STOP_TAIL_TOKENS:]) for s in stops)

    def is_stopped(self, text: str) -> bool:
        return stops_after_answer(text) if self.order is None else any(s in text for s in self.stops)
