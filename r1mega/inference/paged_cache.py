"""A paged KV cache for continuous batching: fixed-size blocks of token slots, allocated as rows
grow and freed when they finish, shared (by reference count) between the samples of one prompt.

Each layer keeps its cached values in flat storages [blocks * block_size, *features] (the family
decides the features: MLA one [kv_lora_rank + rope] latent per token, the dense students their KV
heads' keys and values). A row is a list of block ids; a forward over some rows gets a
`ForwardView` that knows, once for all its layers, where each new token is written and which slots
each row reads (left-aligned to a common length, pads reading the null block 0 and masked). So the
cache holds the tokens that exist, not rows x (prompt + max_new_tokens), and memory is reported as
the blocks in use and their peak.
"""
from __future__ import annotations

from typing import Optional

import torch

from r1mega.kernels.block_attention import documents_from_valid

NULL_BLOCK = 0  # never allocated: pads write and read here, masked out of attention


class BlockPool:
    """Storages of one pipeline stage's layers, a free list and reference counts."""

    def __init__(self, parts: dict[int, list[tuple[int, ...]]], block_size: int, dtype: torch.dtype,
                 device: torch.device, blocks: int = 16):
        self.block_size, self.dtype, self.device = block_size, dtype, device
        self.parts = parts  # layer -> feature shape of each stored part
        self.storage = {i: [torch.zeros(blocks * block_size, *shape, dtype=dtype, device=device) for shape in shapes]
                        for i, shapes in parts.items()}
        self.capacity = blocks
        self.refs = [1] + [0] * (blocks - 1)  # the null block is held forever
        self.free = list(range(blocks - 1, 0, -1))
        self.used = self.peak = 0
        elsize = torch.empty((), dtype=dtype).element_size()
        self.bytes_per_block = block_size * elsize * sum(
            torch.Size(shape).numel() for shapes in parts.values() for shape in shapes)

    def _grow(self) -> None:
        """A quarter more blocks (at least 16): memory follows the tokens, copies stay amortised."""
        more = max(16, self.capacity // 4)
        for i, tensors in self.storage.items():
            self.storage[i] = [torch.cat([t, t.new_zeros(more * self.block_size, *t.shape[1:])]) for t in tensors]
        self.free.extend(range(self.capacity + more - 1, self.capacity - 1, -1))
        self.refs.extend([0] * more)
        self.capacity += more

    def alloc(self) -> int:
        if not self.free:
            self._grow()
        b = self.free.pop()
        self.refs[b] = 1
        self.used += 1
        self.peak = max(self.peak, self.used)
        return b

    def incref(self, blocks: list[int]) -> None:
        for b in blocks:
            self.refs[b] += 1

    def release(self, blocks: list[int]) -> None:
        for b in blocks:
            self.refs[b] -= 1
            if self.refs[b] == 0:
                self.free.append(b)
                self.used -= 1

    def copy_blocks(self, src: list[int], dst: list[int]) -> None:
        """Copy whole blocks (a prompt's partial last block for each sample that appends to it)."""
        if not src:
            return
        bs = self.block_size
        offs = torch.arange(bs, device=self.device)
        s = (torch.tensor(src, device=self.device)[:, None] * bs + offs).flatten()
        d = (torch.tensor(dst, device=self.device)[:, None] * bs + offs).flatten()
        for tensors in self.storage.values():
            for t in tensors:
                t.index_copy_(0, d, t.index_select(0, s))

    def used_bytes(self) -> int:
        return self.used * self.bytes_per_block

    def peak_bytes(self) -> int:
        return self.peak * self.bytes_per_block

    def pool_bytes(self) -> int:
        return self.capacity * self.bytes_per_block

    def values_per_token_per_layer(self) -> int:
        shapes = next(iter(self.parts.values()))
        return sum(torch.Size(s).numel() for s in shapes)


class ForwardView:
    """The cache as one forward sees it: `layer(i)` gives the family's layer view (store, append,
    record_routing); `prompt_documents(s)` the document ids of a prefill (left-padded prompts)."""

    def __init__(self, pool: BlockPool, layer_view, write: torch.Tensor, read: Optional[torch.Tensor],
                 valid: torch.Tensor, prefill: bool):
        self.pool, self.prefill = pool, prefill
        self.write = write.flatten()  # [s * b] slot of each new token (s-major, as the activations)
        self.s = write.shape[0]
        self.read = read  # [b, L] slots each row reads, left-aligned (decode), or None
        self.valid = valid  # [b, L] (decode) or [b, s] (prefill): slots that hold a token
        self.routing: dict[int, torch.Tensor] = {}  # layer -> experts [s, b, k] of this forward
        self._layer_view = layer_view
        self._mask = None
        self._blocked = None

    def layer(self, i: int):
        return self._layer_view(self, self.pool.storage[i], i)

    def advance(self, s: int) -> None:  # lengths are the engine's: nothing to count here
        pass

    def blocked(self, allowed: torch.Tensor) -> torch.Tensor:
        """~allowed[:, None] (the attention scores' fill mask), built once per forward for its layers."""
        if self._blocked is None or self._blocked[0] is not allowed:
            self._blocked = (allowed, ~allowed[:, None])
        return self._blocked[1]

    def prompt_documents(self, s: int):
        return documents_from_valid(self.valid) if self.prefill and s > 1 else None

    def slots_read(self) -> torch.Tensor:
        if self.read is None:  # a one-token prefill: each row reads just its new token
            return self.write.view(self.s, -1).t()
        return self.read

    def mask(self) -> torch.Tensor:
        """[b, s, L] True = attend: causal over valid slots, each query sees itself."""
        if self._mask is None:
            valid = self.valid
            L = valid.shape[1]
            q = torch.arange(L - self.s, L, device=valid.device)[:, None]
            k = torch.arange(L, device=valid.device)[None, :]
            self._mask = ((k <= q)[None] & valid[:, None, :]) | (k == q)[None]
        return self._mask


def block_table(tables: list[list[int]], n: int, device) -> torch.Tensor:
    """[rows, n] block ids (null-padded)."""
    return torch.tensor([t[:n] + [NULL_BLOCK] * (n - len(t[:n])) for t in tables], dtype=torch.long, device=device)


def prefill_view(pool: BlockPool, layer_view, tables: list[list[int]], pad: torch.Tensor, s: int) -> ForwardView:
    """Prompts left-padded to s tokens, row j's tokens written to its blocks `tables[j]` in order."""
    bs, device = pool.block_size, pool.device
    j = torch.arange(s, device=device)[None, :] - pad[:, None]  # [b, s] position within the prompt
    valid = j >= 0
    jc = j.clamp(min=0)
    tab = block_table(tables, -(-s // bs), device)
    slots = torch.where(valid, tab.gather(1, jc // bs) * bs + jc % bs, torch.zeros_like(jc))
    return ForwardView(pool, layer_view, slots.t().contiguous(), None, valid, prefill=True)


def decode_view(pool: BlockPool, layer_view, table: torch.Tensor, lengths: torch.Tensor, s: int = 1,
                longest: Optional[int] = None) -> ForwardView:
    """s new tokens per row at positions lengths[r]..lengths[r]+s-1 (already inside its blocks, table
    [b, n]); s > 1: speculative decoding's verification (inference/speculative.py). longest:
    max(lengths) + s when the caller knows it on the host (spares a device sync)."""
    bs, device = pool.block_size, pool.device
    total = lengths + s
    L = int(total.max()) if longest is None else longest
    j = torch.arange(L, device=device)[None, :] - (L - total)[:, None]  # [b, L] position within the row
    valid = j >= 0
    jc = j.clamp(min=0)
    # the table's first ceil(L / bs) columns are all the gather reads; not sliced to them: in the
    # compiled step the slice made graphs specialise on its width (1, or the whole table)
    read = torch.where(valid, table.gather(1, jc // bs) * bs + jc % bs, torch.zeros_like(jc))
    write = read[:, -s:].t().contiguous()  # [s, b]
    return ForwardView(pool, layer_view, write, read, valid, prefill=False)
