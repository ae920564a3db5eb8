"""Pretraining samples from Megatron indexed datasets (`.bin`/`.idx`), blended by weight.

Files are read and written through megatron-core's IndexedDataset, so corpora preprocessed for
Megatron-LM load unchanged. Each dataset is one token stream (documents back to back, each
ending in EOS); sample j is the window [j*s, j*s + s + 1) of a per-epoch shuffled window order.
Blending follows Megatron's rule: sample i goes to the dataset furthest below its weight share.
Everything is a pure function of (seed, sample index), so the data position in a checkpoint is
one integer and resuming under another layout sees the same batches.
"""
from __future__ import annotations

import warnings
from typing import Iterable, Optional

import numpy as np
import torch


def _indexed():
    # megatron.core costs seconds to import; only pay it when indexed data is used. Its import
    # warns that Transformer Engine / apex are absent, which does not concern the dataset code.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    return IndexedDataset, IndexedDatasetBuilder


def write_indexed(prefix: str, documents: Iterable[list[int]], vocab_size: int) -> int:
    """Write token documents as `<prefix>.bin/.idx`. Returns the number of tokens written."""
    _, Builder = _indexed()
    dtype = np.uint16 if vocab_size < 65500 else np.int32
    builder = Builder(prefix + ".bin", dtype=dtype)
    total = 0
    with warnings.catch_warnings():  # numpy 2 deprecation inside megatron-core's builder
        warnings.simplefilter("ignore", DeprecationWarning)
        for doc in documents:
            builder.add_document(torch.tensor(doc, dtype=torch.int64), [len(doc)])
            total += len(doc)
    builder.finalize(prefix + ".idx")
    return total


class TokenStream:
    """One indexed dataset as a flat token stream with window access."""

    def __init__(self, prefix: str):
        IndexedDataset, _ = _indexed()
        self.prefix = prefix
        self.ds = IndexedDataset(prefix)
        lengths = np.asarray(self.ds.sequence_lengths, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lengths)])
        self.num_tokens = int(self.starts[-1])

    def window(self, start: int, length: int) -> np.ndarray:
        out, pos, end = [], start, start + length
        doc = int(np.searchsorted(self.starts, pos, side="right") - 1)
        while pos < end:
            offset = pos - self.starts[doc]
            take = min(end - pos, int(self.starts[doc + 1] - pos))
            out.append(np.asarray(self.ds.get(doc, offset=int(offset), length=int(take)), dtype=np.int64))
            pos += take
            doc += 1
        return np.concatenate(out)


class PretrainData:
    def __init__(self, prefixes: list[str], weights: Optional[list[float]], seq_length: int, seed: int):
        if weights is not None and len(weights) != len(prefixes):
            raise ValueError(f"data.weights has {len(weights)} entries for {len(prefixes)} data.paths")
        self.streams = [TokenStream(p) for p in prefixes]
        w = np.asarray(weights if weights is not None else [1.0] * len(prefixes), dtype=np.float64)
        self.weights = w / w.sum()
        self.seq_length, self.seed = seq_length, seed
        self.windows = []
        for s in self.streams:
            n = (s.num_tokens - 1) // seq_length
            if n < 1:
                raise ValueError(f"{s.prefix}: {s.num_tokens} tokens cannot fill one sample of {seq_length + 1}")
            self.windows.append(n)
        self._choice: list[tuple[int, int]] = []  # sample i -> (dataset, its j-th sample)
        self._counts = np.zeros(len(self.streams), dtype=np.int64)

    def _assign(self, upto: int) -> None:
        while len(self._choice) <= upto:
            i = len(self._choice)
            d = int(np.argmax(self.weights * (i + 1) - self._counts))
            self._choice.append((d, int(self._counts[d])))
            self._counts[d] += 1

    def _window_index(self, d: int, j: int) -> int:
        epoch, k = divmod(j, self.windows[d])
        perm = np.random.default_rng([self.seed, d, epoch]).permutation(self.windows[d])
        return int(perm[k])

    def sample(self, i: int) -> np.ndarray:
        self._assign(i)
        d, j = self._choice[i]
        w = self._window_index(d, j)
        return self.streams[d].window(w * self.seq_length, self.seq_length + 1)

    def batch(self, first_sample: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Global batch of samples [first, first+size): input ids and next-token labels [size, s]."""
        tokens = torch.from_numpy(np.stack([self.sample(first_sample + k) for k in range(size)]))
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
