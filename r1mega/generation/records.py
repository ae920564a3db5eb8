"""Prompt records for generation, evaluation and rejection sampling, and how a record becomes text.

A record (one JSON object per line, the RL prompt-set format) has `id`, either `prompt` (a string)
or chat `messages`, and what checks the answer: `answer`, or `tests` (+ `entry_point`) for code;
`language` names the target language of the chain of thought. A record without `id` is named by
its line number. Bad records are errors naming file:line.

Templates:
  raw      the prompt text as it is (base models; the tiny runs' "Q: 3+4=" format)
  r1       DeepSeek-R1's chat format, as `r1mega sft` renders it: BOS, system text, `<｜User｜>` turns,
           then `<｜Assistant｜>` for the model to continue
  r1_zero  R1-Zero's template (`r1mega.data.templates`, as GRPO poses it); stops after </answer>
  chat     the tokenizer's own chat template with the thinking prefix "<think>\n" (as GRPO poses it);
           that prefix belongs to the response: it is judged and trained together with the completion
"""
from __future__ import annotations

from r1mega.data.jsonl import DataError, iter_jsonl
from r1mega.data.tokenizer import ASSISTANT, BOS, EOS, USER
from r1mega.errors import ConfigError

TEMPLATES = ("raw", "r1", "r1_zero", "chat")


def read_prompt_records(path: str, need_answer: bool = False) -> list[dict]:
    out, seen = [], {}
    for where, rec in iter_jsonl(path):
        rec = dict(rec)
        rec.setdefault("id", where.rsplit(":", 1)[1])
        rec["id"] = str(rec["id"])
        if rec["id"] in seen:
            raise DataError(f"{where}: id {rec['id']!r} already used at {seen[rec['id']]}")
        seen[rec["id"]] = where
        has_prompt = isinstance(rec.get("prompt"), str)
        msgs = rec.get("messages")
        if not has_prompt and not (isinstance(msgs, list) and msgs and all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) for m in msgs)):
            raise DataError(f"{where}: needs a string 'prompt' or a 'messages' list of {{role, content}}")
        if need_answer and "answer" not in rec and "tests" not in rec:
            raise DataError(f"{where}: needs an 'answer' (or 'tests') to be scored")
        if "tests" in rec:
            tests = rec["tests"]
            cases = isinstance(tests, list) and tests and all(
                isinstance(c, dict) and isinstance(c.get("input"), str) and isinstance(c.get("output"), str)
                for c in tests)
            if not (isinstance(tests, str) or cases):
                raise DataError(f"{where}: 'tests' must be Python asserts (a string) or a list of "
                                f"{{\"input\": str, \"output\": str}} stdin/stdout cases")
        out.append(rec)
    if not out:
        raise DataError(f"{path}: no records")
    return out


def user_text(rec: dict) -> str:
    """The question as the user asked it (the last user turn of a chat record)."""
    if isinstance(rec.get("prompt"), str):
        return rec["prompt"]
    return [m["content"] for m in rec["messages"] if m["role"] == "user"][-1]


def chat_messages(rec: dict) -> list[dict]:
    if isinstance(rec.get("prompt"), str):
        return [{"role": "user", "content": rec["prompt"]}]
    return [m for m in rec["messages"] if m["role"] != "assistant" or m is not rec["messages"][-1]]


def render_prompt(rec: dict, template: str, tokenizer=None) -> tuple[str, str]:
    """(text the model continues, response prefix that text already holds: judged with the completion)."""
    if template in ("r1_zero", "chat"):
        from r1mega.data.templates import render

        r = render(rec, template, tokenizer)
        return r.text, r.response_prefix
    return apply_template(rec, template), ""


def template_stops(template: str) -> list[str]:
    from r1mega.data.templates import stop_strings

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
