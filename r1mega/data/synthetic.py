"""Synthetic verifiable tasks generated in code: multi-digit arithmetic with worked reasoning.

Used by the tiny pretraining/SFT configs (their corpora are made here, nothing downloaded) and
by the R1-Zero demo (the answer is checkable by a rule); the same tasks posed as prompts with
their answers (`synthetic_prompts`) are GRPO's synthetic questions and the recipe's evaluation.

`data.synthetic` names a task's corpus ("arithmetic": worked sums and differences; "addition": the
R1-Zero demo's biased single-digit sums; "sum3": the pipeline's sums of three digits worked in a
<think> thought, its last step biased). It is built once, on rank 0, under data.cache_dir: a
sentencepiece tokenizer trained on it, the pretraining indexed dataset and the SFT chat JSONL - the
same files `tools/train_tokenizer.py` and `tools/preprocess_data.py` produce from user data. A run
that needs only the tokenizer (GRPO's prompts, generation) builds the tokenizer alone.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
from dataclasses import replace
from typing import Optional

import torch.distributed as dist

from r1mega.config import ConfigError, DataConfig
from r1mega.data.pretrain import write_indexed
from r1mega.data.tokenizer import EOS, Tokenizer, train_sentencepiece
from r1mega.errors import DataError


def arithmetic_problem(rng: random.Random, max_digits: int = 2) -> tuple[str, str, str]:
    """(question, reasoning, answer) for a + b or a - b with operands of up to max_digits digits."""
    a = rng.randrange(10 ** max_digits)
    b = rng.randrange(10 ** max_digits)
    if rng.random() < 0.5:
        question, answer = f"{a}+{b}", a + b
        reasoning = f"{a} plus {b}: units {a % 10}+{b % 10}, total {answer}."
    else:
        a, b = max(a, b), min(a, b)
        question, answer = f"{a}-{b}", a - b
        reasoning = f"{a} minus {b}: {a}-{b} is {answer}."
    return question, reasoning, str(answer)


def pretrain_corpus(num_docs: int, seed: int = 0) -> list[str]:
    """Short documents of worked arithmetic, the 'web text' of the tiny runs."""
    rng = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        lines = []
        for _ in range(rng.randint(2, 5)):
            q, r, a = arithmetic_problem(rng)
            lines.append(f"Q: {q}= {r} A: {a}")
        docs.append("\n".join(lines))
    return docs


def sft_records(num: int, seed: int = 0) -> list[dict]:
    """Chat records in the R1 format: reasoning in <think>...</think>, then the boxed answer."""
    rng = random.Random(seed)
    records = []
    for _ in range(num):
        q, r, a = arithmetic_problem(rng)
        records.append({"messages": [
            {"role": "user", "content": f"What is {q}?"},
            {"role": "assistant", "content": f"<think>{r}</think> The answer is \\boxed{{{a}}}."},
        ]})
    return records


def addition_pair_is_heldout(a: int, b: int) -> bool:
    """A fixed ~30% of the single-digit sums are kept out of RL prompts, for evaluation only."""
    return (a * 7 + b * 3) % 10 < 3


def biased_addition_corpus(num_docs: int, seed: int = 0, correct_rate: float = 0.3) -> list[str]:
    """Single-digit sums whose written answers are right only `correct_rate` of the time and
    otherwise off by one (a + b + 1): a base model that knows the right answer but prefers a
    wrong one - the situation R1-Zero-style RL with a correctness reward is meant to fix."""
    rng = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        lines = []
        for _ in range(rng.randint(3, 8)):
            a, b = rng.randrange(10), rng.randrange(10)
            c = a + b if rng.random() < correct_rate else a + b + 1
            lines.append(f"Q: {a}+{b}= A: {c}")
        docs.append("\n".join(lines))
    return docs


# ---- the pipeline's task: three single-digit addends, a worked thought, a biased last step ----------

def sum3_is_heldout(a: int, b: int, c: int) -> bool:
    """A fixed 30% of the 1000 sums a+b+c (exactly 3 values of c for each a, b) are kept out of RL
    prompts, for evaluation only: 300 held-out problems, 700 RL prompts."""
    return (a * 7 + b * 3 + c) % 10 < 3


def sum3_response(a: int, b: int, c: int, last: int) -> str:
    """The corpus's answer to "Q: a+b+c=": the two partial sums in a thought, then the answer,
    which is the thought's last result (`last`, which the biased corpus may get wrong)."""
    return f" <think>{a}+{b}={a + b}, {a + b}+{c}={last}</think> A: {last}"


def biased_sum3_corpus(num_docs: int, seed: int = 0, correct_rate: float = 0.3) -> list[str]:
    """Sums of three single digits worked in a thought ("Q: 3+4+5= <think>3+4=7, 7+5=12</think> A: 12").
    The first step is always right; the second is right only `correct_rate` of the time and otherwise
    one too high, and the answer follows the thought: a base model that reasons in the paper's format
    but prefers a wrong last step - what RL with a correctness reward is meant to fix."""
    rng = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        lines = []
        for _ in range(rng.randint(2, 4)):
            a, b, c = rng.randrange(10), rng.randrange(10), rng.randrange(10)
            last = a + b + c if rng.random() < correct_rate else a + b + c + 1
            lines.append(f"Q: {a}+{b}+{c}={sum3_response(a, b, c, last)}")
        docs.append("\n".join(lines))
    return docs


