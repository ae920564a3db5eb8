"""SFT from JSONL chat records, loss on assistant tokens only, packed.

A record is {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}; assistant
contents carry the reasoning as `<think> ... </think>` then the answer. `data.sft_template` says how
a record becomes tokens (SFT_TEMPLATES), so a model trains in the format it is evaluated in:
  auto   (default) the tokenizer's own chat template when it has one, else r1
  model  the tokenizer's own chat template (what `--template chat` generates with): each assistant
         turn is the text that rendering the conversation through that turn adds after rendering it
         up to the generation prompt; the template's own turn end (EOS, <|im_end|>, ...) is learned;
         a template that does not render a reply whole (spacing aside: DeepSeek-R1's drops the
         thought) is refused
  r1     DeepSeek-R1's chat format: BOS, system text, then `<｜User｜>` / `<｜Assistant｜>` turns, each
         assistant turn closed by EOS (`--template r1`)
  raw    the other turns' text as it is, each assistant turn continuing it directly, closed by EOS
         (`--template raw`: a base model's native "Q: 3+4=" format)
A record written by `r1mega reject-sample` also carries `prompt_ids` and `completion_ids`, the exact
tokens the model was given and sampled, and `tokenizer`, the fingerprint of the tokenizer they are
ids of. With that same tokenizer they are trained as they are (prompt untrained, completion and a
closing EOS trained), whatever the template, so no token is re-encoded differently (a sampled "▁A"
stays "▁A"); with another tokenizer (a distillation student's) the record's text is rendered. Examples are packed first-fit into fixed-length rows; each row
carries per-document position ids and per-token document ids, which attention turns into a
block-diagonal causal mask block by block (never an s x s tensor), so no token attends across
documents.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from r1mega.data.jsonl import DataError, iter_jsonl, jsonl_digest
from r1mega.data.tokenizer import Tokenizer, render, render_sampled, resolve_template
from r1mega.errors import ConfigError

IGNORE = -100


def _token_ids(rec: dict, key: str, where: str) -> list[int]:
    ids = rec[key]
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise DataError(f"{where}: '{key}' must be a list of token ids (non-negative integers)")
    return ids


def read_sft_jsonl(path: str) -> list[tuple[list[dict], Optional[tuple[list[int], list[int], Optional[str]]]]]:
    """(conversation, (prompt_ids, completion_ids, tokenizer fingerprint) or None) per record,
    validated like read_chat_jsonl."""
    return [(msgs, ids) for _, msgs, ids in _sft_records(path)[0]]


def _sft_records(path: str) -> tuple[list[tuple[str, list[dict], Optional[tuple[list[int], list[int], Optional[str]]]]], str]:
    """read_sft_jsonl's records, each with where it is (file:line), and the file's digest (what a
    checkpoint's position in it refers to)."""
    lines, digest = list(iter_jsonl(path)), jsonl_digest([path])
    out = []
    for where, rec in lines:
        msgs = _messages(rec, where)
        ids = None
        if "prompt_ids" in rec or "completion_ids" in rec:
            if not ("prompt_ids" in rec and "completion_ids" in rec):
                raise DataError(f"{where}: 'prompt_ids' and 'completion_ids' go together")
            ids = (_token_ids(rec, "prompt_ids", where), _token_ids(rec, "completion_ids", where), rec.get("tokenizer"))
            if not ids[1]:
                raise DataError(f"{where}: 'completion_ids' is empty, nothing to learn from")
        out.append((where, msgs, ids))
    return out, digest


def read_chat_jsonl(path: str) -> list[list[dict]]:
    """Validated conversations; a malformed line raises DataError naming file and line."""
    return [msgs for msgs, _ in read_sft_jsonl(path)]


def _messages(rec: dict, where: str) -> list[dict]:
    msgs = rec.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: expected an object with a non-empty 'messages' list")
    for k, m in enumerate(msgs):
        if (not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant")
                or not isinstance(m.get("content"), str)):
            raise DataError(f"{where}: messages[{k}] needs role system|user|assistant and string content")
    if not any(m["role"] == "assistant" for m in msgs):
        raise DataError(f"{where}: no assistant message, nothing to learn from")
    return msgs


@dataclass
class PackedRow:
    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    doc_ids: np.ndarray  # -1 on padding


def pack(examples: list[tuple[list[int], list[bool]]], seq_length: int, pad_id: int) -> tuple[list[PackedRow], int]:
    """First-fit packing of (ids, learn) examples into rows of seq_length (+1 for the shift).
    Returns the rows and how many examples were truncated to fit."""
    cap = seq_length + 1
    bins: list[list[tuple[list[int], list[bool]]]] = []
    space: list[int] = []
    truncated = 0
    for ids, learn in examples:
        if len(ids) > cap:
            ids, learn, truncated = ids[:cap], learn[:cap], truncated + 1
        for b, free in enumerate(space):
            if free >= len(ids):
                bins[b].append((ids, learn))
                space[b] -= len(ids)
                break
        else:
            bins.append([(ids, learn)])
            space.append(cap - len(ids))
    rows = []
    for docs in bins:
        tokens = np.full(cap, pad_id, dtype=np.int64)
        target_ok = np.zeros(cap, dtype=bool)
        pos = np.zeros(cap, dtype=np.int64)
        doc = np.full(cap, -1, dtype=np.int64)
        at = 0
        for d, (ids, learn) in enumerate(docs):
            n = len(ids)
            tokens[at:at + n], target_ok[at:at + n] = ids, learn
            pos[at:at + n], doc[at:at + n] = np.arange(n), d
            at += n
        labels = np.where(target_ok[1:] & (doc[1:] == doc[:-1]), tokens[1:], IGNORE)
        rows.append(PackedRow(tokens[:-1], labels, pos[:-1], doc[:-1]))
    return rows, truncated


def block_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """[b, s] document ids -> bool [b, 1, s, s], True where query i may attend key j. The dense
    equivalent of passing the ids themselves; a reference for tests (O(s^2) memory)."""
    s = doc_ids.shape[1]
    same = doc_ids.unsqueeze(2) == doc_ids.unsqueeze(1)
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    mask = same & causal
    mask |= torch.eye(s, dtype=torch.bool)  # padding rows attend to themselves (no NaN softmax)
    return mask.unsqueeze(1)


def rows_digest(rows: list) -> str:
    """sha256 of the number of packed rows and of up to 64 of them spread over the set (their input ids
    and labels): another tokenizer or template changes every row, and 64 rows cost nothing to hash."""
    import hashlib

    h = hashlib.sha256(str(len(rows)).encode())
    for i in sorted({k * len(rows) // 64 for k in range(64)}):
        h.update(rows[i].input_ids.tobytes() + rows[i].labels.tobytes())
    return h.hexdigest()


class SFTData:
    def __init__(self, path: str, tok: Tokenizer, seq_length: int, seed: int, template: str = "auto"):
        read, self.digest = _sft_records(path)  # the digest: what a checkpoint's data position refers to
        wheres, records = [where for where, _, _ in read], [(msgs, ids) for _, msgs, ids in read]
        if not records:
            raise DataError(f"{path}: no conversations (the file is empty or has only blank lines)")
        pad = tok.eos_id if tok.eos_id is not None else 0
        self.template = resolve_template(template, tok)
        mine = tok.fingerprint() if any(ids is not None for _, ids in records) else None
        same = [ids is not None and ids[2] == mine for _, ids in records]  # ids of this very tokenizer
        if self.template == "raw" and tok.eos_id is None and not all(same):  # raw ends each reply with EOS
            raise ConfigError("data.sft_template", f"raw closes each assistant reply with the end-of-sequence token, "
                              f"but tokenizer {tok.path} has none (eos_token in tokenizer_config.json, or "
                              f"generation_config.json's eos_token_id); name it there, or use r1 or model")
        examples = []
        for n, ((c, ids), ok) in enumerate(zip(records, same), start=1):
            if ok and max(ids[0] + ids[1]) >= tok.vocab_size:  # past the embedding: an index error mid-step
                raise DataError(f"{wheres[n - 1]}: token id {max(ids[0] + ids[1])} in 'prompt_ids'/'completion_ids' "
                                f"is outside the tokenizer's {tok.vocab_size} tokens (ids 0..{tok.vocab_size - 1}); "
                                f"the record was edited or written for another vocabulary")
            try:
                examples.append(render_sampled(ids[0], ids[1], tok.eos_id, tok.eos_ids) if ok
                                else render(c, tok, self.template))
            except DataError as e:  # a template's refusal, named by the record it met
                raise DataError(f"{path}: record {n}: {e}") from None
        self.sampled = sum(same)  # records trained on their sampled ids (the rest: their text)
        self.rows, self.truncated = pack(examples, seq_length, pad)
        if not any((r.labels != IGNORE).any() for r in self.rows):  # the loss would be 0 on every step
            raise DataError(f"{path}: no assistant token falls within data.seq_length={seq_length} in any of the "
                            f"{len(records)} records ({self.truncated} longer than it, truncated); raise "
                            f"data.seq_length or shorten the records")
        if self.truncated:
            import sys

            print(f"warning: {path}: {self.truncated} of {len(records)} records are longer than data.seq_length="
                  f"{seq_length} and were truncated to it", file=sys.stderr, flush=True)
        self.seed = seed
        self.num_conversations = len(records)
        self.rows_digest = rows_digest(self.rows)  # and what the file packs into, through tok and template

    def _row(self, i: int) -> PackedRow:
        epoch, k = divmod(i, len(self.rows))
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
        return self.rows[int(perm[k])]

    def batch(self, first_sample: int, size: int) -> dict:
        rows = [self._row(first_sample + k) for k in range(size)]
        stack = lambda f: torch.from_numpy(np.stack([getattr(r, f) for r in rows]))  # noqa: E731
        # attn_mask carries the document ids [b, s]; trailing padding (-1) is one more document
        return {"input_ids": stack("input_ids"), "labels": stack("labels"),
                "position_ids": stack("position_ids"), "attn_mask": stack("doc_ids")}
