"""Prompts: the problem records of JSONL files, how a problem becomes the text the policy
continues (its template), and GRPO's source of questions.

Problem files (RL, evaluation and generation), read by one reader.

Record format, one JSON object per line (blank lines are skipped):

    {"prompt": "What is 2+3?", "answer": "5"}                                    math
    {"messages": [{"role": "user", "content": "..."}], "answer": "\\frac{1}{2}"}     math, chat form
    {"prompt": "Write f(x) returning x+1.", "tests": "assert f(1) == 2"}            code, asserts
    {"prompt": "...", "tests": "def check(c):\\n    assert c(1) == 2", "entry_point": "f"}   HumanEval style
    {"prompt": "Read n, print n*2.", "tests": [{"input": "3\\n", "output": "6\\n"}]}    code, stdin/stdout

  prompt       str: the question (rendered by the template: raw, r1_zero or chat)
  messages     list of {"role": system|user|assistant, "content": str}, instead of `prompt`; the
               raw and r1_zero templates use the content of its last user message
  answer       str or number: the reference final answer (math-verify decides equivalence)
  tests        str of Python run after the generated code, or a list of {"input", "output"} cases
  entry_point  optional str: the function `check(entry_point)` is called with (with `tests` as str)
  language     optional target language of the chain of thought: one of r1mega.judge.LANGUAGES
               (en, zh, fr, de, ru, ja, ...)
  id           optional str/int; default "<file>:<line>"

Every record needs `prompt` or `messages`, and `answer` or `tests` (not both: the accuracy reward,
`r1mega eval` and the rejection filters judged such a record by its answer alone, its tests unread); a
bad record raises DataError naming file:line. `load_prompts` (RL) returns plain dicts (the rewards read them) with every key
present. `read_problems` is the reader under it, with what generation needs as options: records
without answers (`r1mega generate` on any prompts), a chat ending in the assistant's reply (an SFT
record: the reply is dropped, the model answers the user turn before it), and ids that key an
output store (strings, the line number by default, unique in the file).

`PromptOrder` serves them in a deterministic order: each epoch is a fresh shuffle seeded by
(seed, epoch), so the problems of global position p are a pure function of (seed, p): saving p in
a checkpoint is enough to resume exactly, under any number of data-parallel ranks.

Templates (`rl.template`): how a problem becomes the text the policy continues, and where generation stops.

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

GRPO's questions (`PromptSource`): the user's prompt files (`rl.prompts`, rendered by `rl.template`)
or the built-in synthetic sums (`data.synthetic`), as token ids with a stop rule, in the tokenizer
`prompt_tokenizer` gives it.

Both are addressed by a global position (questions drawn so far), saved in the checkpoint: the
questions of a rollout are a pure function of (seed, position), whatever the DP size.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

from r1mega.config import DataConfig, RLConfig
from r1mega.data.jsonl import DataError, iter_jsonl, jsonl_digest
from r1mega.data.synthetic import every_prompt, resolve_tokenizer, stops_after_answer, synthetic_prompts
from r1mega.data.tokenizer import Tokenizer, check_fits, load_tokenizer
from r1mega.judge.language import LANGUAGES  # the targets the language reward and filter can judge


ROLES = ("system", "user", "assistant")


def parse_problem(where: str, rec: dict, answers: bool = True, sft_chats: bool = False) -> dict:
    """One record, checked, as a dict with every key of the format (see the module docstring).
    answers: the record must say how it is checked (answer or tests). sft_chats: a chat may end with
    the assistant's reply, which is dropped."""
    def bad(msg: str) -> DataError:
        return DataError(f"{where}: {msg}")

    prompt, messages = rec.get("prompt"), rec.get("messages")
    if prompt is None and messages is None:
        raise bad("needs 'prompt' (a string) or 'messages' (a chat)")
    if prompt is not None and messages is not None:
        raise bad("has both 'prompt' and 'messages'; give one (which one is the question is unclear)")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise bad("'prompt' must be a non-empty string")
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise bad("'messages' must be a non-empty list of {role, content}")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise bad(f"messages[{i}] needs role ({'/'.join(ROLES)}) and string content")
        if sft_chats and messages[-1]["role"] == "assistant" and len(messages) > 1:
            messages = messages[:-1]
        if messages[-1]["role"] != "user":
            raise bad("the last message must be the user's (the model answers it)"
                      + (", or the assistant's reply to it" if sft_chats else ""))
        if not messages[-1]["content"].strip():  # as an empty 'prompt': no question to answer
            raise bad(f"messages[{len(messages) - 1}]: the user's question is empty")
    answer, tests = rec.get("answer"), rec.get("tests")
    if answers and answer is None and tests is None:
        raise bad("needs 'answer' (math) or 'tests' (code) to be checked against")
    if answer is not None and tests is not None:  # the rewards, eval and the filters would read one and drop the other
        raise bad("has both 'answer' and 'tests': a problem is judged by one of them (keep 'answer' for a "
                  "final answer, 'tests' for a program)")
    if answer is not None and (isinstance(answer, bool) or not isinstance(answer, (str, int, float))):
        raise bad(f"'answer' must be a string or a number, got {type(answer).__name__}")
    if isinstance(answer, float) and not math.isfinite(answer):  # NaN, Infinity, or 1e400 read as inf
        raise bad(f"'answer' is the non-finite number {answer!r} (NaN/Infinity, or too large for a float: "
                  "write the answer as a string, e.g. \"\\\\infty\" or \"1e400\")")
    if isinstance(answer, str) and not answer.strip():
        raise bad("'answer' is empty: no response can match it (the judge scores every one 0); give the "
                  "reference final answer, or 'tests' for code")
    if tests is not None:
        if isinstance(tests, list):
            for i, case in enumerate(tests):
                if not (isinstance(case, dict) and isinstance(case.get("input"), str)
                        and isinstance(case.get("output"), str)):
                    raise bad(f"tests[{i}] must be {{\"input\": str, \"output\": str}}")
            if not tests:
                raise bad("'tests' is an empty list")
        elif not isinstance(tests, str) or not tests.strip():
            raise bad("'tests' must be Python code (a string) or a list of {input, output} cases")
    entry = rec.get("entry_point")
    if entry is not None and (not isinstance(entry, str) or not entry.isidentifier()):
        raise bad(f"'entry_point' must be a Python identifier, got {entry!r}")
    if entry is not None and not isinstance(tests, str):
        raise bad("'entry_point' goes with 'tests' given as Python code")
    lang = rec.get("language")
    if lang is not None and lang not in LANGUAGES:
        raise bad(f"'language' must be one of {LANGUAGES}, got {lang!r}")
    pid = rec.get("id", where)
    if not isinstance(pid, (str, int)) or isinstance(pid, bool):
        raise bad(f"'id' must be a string or an integer, got {type(pid).__name__}")
    return {"id": pid, "prompt": prompt, "messages": messages,
            "answer": None if answer is None else str(answer), "tests": tests, "entry_point": entry,
            "language": lang, "where": where}


