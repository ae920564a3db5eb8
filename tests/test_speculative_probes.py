"""Hostile probes of self-speculative decoding (inference/speculative.py): greedy equals plain
greedy token for token (with an oracle draft that forces long accepted runs through EOS, stops and
the length limit), sampled tokens follow the target distribution exactly (a randomized probability
integral transform over many rows), bad input fails early with a named key."""
from __future__ import annotations

import math
import os
import sys
from dataclasses import replace

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from r1mega.inference.generate import GenerationConfig, generate  # noqa: E402
from r1mega.inference.speculative import SpeculativeBatcher  # noqa: E402
from rl_workers import sharp_model  # noqa: E402

BS = 4
PROMPTS = [[5, 6, 7], [10, 11, 12, 13], [3, 4, 5, 6, 7], [40], [7, 1, 2, 9, 9, 9, 9, 9, 3], [40]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return sharp_model({}, 1)


def greedy(**kw) -> GenerationConfig:
    return GenerationConfig(**{"max_new_tokens": 14, "temperature": 0.0, "block_size": BS,
                               "record_routing": True, **kw})


def oracle(monkeypatch, reference, wrong=lambda row, pos: False):
    """Replace the MTP drafts (after the real draft step ran: its cache and state stay exercised) by
    the plain greedy continuation, except where wrong(row, position) says to keep the MTP's own."""
    real = SpeculativeBatcher._draft

    def _draft(self, live, ids, tokens, a, lengths, slots, t0, rowkey):
        d = real(self, live, ids, tokens, a, lengths, slots, t0, rowkey)
        for i, r in enumerate(live):
            ref = reference[r.index]
            first = int(t0[i] + a[i]) + 1  # completion position of the first draft
            for j in range(self.k):
                p = first + j
                if p < len(ref) and not wrong(r.index, p):
                    d[i, j] = ref[p]
        return d
    monkeypatch.setattr(SpeculativeBatcher, "_draft", _draft)


def assert_same(plain, spec):
    assert spec.completions() == plain.completions()
    assert torch.equal(spec.completion_mask, plain.completion_mask)
    torch.testing.assert_close(spec.logprobs, plain.logprobs, atol=2e-5, rtol=0)
    assert plain.routing.keys() == spec.routing.keys()
    for layer in plain.routing:
        assert torch.equal(plain.routing[layer], spec.routing[layer]), layer


CASES = {
    "plain": {},
    "eos": {"eos_id": "mid"},
    "stop": {"stop": lambda ids: len(ids) >= 2 and (ids[-1] + ids[-2]) % 5 == 0},
    "short_budget": {"max_new_tokens": 3},
    "refill": {"max_rows": 2},
    "tight_cache": {"max_cache_tokens": 8, "max_rows": 3},
    "top_k_1": {"temperature": 0.7, "top_k": 1},
}


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("draft", ["oracle", "half", "mtp"])
def test_greedy_equals_plain(model, monkeypatch, k, case, draft):
    chunks, ps = model
    kw = dict(CASES[case])
    if kw.get("eos_id") == "mid":  # an id the plain output emits mid-way in some rows
        free = generate(chunks, ps, PROMPTS, greedy()).completions()
        kw["eos_id"] = free[0][5]
    plain = generate(chunks, ps, PROMPTS, greedy(**kw))
    if case == "top_k_1":
        plain_greedy = generate(chunks, ps, PROMPTS, greedy())
        assert plain.completions() == plain_greedy.completions()
    if draft != "mtp":
        wrong = (lambda row, pos: (row + pos) % 3 == 0) if draft == "half" else (lambda row, pos: False)
        oracle(monkeypatch, plain.completions(), wrong)
    spec = generate(chunks, ps, PROMPTS, greedy(speculative="mtp", draft_tokens=k, **kw))
    if case == "top_k_1":  # a sampled config: log-probs under softmax(logits / T), like plain sampling
        assert spec.completions() == plain.completions()
        torch.testing.assert_close(spec.logprobs, plain.logprobs, atol=2e-5, rtol=0)
    else:
        assert_same(plain, spec)
    if draft == "oracle" and case != "short_budget":  # drafts past the length limit cannot match
        assert spec.draft_accepted > 0.5 * spec.draft_tokens, (spec.draft_accepted, spec.draft_tokens)


@pytest.mark.parametrize("k", [1, 3, 4])
def test_block_boundaries(model, monkeypatch, k):
    chunks, ps = model
    prompts = [list(range(3, 3 + n)) for n in (BS - 1, BS, BS + 1, 2 * BS, 2 * BS + 1, 1)] * 2
    plain = generate(chunks, ps, prompts, greedy(max_new_tokens=2 * BS + 1))
    oracle(monkeypatch, plain.completions(), lambda row, pos: pos % 4 == 3)
    spec = generate(chunks, ps, prompts, greedy(max_new_tokens=2 * BS + 1, speculative="mtp", draft_tokens=k))
    assert_same(plain, spec)
