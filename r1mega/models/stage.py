"""What every model family's pipeline stage shares: the stage's layers, its output, the token loss.

A stage module is called as `stage(input_ids, hidden=..., **Microbatch.stage_inputs())` and
exposes `is_first`, `is_last`, `layer_ids`, `hidden_size`, `vocab_size` and `new_kv_cache(...)`,
so the pipeline, the trainer and generation never need to know which family it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from r1mega.parallel.layout import ParallelState
from r1mega.parallel.vocab_parallel import vocab_parallel_cross_entropy

IGNORE_INDEX = -100


def stage_layers(num_layers: int, pp: int, stage: int, pp_layers: Optional[list[int]] = None) -> range:
    """Layer indices of pipeline stage `stage`. Even split; extra layers go to the earlier stages,
    since the last stage also carries the head (and DeepSeek's MTP modules)."""
    counts = pp_layers or [num_layers // pp + (1 if i < num_layers % pp else 0) for i in range(pp)]
    start = sum(counts[:stage])
    return range(start, start + counts[stage])


def most_stage_layers(num_layers: int, pp: int, pp_layers: Optional[list[int]] = None) -> int:
    """Decoder layers of the pipeline stage holding the most (what a per-layer size costs its GPU)."""
    return max(len(stage_layers(num_layers, pp, stage, pp_layers)) for stage in range(pp))


def place_stage(module, cfg, ps: ParallelState, pp_layers: Optional[list[int]], stage: Optional[int],
                num_stages: Optional[int]) -> None:
    """Set where a family's stage module sits in the pipeline: cfg/ps, stage (default: this rank's pp
    rank) of num_stages (default: pp), is_first/is_last, its layer_ids, and hidden/vocab sizes."""
    module.cfg, module.ps = cfg, ps
    module.stage = ps.r("pp") if stage is None else stage
    module.num_stages = ps.pp if num_stages is None else num_stages
    module.is_first = module.stage == 0
    module.is_last = module.stage == module.num_stages - 1
    module.layer_ids = stage_layers(cfg.num_layers, module.num_stages, module.stage, pp_layers)
    module.hidden_size, module.vocab_size = cfg.hidden_size, cfg.vocab_size


@dataclass
class StageOutput:
    hidden: Optional[torch.Tensor] = None  # [s_local, b, D] to send on (non-last stages)
    logits: Optional[torch.Tensor] = None  # [s, b, V/tp] vocab-sharded (last stage)
    token_loss: Optional[torch.Tensor] = None  # [b, s] per-token CE, 0 where ignored
    mtp_token_loss: list[torch.Tensor] = field(default_factory=list)  # per MTP depth, [b, s]


def _document_ids(attn_mask) -> Optional[torch.Tensor]:
    """attn_mask when it holds document ids [b, s] (not a dense bool mask [b, 1, s, s], not None)."""
    ids = torch.is_tensor(attn_mask) and attn_mask.dim() == 2 and not attn_mask.is_floating_point()
    return attn_mask if ids else None


def mtp_labels(labels: torch.Tensor, attn_mask, k: int) -> torch.Tensor:
    """An MTP module's labels at depth k: position i, given token i + k, predicts labels[i + k]; ignored
    where token i + k is in another document than position i (packing: the next document's, whose
    tokens position i must not learn from; a row of its own has none there)."""
    out = shift_left(labels, k, IGNORE_INDEX)
    docs = _document_ids(attn_mask)
    return out if docs is None else out.masked_fill(shift_left(docs, k, 0) != docs, IGNORE_INDEX)


def load_counted(counted: Optional[torch.Tensor], attn_mask, k: int = 0) -> Optional[torch.Tensor]:
    """bool [b, s]: the tokens whose expert choices a training step counts as load (the aux-loss-free
    routing-bias update and the load metrics), so that the loads do not depend on how a batch was
    padded or packed. `counted`: the batch's own choice (GRPO: the tokens of the sequences it trains
    on); else, with document ids, every token but the pad slots (negative ids: left padding, packing's
    unused slots, SFT's trailing padding); None: every token. For an MTP module at depth k only
    positions whose token k ahead is counted and in the same document: elsewhere its input holds the
    next document's, or a pad's, token, which the layout decides."""
    docs = _document_ids(attn_mask)
    if counted is None and docs is not None:
        counted = docs >= 0
    if counted is None or k == 0:
        return counted
    ahead = shift_left(counted, k, False)
    return counted & ahead & (shift_left(docs, k, 0) == docs) if docs is not None else counted & ahead


def stage_load_counted(stage, counted: Optional[torch.Tensor], attn_mask, local: Optional[torch.Tensor] = None,
                       k: int = 0) -> Optional[torch.Tensor]:
    """`load_counted` for one stage forward: only in training (None otherwise), built on whole rows
    (attn_mask before the CP cut: an MTP depth looks k tokens ahead), then cut to this rank's CP chunks
    (`local`: keep_local_tokens' index)."""
    c = load_counted(counted, attn_mask, k) if stage.training else None
    return c if c is None or local is None else c[:, local]


def shift_left(t: torch.Tensor, k: int, fill: int) -> torch.Tensor:
    """t[:, i] <- t[:, i + k], the last k columns filled."""
    if k == 0:
        return t
    out = torch.full_like(t, fill)
    out[:, :-k] = t[:, k:]
    return out


def token_loss(logits: torch.Tensor, labels: torch.Tensor, ps: ParallelState) -> torch.Tensor:
    """Per-token cross-entropy [b, s] from vocab-sharded logits [s, b, V/tp]; 0 where ignored."""
    loss = vocab_parallel_cross_entropy(logits, labels.t(), ps).t()
    return loss.masked_fill(labels == IGNORE_INDEX, 0.0)


def check_sequence_parallel(s: int, ps: ParallelState) -> None:
    if ps.sp and s % ps.tp:
        raise ValueError(f"sequence parallel: sequence length {s} is not divisible by tp={ps.tp}")
