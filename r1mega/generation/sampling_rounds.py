"""k samples per problem on the sharded model, in rounds that every rank runs together.

A round takes the next problems, expands them to problems x k rows, splits the rows over the DP
replicas (contiguous shares; a replica with fewer or no rows joins the others' forwards with empty
work, as expert parallelism across DP requires) and generates with `inference.generate`
(continuous batching: the k samples of a problem share its prompt's prefill). One rank per
replica decodes its rows; rank 0 gathers them and yields each problem with its k samples.

Sampling noise is keyed by (seed, problem id, sample index, position): a sample's tokens do not
depend on the round it falls in, so a resumed run draws exactly the samples of an uninterrupted
one under any --problems-per-round, and any layout draws the same tokens (`inference/sampling.py`).
A problem id enters the key through a 64-bit BLAKE2b digest (`NOISE_KEY`); output directories made
before it keep the 32-bit CRC scheme they were drawn with (`SamplingParams.noise_key`, recorded in
the store's meta.json by `generation/run.py`).
"""
from __future__ import annotations

import hashlib
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from r1mega.config import MIN_TEMPERATURE
from r1mega.data.prompts import cut_after_stop, encode_prompt
from r1mega.data.tokenizer import Tokenizer
from r1mega.errors import ConfigError
from r1mega.inference.generate import GenerationConfig, generate
from r1mega.parallel.layout import ParallelState


@dataclass
class SamplingParams:
    samples: int = 1
    temperature: float = 0.6  # DeepSeek-R1's evaluation setting
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = 32768
    seed: int = 0
    stop: list[str] = field(default_factory=list)  # stop strings (EOS always stops)
    speculative: Optional[str] = None  # "mtp": the model's MTP module drafts (inference/speculative.py)
    draft_tokens: int = 1
    compile_decode: bool = False  # few-row decoding steps compiled (GenerationConfig.compile_decode)
    # how a problem id keys the noise: set from the output store (an older store keeps its scheme), so
    # not one of the settings `recorded` compares on a resume
    noise_key: str = "blake2b64"

    def recorded(self) -> dict:
        """What a store's meta.json keeps (the speculative keys only when set: older stores resume)."""
        d = asdict(self)
        d.pop("noise_key")
        if not self.speculative:
            d.pop("speculative"), d.pop("draft_tokens")
        if not self.compile_decode:  # (kept when on: its samples are not bitwise the eager step's)
            d.pop("compile_decode")
        return d

    def check(self) -> None:
        if self.samples < 1:
            raise ConfigError("--samples", f"must be >= 1, got {self.samples}")
        if self.max_new_tokens < 1:
            raise ConfigError("--max-new-tokens", f"must be >= 1, got {self.max_new_tokens}")
        if not 0 < self.top_p <= 1:
            raise ConfigError("--top-p", f"must be in (0, 1], got {self.top_p}")
        if not (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature):
            raise ConfigError("--temperature", f"must be 0 (greedy) or >= {MIN_TEMPERATURE:g} (a smaller one "
                                               f"overflows logits / T in float32), got {self.temperature}")
        if self.noise_key not in NOISE_KEYS:
            raise ConfigError("noise_key", f"expected one of {sorted(NOISE_KEYS)}, got {self.noise_key!r}")
        if self.speculative not in (None, "mtp"):
            raise ConfigError("--speculative", f"expected mtp, got {self.speculative!r}")
        from r1mega.inference.speculative import MAX_DRAFT_TOKENS

        if self.draft_tokens < 1:
            raise ConfigError("--draft-tokens", f"must be >= 1, got {self.draft_tokens}")
        if self.draft_tokens > MAX_DRAFT_TOKENS:
            raise ConfigError("--draft-tokens", f"must be <= {MAX_DRAFT_TOKENS}, got {self.draft_tokens}")


@dataclass
class Sample:
    index: int
    completion: str  # a stopped one ends with its stop string (its last token may go further: completion_ids)
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # eos | stop (a stop string) | length
    prompt_ids: Optional[list[int]] = None  # the tokens the model was given ...
    completion_ids: Optional[list[int]] = None  # ... and the ones it sampled (EOS included when it ended so)


def _stop_check(tok: Tokenizer, stops: list[str]):
    if not stops:
        return None
    tail = max(32, 4 * max(len(s) for s in stops))  # decode only the end: a stop string fits in it

    def hit(ids: list[int]) -> bool:
        text = tok.decode_continuation(ids[-tail:])  # as it reads after what came before
        return any(s in text for s in stops)
    return hit