def read_problems(path: str, answers: bool = True, sft_chats: bool = False, keyed: bool = False) -> list[dict]:
    """Every record of one JSONL file, checked, in file order. answers, sft_chats: as parse_problem.
    keyed: the ids key an output store (generation): strings, the line number when a record has
    none, and no id twice in the file."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: prompt file not found")
    problems, seen = [], {}
    for where, rec in iter_jsonl(path):
        problem = parse_problem(where, rec, answers, sft_chats)
        if keyed:
            pid = problem["id"] = str(rec.get("id", where.rsplit(":", 1)[1]))
            if pid in seen:
                raise DataError(f"{where}: id {pid!r} already used at {seen[pid]}")
            seen[pid] = where
        problems.append(problem)
    if not problems:
        raise DataError(f"{path}: no problems in the file")
    return problems


def load_prompts(paths: list[str]) -> list[dict]:
    """RL's problems: every record of the JSONL files, each with an answer or tests, in file order."""
    problems: list[dict] = []
    for path in paths:
        if os.path.isfile(path) and not path.endswith((".jsonl", ".json")):
            raise DataError(f"{path}: prompt files are JSONL (one JSON object per line)")
        problems.extend(read_problems(path))
    return problems


def _resume_advice(same: str, where: str) -> str:
    return (f"Give the same {same}, set train.allow_data_change=true to continue deliberately, or start a new "
            f"train.run_dir with train.load={where}")


