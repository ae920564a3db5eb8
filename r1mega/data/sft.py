"""SFT from JSONL chat records in the R1 format, loss on assistant tokens only, packed.

A record is {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}; assistant
contents carry the reasoning as `<think> ... </think>` then the answer. Rendering follows
DeepSeek-R1's chat template: BOS, system text, then `<｜User｜>` / `<｜Assistant｜>` turns, each
assistant turn closed by EOS. Examples are packed first-fit into fixed-length rows; each row
carries per-document position ids and per-token document ids, which attention turns into a
block-diagonal causal mask block by block (never an s x s tensor), so no token attends across
documents.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from r1mega.data.jsonl import DataError, iter_jsonl
from r1mega.data.tokenizer import ASSISTANT, BOS, EOS, USER, Tokenizer

IGNORE = -100


def read_chat_jsonl(path: str) -> list[list[dict]]:
    """Validated conversations; a malformed line raises DataError naming file and line."""
    out = []
    for where, rec in iter_jsonl(path):
        msgs = rec.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{where}: expected an object with a non-empty 'messages' list")
        for k, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                    or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: messages[{k}] needs role system|user|assistant and string content")
        if not any(m["role"] == "assistant" for m in msgs):
            raise DataError(f"{where}: no assistant message, nothing to learn from")
        out.append(msgs)
    return out


def render(messages: list[dict], tok: Tokenizer) -> tuple[list[int], list[bool]]:
    """Token ids and a mask that is True on the tokens the model learns (assistant turns + EOS)."""
    ids, learn = [], []

    def add(text: str, trained: bool):
        piece = tok.encode(text)
        ids.extend(piece)
        learn.extend([trained] * len(piece))

    add(BOS, False)
    for m in messages:
        if m["role"] == "system":
            add(m["content"], False)
        elif m["role"] == "user":
            add(USER + m["content"], False)
        else:
            add(ASSISTANT, False)
            add(m["content"] + EOS, True)
    return ids, learn


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


class SFTData:
    def __init__(self, path: str, tok: Tokenizer, seq_length: int, seed: int):
        convs = read_chat_jsonl(path)
        if not convs:
            raise DataError(f"{path}: no conversations (the file is empty or has only blank lines)")
        pad = tok.eos_id if tok.eos_id is not None else 0
        self.rows, self.truncated = pack([render(c, tok) for c in convs], seq_length, pad)
        if not any((r.labels != IGNORE).any() for r in self.rows):  # the loss would be 0 on every step
            raise DataError(f"{path}: no assistant token falls within data.seq_length={seq_length} in any of the "
                            f"{len(convs)} records ({self.truncated} longer than it, truncated); raise "
                            f"data.seq_length or shorten the records")
        if self.truncated:
            import sys

            print(f"warning: {path}: {self.truncated} of {len(convs)} records are longer than data.seq_length="
                  f"{seq_length} and were truncated to it", file=sys.stderr, flush=True)
        self.seed = seed
        self.num_conversations = len(convs)

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
