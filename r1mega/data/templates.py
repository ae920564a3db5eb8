"""How a problem becomes the text the policy continues (`rl.template`), and where generation stops.

  r1_zero  DeepSeek-R1-Zero's template (DeepSeek-R1 paper, Table 1), the question in place of
           {prompt}; generation stops at EOS or after "</answer>"
  chat        the tokenizer's own chat template with the generation prompt, nothing added: what a
              chat model (reasoning or not) expects; stops at EOS. A template that itself ends by
              opening the thought (DeepSeek-R1's newer ones write "<think>\\n") keeps it, as the
              response's prefix
  chat_think  `chat`, then R1's thinking prefix "<think>\\n" when the template does not already open
              the thought (DeepSeek recommends forcing it for R1 models); stops at EOS
  raw         the question as it is; stops at EOS

A response is what the rewards judge: the response prefix the template already wrote for the
model (the thinking prefix) followed by the generated completion. A non-reasoning model under
`chat` writes no think tags: the judge reads its whole response (r1mega/judge/response.py) and
takes its final answer by the fallback (the last number when there is no "A:", <answer> or \\boxed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from r1mega.data.prompts import question_text

R1_ZERO = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>. User: {prompt}. Assistant:"
)
THINK_PREFIX = "<think>\n"


@dataclass
class Rendered:
    text: str  # what the model is conditioned on
    response_prefix: str  # the part of `text` that belongs to the response (judged by the rewards)


class Template(Protocol):
    """One `rl.template`: how a problem becomes text, and what else about it a caller must know."""
    stops: tuple[str, ...]  # text after which a completion is finished (besides EOS)
    chat: bool  # rendered by the tokenizer's own chat template (which writes its own BOS)

    def render(self, problem: dict, tokenizer=None) -> Rendered:
        """The text the model continues, and the response prefix that text already holds."""


class R1ZeroTemplate:
    stops, chat = ("</answer>",), False

    def render(self, problem: dict, tokenizer=None) -> Rendered:
        return Rendered(R1_ZERO.format(prompt=question_text(problem)), "")


class RawTemplate:
    stops, chat = (), False

    def render(self, problem: dict, tokenizer=None) -> Rendered:
        return Rendered(question_text(problem), "")


class ChatTemplate:
    """The tokenizer's chat template with the generation prompt; think: force R1's thinking prefix
    when the template does not open the thought itself (`chat_think`)."""
    stops, chat = (), True

    def __init__(self, think: bool):
        self.think = think

    def render(self, problem: dict, tokenizer=None) -> Rendered:
        messages = problem.get("messages") or [{"role": "user", "content": problem["prompt"]}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        if text.rstrip().endswith("<think>"):  # the template opened the thought itself
            return Rendered(text, text[text.rstrip().rfind("<think>"):])
        return Rendered(text + THINK_PREFIX, THINK_PREFIX) if self.think else Rendered(text, "")


TEMPLATES: dict[str, Template] = {"r1_zero": R1ZeroTemplate(), "chat": ChatTemplate(think=False),
                                  "chat_think": ChatTemplate(think=True), "raw": RawTemplate()}
CHAT_TEMPLATES = tuple(name for name, t in TEMPLATES.items() if t.chat)


def render(problem: dict, template: str, tokenizer=None) -> Rendered:
    if template not in TEMPLATES:
        raise ValueError(f"rl.template: unknown template {template!r} (r1_zero, chat, chat_think, raw)")
    return TEMPLATES[template].render(problem, tokenizer)


def encode_prompt(tok, text: str, template: "str | Template") -> list[int]:
    """The ids a rendered prompt is posed as: a tokenizer whose config says add_bos_token (DeepSeek-V3's,
    Llama 2's) starts the text with BOS, as transformers encodes it; a chat template writes its own, and
    a text that already opens with BOS (the `r1` format) gets no second one. GRPO, generate, eval and
    reject-sample all pose prompts through this, so a policy is sampled in the context it was trained in."""
    chat = (TEMPLATES[template] if isinstance(template, str) else template).chat
    ids = tok.encode(text)
    if getattr(tok, "add_bos", False) and tok.bos_id is not None and not chat and ids[:1] != [tok.bos_id]:
        ids = [tok.bos_id] + ids
    return ids


def stop_strings(template: str) -> list[str]:
    """Text after which a completion is finished (besides EOS)."""
    return list(TEMPLATES[template].stops) if template in TEMPLATES else []


def stops_at(stops: list[str]):
    """A GenerationConfig.stop predicate for decoded completion text, or None without stop strings."""
    if not stops:
        return None
    return lambda text: any(s in text for s in stops)