def check_same_prompts(meta: dict, paths: list[str], where: str) -> None:
    """A run resumed from its own checkpoint must read the prompt files it was saved with."""
    from r1mega.errors import ConfigError

    saved = meta.get("prompts_sha256")
    if saved is not None and paths and saved != jsonl_digest(paths):
        raise ConfigError("rl.prompts", f"{where} was saved at a position in other prompt files (their content "
                          f"differs); resuming would continue at a meaningless position. " + _resume_advice("files", where))


def check_same_tokenizer(meta: dict, tok: Tokenizer, where: str) -> None:
    """A run resumed from its own checkpoint encodes its prompts with the tokenizer it was saved with:
    the policy's token ids mean nothing under another vocabulary (e.g. another data.synthetic_docs)."""
    from r1mega.errors import ConfigError

    saved = meta.get("tokenizer_fingerprint")  # checkpoints from before it was recorded have none
    if saved is not None and saved != tok.fingerprint():
        raise ConfigError("data.tokenizer", f"{where} was trained with another tokenizer (vocabulary fingerprint "
                          f"{saved}, this run's {tok.path} is {tok.fingerprint()}); its token ids would be read as "
                          f"other text. " + _resume_advice("tokenizer", where))


def check_same_seed(meta: dict, seed: int, where: str) -> None:
    """A run resumed from its own checkpoint takes its prompts by position in the order (files) or the
    draws (synthetic) its seed makes: under another seed the saved position means other prompts."""
    from r1mega.errors import ConfigError

    saved = meta.get("data_seed")  # checkpoints from before it was recorded have none
    if saved is not None and saved != seed:
        raise ConfigError("seed", f"{where} was saved at seed={saved}, not {seed}; resuming would continue at its "
                          f"prompt position in other prompts. " + _resume_advice("seed", where))


def check_prompts_fit(problems: list[dict], count_tokens, positions: int, what: str = "rl.prompts") -> None:
    """Every rendered prompt must leave room in the model's positions; the first that does not is named."""
    from r1mega.errors import ConfigError

    too_long = []
    for p in problems:
        n = count_tokens(p)
        if n >= positions:
            too_long.append((p, n))
    if too_long:
        p, n = too_long[0]
        raise ConfigError(what, f"{p.get('where', p.get('id'))}: prompt has {n} tokens but the model has {positions} "
                          f"positions (max_position_embeddings)"
                          + (f"; {len(too_long)} prompts are too long" if len(too_long) > 1 else "")
                          + "; shorten or remove them")


def question_text(problem: dict) -> str:
    """The question as plain text: `prompt`, else the last user message's content."""
    if problem.get("prompt") is not None:
        return problem["prompt"]
    return problem["messages"][-1]["content"]