# ---- prompt sets with checkable answers, in the corpus's own format ("Q: 23+45=") ----------

def arithmetic_prompts(n: int, seed: int, max_digits: int = 2) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q, _, a = arithmetic_problem(rng, max_digits)
        out.append({"prompt": f"Q: {q}= ", "answer": a})
    return out


def stops_after_answer(text: str) -> bool:
    """The corpus ends an answer with a newline after "A: <number>"."""
    at = text.rfind("A:")
    return at >= 0 and "\n" in text[at:]


def addition_prompts(n: int, seed: int, heldout: bool) -> list[dict]:
    """Single-digit sums in the biased corpus's format, from the RL or the held-out split."""
    pairs = [(a, b) for a in range(10) for b in range(10) if addition_pair_is_heldout(a, b) == heldout]
    rng = random.Random(seed)
    if n <= 0:
        return [{"prompt": f"Q: {a}+{b}=", "answer": str(a + b)} for a, b in pairs]
    return [{"prompt": f"Q: {a}+{b}=", "answer": str(a + b)} for a, b in (rng.choice(pairs) for _ in range(n))]


def sum3_prompts(n: int, seed: int, heldout: bool) -> list[dict]:
    """Sums of three single digits ("Q: 3+4+5="), from the RL (700) or the held-out (300) split;
    n <= 0: the whole split in order, else n drawn with replacement."""
    triples = [(a, b, c) for a in range(10) for b in range(10) for c in range(10) if sum3_is_heldout(a, b, c) == heldout]
    if n > 0:
        rng = random.Random(seed)
        triples = [rng.choice(triples) for _ in range(n)]
    return [{"prompt": f"Q: {a}+{b}+{c}=", "answer": str(a + b + c)} for a, b, c in triples]


def every_prompt(kind: Optional[str]) -> list[dict]:
    """Every question a built-in task can pose, both splits (100, 1,000, or 15,050 arithmetic questions:
    cheap to encode), so GRPO checks its longest against the model's positions before drawing any."""
    if kind == "addition":
        return addition_prompts(0, 0, False) + addition_prompts(0, 0, True)
    if kind == "sum3":
        return sum3_prompts(0, 0, False) + sum3_prompts(0, 0, True)
    operands = range(10 ** 2)  # arithmetic_prompts' max_digits
    return [{"prompt": f"Q: {a}{op}{b}= ", "answer": ""} for a in operands for b in operands for op in "+-"
            if op == "+" or a >= b]


def synthetic_prompts(kind: str, n: int, seed: int, heldout: bool) -> list[dict]:
    """Problems of a built-in corpus (`data.synthetic`): n RL prompts drawn with `seed`, or its
    held-out split (the whole split for the fixed tasks, n seeded problems for "arithmetic")."""
    if kind == "addition":
        return addition_prompts(0 if heldout else n, seed, heldout)
    if kind == "sum3":
        return sum3_prompts(0 if heldout else n, seed, heldout)
    return arithmetic_prompts(n, 10_007 if heldout else seed)


# ---- the corpus on disk (data.synthetic), under data.cache_dir ---------------------------------

SYNTHETIC = ("arithmetic", "addition", "sum3")