def _finish(ids: list[int], text: str, tok: Tokenizer, params: SamplingParams) -> tuple[str, str]:
    """(completion text without EOS, or up to the end of its stop string; finish reason). The ids stay
    as sampled: a stop string that ends inside the last token leaves the token's rest in them only."""
    if ids and ids[-1] in tok.eos_ids:
        return tok.decode_continuation(ids[:-1]), "eos"
    if any(s in text for s in params.stop):
        return cut_after_stop(text, params.stop), "stop"
    return text, "length"


_M64 = (1 << 64) - 1


def _blake2b64(problem_id: str, sample: int) -> int:
    """The id's 64-bit BLAKE2b digest plus the sample index (mod 2^64, as a signed int64): two of 50K
    ids land within k samples of each other with probability ~ 50K^2 k / 2^64 (1e-9 at k = 16)."""
    h = int.from_bytes(hashlib.blake2b(str(problem_id).encode(), digest_size=8).digest(), "little")
    k = (h + sample) & _M64
    return k - (1 << 64) if k >> 63 else k


def _crc32(problem_id: str, sample: int) -> int:
    """The first scheme: the id's CRC-32 shifted past the sample index. Two of 50K ids share a CRC
    (and so all their noise) with probability ~25%; kept for directories drawn with it."""
    return (zlib.crc32(str(problem_id).encode()) << 24) + sample


NOISE_KEYS = {"blake2b64": _blake2b64, "crc32": _crc32}
NOISE_KEY = "blake2b64"  # what a new output directory records
LEGACY_NOISE_KEY = "crc32"  # a directory whose meta.json names none was drawn with this


def sample_key(problem_id: str, sample: int, scheme: str = NOISE_KEY) -> int:
    """The noise key of sample `sample` of a problem (an int64) under `scheme`."""
    return NOISE_KEYS[scheme](problem_id, sample)


def generate_rounds(chunks, ps: ParallelState, tok: Tokenizer, problems: list[dict], prompts: list[str],
                    params: SamplingParams, problems_per_round: int, template: Optional[str] = None
                    ) -> Iterator[tuple[Optional[list[tuple[dict, list[Sample]]]], dict]]:
    """Yields (rank 0: [(problem, its k samples)], else None; stats) per round. Collective: every
    rank passes the same problems."""
    params.check()
    k = params.samples
    # template: how the prompts were rendered, so they are posed as GRPO poses them (BOS where the
    # tokenizer adds one); None: the texts are encoded as they are
    encoded = [tok.encode(p) if template is None else encode_prompt(tok, p, template) for p in prompts]
    stop = _stop_check(tok, params.stop)
    for at in range(0, len(problems), problems_per_round):
        t0 = time.perf_counter()
        batch = list(range(at, min(at + problems_per_round, len(problems))))
        rows = [(p, s) for p in batch for s in range(k)]
        d = ps.r("dp")
        mine = rows[d * len(rows) // ps.dp:(d + 1) * len(rows) // ps.dp]
        gen = GenerationConfig(params.max_new_tokens, params.temperature, params.top_p, params.top_k, tok.eos_id,
                               stop, seed=params.seed, vocab_size=tok.vocab_size, speculative=params.speculative,
                               draft_tokens=params.draft_tokens, eos_ids=tok.eos_ids,
                               compile_decode=params.compile_decode)
        keys = torch.tensor([sample_key(problems[p]["id"], s, params.noise_key) for p, s in mine], dtype=torch.long)
        rollout = generate(chunks, ps, [encoded[p] for p, _ in mine], gen, rows=keys)
        out = None
        if ps.r("tp") == 0 and ps.r("pp") == 0:
            out = []
            for (p, s), ids in zip(mine, rollout.completions()):
                text, reason = _finish(ids, tok.decode_continuation(ids), tok, params)  # the text after the prompt
                out.append((p, Sample(s, text, len(encoded[p]), len(ids), reason, encoded[p], list(ids))))
        parts = [None] * ps.world if ps.rank == 0 else None
        if ps.world > 1:
            dist.gather_object(out, parts, dst=0)
        else:
            parts = [out]
        stats = {"seconds": time.perf_counter() - t0}
        if ps.rank != 0:
            yield None, stats
            continue
        by_problem: dict[int, list[Sample]] = {p: [] for p in batch}
        for part in parts:
            for p, sample in part or []:
                by_problem[p].append(sample)
        results = []
        for p in batch:
            samples = sorted(by_problem[p], key=lambda x: x.index)
            assert [x.index for x in samples] == list(range(k)), f"problem {p}: samples {[x.index for x in samples]}"
            results.append((problems[p], samples))
        stats["completion_tokens"] = sum(x.completion_tokens for _, ss in results for x in ss)
        yield results, stats