class PromptOrder:
    """Problems in a seeded order, epoch after epoch: `take(position, n)` is a pure function."""

    def __init__(self, problems: list[dict], seed: int):
        if not problems:
            raise DataError("no problems to draw prompts from")
        self.problems, self.seed = problems, seed
        self._epoch: Optional[int] = None
        self._order: list[int] = []

    def order(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            self._order = list(range(len(self.problems)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(self._order)
            self._epoch = epoch
        return self._order

    def epoch_of(self, position: int) -> int:
        return position // len(self.problems)

    def take(self, position: int, n: int) -> list[dict]:
        """Problems at global positions [position, position + n), crossing epochs as needed."""
        out, size = [], len(self.problems)
        for p in range(position, position + n):
            out.append(self.problems[self.order(p // size)[p % size]])
        return out

# ---- templates -------------------------------------------------------------------------------

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
        try:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        except DataError as e:
            if "where" not in problem:
                raise
            raise DataError(f"{problem['where']}: {e}") from None
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
    # a name GRPO has no Template for (generation's `r1` format, which writes its own BOS text) is not a chat
    found = TEMPLATES.get(template) if isinstance(template, str) else template
    chat = found is not None and found.chat
    ids = tok.encode(text)
    if getattr(tok, "add_bos", False) and tok.bos_id is not None and not chat and ids[:1] != [tok.bos_id]:
        ids = [tok.bos_id] + ids
    return ids


def stop_strings(template: str) -> list[str]:
    """Text after which a completion is finished (besides EOS)."""
    return list(TEMPLATES[template].stops) if template in TEMPLATES else []


def cut_after_stop(text: str, stops: list[str]) -> str:
    """A stopped completion's text: up to the end of its earliest stop string (all of it when none is
    in it). A stop string can end inside the completion's last token; the sampled ids keep that whole
    token (SFT and RL train on them as sampled), the text ends with the stop string, as vLLM's output
    text does with include_stop_str_in_output (its token ids also keep the whole token)."""
    ends = [at + len(s) for s in stops for at in (text.find(s),) if at >= 0]
    return text[:min(ends)] if ends else text


def stops_at(stops: list[str]):
    """A GenerationConfig.stop predicate for decoded completion text, or None without stop strings."""
    if not stops:
        return None
    return lambda text: any(s in text for s in stops)

# ---- GRPO's questions ------------------------------------------------------------------------

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

    def finished(self, text: str) -> str:
        """A stopped response's text as judged and logged: what follows the stop in its last token left out."""


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

    def finished(self, text: str) -> str:
        return cut_after_stop(text, self.stops)


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
        return max(count_tokens(p) for p in every_prompt(self.kind))  # any of them may be drawn

    def is_stopped(self, text: str) -> bool:
        return stops_after_answer(text)

    def finished(self, text: str) -> str:
        return text  # the answer line's end is a rule, not a stop string: a sum's reward reads its answer alone


def prompt_tokenizer(cfg: DataConfig, vocab_size: int, load: Optional[str]) -> Tokenizer:
    """The tokenizer of an RL run's prompts: data.tokenizer, the synthetic corpus's, else the one in
    `load` (the checkpoint of a run on prompt files; None for a synthetic run)."""
    from r1mega.errors import ConfigError

    path = resolve_tokenizer(cfg, vocab_size) or load  # builds the synthetic corpus's tokenizer if asked
    if path is None:
        raise ConfigError("data.tokenizer", "GRPO needs a tokenizer: data.tokenizer=DIR or data.synthetic")
    what = "train.load" if path == load else "data.tokenizer"
    if not os.path.exists(path):
        raise ConfigError(what, f"{path}: not found")
    tok = load_tokenizer(path, what)  # a damaged file named, as pretraining and SFT name it
    if load is not None and path != load:  # the model's own EOS ids end rollouts too (transformers' generate)
        try:
            tok.add_model_eos(load)
        except ValueError as e:
            raise ConfigError("train.load", str(e)) from None
    check_fits(tok, vocab_size)
    return tok


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
        """A completion's text as it follows the prompt (a first token that starts a word keeps its space)."""
        return self.tok.decode_continuation(ids)

    def stop(self) -> Callable[[list[int]], bool]:
        """Stop predicate on a completion's ids (EOS is handled by generation itself)."""
        questions, tail = self.questions, self.questions.stop_tail
        if tail is None:
            return lambda ids: questions.is_stopped(self.decode(ids))
        return lambda ids: questions.is_stopped(self.decode(ids[-tail:]))

    def is_stopped(self, text: str) -> bool:
        return self.questions.is_stopped(text)

    def finished(self, text: str) -> str:
        return self.questions.finished(text)

    def response_text(self, rendered: Rendered, ids: list[int]) -> str:
        """What the rewards judge of one sample: the response part of the rendered prompt (a template's
        opening tag) and the completion without its end-of-sequence token, or up to the end of its stop
        string (the ids the update trains keep the whole last token)."""
        if ids and ids[-1] in self.tok.eos_ids:
            return rendered.response_prefix + self.decode(ids[:-1])
        return rendered.response_prefix + self.finished(self.decode(ids))