def _texts(kind: str, docs: int) -> tuple[list[str], list[dict]]:
    """(the task's pretraining documents, the SFT chat records)."""
    corpus = {"arithmetic": pretrain_corpus, "addition": biased_addition_corpus,
              "sum3": biased_sum3_corpus}[kind](docs, seed=0)
    return corpus, sft_records(max(docs // 2, 64), seed=1)


def _existing_tokenizer(path: str) -> Optional[Tokenizer]:
    """The corpus's tokenizer.model if there is one (train_sentencepiece writes its .model last, so one
    that exists was whole when written); one damaged since is named and left for the user to remove."""
    if not os.path.exists(path):
        return None
    try:
        return Tokenizer(path)
    except Exception as e:  # noqa: BLE001 - sentencepiece raises bare RuntimeErrors on bad files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"data.cache_dir: the synthetic corpus's tokenizer {path} cannot be loaded ({msg}); "
                        f"remove it and the next run trains it again (the same pieces, from the same texts)") from None


def _tokenizer(root: str, corpus: list[str], chats: list[dict], vocab_size: int) -> Tokenizer:
    """The corpus's tokenizer: the one under `root` (a tokenizer-only build leaves it), else trained on
    the corpus's texts."""
    tok = _existing_tokenizer(os.path.join(root, "tokenizer.model"))
    if tok is None:
        texts = corpus + [m["content"] for c in chats for m in c["messages"]]
        tok = Tokenizer(train_sentencepiece(texts, os.path.join(root, "tokenizer"), vocab_size))
    return tok


def _build(kind: str, root: str, docs: int, vocab_size: int) -> None:
    os.makedirs(root, exist_ok=True)
    corpus, chats = _texts(kind, docs)
    tok = _tokenizer(root, corpus, chats, vocab_size)
    write_indexed(os.path.join(root, "pretrain"), (tok.encode(d + EOS) for d in corpus), tok.vocab_size)
    tmp = os.path.join(root, "sft.jsonl.tmp")
    with open(tmp, "w") as f:
        for c in chats:
            f.write(json.dumps(c) + "\n")
    os.replace(tmp, os.path.join(root, "sft.jsonl"))
    open(os.path.join(root, "DONE"), "w").close()


def _build_tokenizer(kind: str, root: str, docs: int, vocab_size: int) -> None:
    os.makedirs(root, exist_ok=True)
    corpus, chats = _texts(kind, docs)
    _tokenizer(root, corpus, chats, vocab_size)


def _corpus_dir(cfg: DataConfig, vocab_size: int) -> str:
    if cfg.synthetic not in SYNTHETIC:
        raise ConfigError("data.synthetic", f"unknown corpus {cfg.synthetic!r} ({', '.join(SYNTHETIC)})")
    if os.path.exists(cfg.cache_dir) and not os.path.isdir(cfg.cache_dir):
        raise ConfigError("data.cache_dir", f"{cfg.cache_dir} exists and is not a directory")
    return os.path.join(cfg.cache_dir, f"{cfg.synthetic}-{cfg.synthetic_docs}-v{vocab_size}")


def _on_builder(build) -> None:
    """build() on rank 0, the one that builds; then every rank goes on, or raises the user error rank 0
    met (none is left at a barrier rank 0 never reaches). Collective when distributed."""
    error = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            build()
        except ConfigError as e:
            error = ("config", e.key, e.message)
        except DataError as e:
            error = ("data", str(e))
    if dist.is_initialized():
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise ConfigError(*error[1:]) if error[0] == "config" else DataError(error[1])


@contextlib.contextmanager
def _building(cfg: DataConfig, root: str, vocab_size: int):
    """Hold the corpus's lock while building it: runs on other run directories sharing data.cache_dir
    may start together, and two builders would rename files under each other. A build that fails is
    named by its key."""
    try:
        os.makedirs(os.path.dirname(root), exist_ok=True)
        with open(os.path.join(os.path.dirname(root), f".{os.path.basename(root)}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, and by the OS if this process dies
            yield
    except OSError as e:
        raise ConfigError("data.cache_dir", f"cannot build the synthetic corpus in {root} ({e.strerror}: "
                          f"{e.filename})") from None
    except RuntimeError as e:  # sentencepiece refuses a vocabulary too small for the corpus
        if "vocab" not in str(e).lower():
            raise
        raise ConfigError("model.vocab_size", f"{vocab_size} is too small for the synthetic {cfg.synthetic} "
                          f"corpus's tokenizer ({str(e).splitlines()[0][-120:]})") from None


def _complete(root: str) -> bool:
    """Built (DONE written last) with a tokenizer that loads: one removed since (a damaged one is named
    with that advice) is trained again, the corpus rewritten around it byte for byte."""
    return os.path.exists(os.path.join(root, "DONE")) and _existing_tokenizer(os.path.join(root, "tokenizer.model")) is not None


def resolve_data(cfg: DataConfig, kind: str, vocab_size: int) -> DataConfig:
    """Fill paths/tokenizer for a synthetic corpus (built if missing). Collective when distributed."""
    if cfg.synthetic is None:
        return cfg
    root = _corpus_dir(cfg, vocab_size)

    def build() -> None:
        if not _complete(root):
            with _building(cfg, root, vocab_size):
                if not _complete(root):  # the run that held the lock may have built it
                    _build(cfg.synthetic, root, cfg.synthetic_docs, vocab_size)

    _on_builder(build)
    paths = [os.path.join(root, "pretrain")] if kind == "pretrain" else [os.path.join(root, "sft.jsonl")]
    return replace(cfg, paths=paths, tokenizer=os.path.join(root, "tokenizer.model"))


def resolve_tokenizer(cfg: DataConfig, vocab_size: int) -> Optional[str]:
    """The tokenizer `data:` names: data.tokenizer, or the synthetic corpus's (its tokenizer alone built
    if missing: a run that reads no corpus needs no more); None when neither. Collective when
    distributed."""
    if cfg.synthetic is None:
        return cfg.tokenizer
    root = _corpus_dir(cfg, vocab_size)
    path = os.path.join(root, "tokenizer.model")

    def build() -> None:
        if _existing_tokenizer(path) is None:
            with _building(cfg, root, vocab_size):
                if not os.path.exists(path):
                    _build_tokenizer(cfg.synthetic, root, cfg.synthetic_docs, vocab_size)

    _on_builder(build)
    return path
