"""Runs inside spawned ranks for tests/test_ckpt_save_errors.py (kept free of transformers)."""
from __future__ import annotations

import resource

from r1mega.config import Config, ParallelConfig, validate
from r1mega.errors import CheckpointError
from r1mega.parallel.layout import build_parallel_state
from r1mega.train.checkpoint import save_checkpoint
from r1mega.train.setup import build_chunks


def save_with_one_rank_full(rank: int, world: int, root: str, full_rank: int) -> str:
    """Save under TP2 (each rank writes its own pieces); `full_rank` may write 100 bytes per file
    only. Returns the CheckpointError every rank should raise ('' when none did)."""
    cfg = validate(Config(parallel=ParallelConfig(tp=2)), world)
    ps = build_parallel_state(cfg.parallel)
    chunks = build_chunks(cfg, ps)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    if rank == full_rank:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, limit[1]))
    try:
        save_checkpoint(root, 1, chunks, None, ps, {})
    except CheckpointError as e:
        return str(e)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)  # the result file the rank writes next
    return ""
