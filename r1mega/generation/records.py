"""Prompt records for generation, evaluation and rejection sampling, and how a record becomes text.

Records are the RL prompt-set format, read and checked by r1mega.data.prompts (the one reader:
file:line errors, the same field rules). Generation also takes records without `answer`/`tests`
(`r1mega generate` on any prompts; `eval` requires them), chats that end with the assistant's reply
(SFT records: the reply is dropped), and names a record without `id` by its line number; ids are
strings and unique in a file (they key the sample store).

Templates:
  raw      the prompt text as it is (base models; the tiny runs' "Q: 3+4=" format)
  r1       DeepSeek-R1's chat format, as `r1mega sft` renders it: BOS, system text, `<｜User｜>` turns,
           then `<｜Assistant｜>` for the model to continue
  r1_zero  R1-Zero's template (`r1mega.data.prompts`, as GRPO poses it); stops after </answer>
  chat        the tokenizer's own chat template with the generation prompt, nothing added (any chat
              model, reasoning or not; as GRPO poses it)
  chat_think  `chat` plus R1's thinking prefix "<think>\n"; that prefix belongs to the response: it is
              judged and trained together with the completion
"""
from __future__ import annotations

from r1mega.data.prompts import read_problems
from r1mega.data.tokenizer import ASSISTANT, BOS, EOS, USER
from r1mega.errors import ConfigError

TEMPLATES = ("raw", "r1", "r1_zero", "chat", "chat_think")


def read_prompt_records(path: str, need_answer: bool = False) -> list[dict]:
    """The records of one prompt file; need_answer: each must have an `answer` or `tests` (eval)."""
    return read_problems(path, answers=need_answer, sft_chats=True, keyed=True)


def question_digest(rec: dict) -> str:
    """A short digest of what a record asks (its prompt or chat, before any template): samples keep it,
    so samples filtered against a prompt file are known to answer that file's questions."""
    import hashlib
    import json

    text = json.dumps(chat_messages(rec), ensure_ascii=False, sort_keys=True)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def chat_messages(rec: dict) -> list[dict]:
    if isinstance(rec.get("prompt"), str):
        return [{"role": "user", "content": rec["prompt"]}]
    return [m for m in rec["messages"] if m["role"] != "assistant" or m is not rec["messages"][-1]]


def render_prompt(rec: dict, template: str, tokenizer=None) -> tuple[str, str]:
    """(text the model continues, response prefix that text already holds: judged with the completion)."""
    if template in ("r1_zero", "chat", "chat_think"):
        from r1mega.data.prompts import render

        try:
            r = render(rec, template, tokenizer)
        except ConfigError as e:
            if e.key != "data.tokenizer" or getattr(tokenizer, "chat_template", None):
                raise
            # the generation commands' own flags, not GRPO's keys (rl.template)
            raise ConfigError("--template", f"{template} poses prompts with the tokenizer's chat template, but "
                              f"{tokenizer.path} has no chat_template (tokenizer_config.json or chat_template.jinja); use "
                              f"--template r1, r1_zero or raw, or --tokenizer with a chat template") from None
        return r.text, r.response_prefix
    return apply_template(rec, template), ""


def template_stops(template: str) -> list[str]:
    from r1mega.data.prompts import stop_strings

    return stop_strings(template)


def apply_template(rec: dict, template: str) -> str:
    if template == "raw":
        if isinstance(rec.get("prompt"), str):
            return rec["prompt"]
        return "\n".join(m["content"] for m in chat_messages(rec))
    if template == "r1":
        parts = [BOS]
        for m in chat_messages(rec):
            if m["role"] == "system":
                parts.append(m["content"])
            elif m["role"] == "user":
                parts.append(USER + m["content"])
            else:
                parts.append(ASSISTANT + m["content"] + EOS)
        return "".join(parts) + ASSISTANT
    raise ConfigError("--template", f"unknown template {template!r}; choose from {TEMPLATES}")
