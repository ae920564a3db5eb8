"""`r1mega pretrain` / `r1mega sft`: the training loop, on any layout, launched by torchrun.

    for each step: global batch (a pure function of the sample position)
                   -> pipeline-scheduled forward/backward of the microbatches (lm_step)
                   -> ZeRO-1 AdamW step (skipped on a NaN/Inf gradient) -> routing-bias update
                   -> log, and checkpoint at intervals and at the end
A run resumes from the newest checkpoint in <run_dir>/checkpoints (or train.load) by itself.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
import zlib
from dataclasses import asdict

import torch
import torch.distributed as dist

from r1mega.config import Config, ConfigError, validate_training
from r1mega.errors import TrainingError
from r1mega.data.prepare import resolve_data
from r1mega.data.tokenizer import Tokenizer
from r1mega.kernels import use_backend
from r1mega.kernels.fp8_backend import fp8_backend
from r1mega.models.deepseek_v3.hf_weights import param_slices
from r1mega.models.deepseek_v3.model import DeepseekV3
from r1mega.models.deepseek_v3.params import flops_per_token
from r1mega.parallel.layout import (
    ParallelState, build_parallel_state, default_device, join_ranks, single_process_state,
)
from r1mega.train.checkpoint import find_resume_checkpoint, resume_from, save_checkpoint
from r1mega.train.lm_step import lm_forward_backward
from r1mega.train.metrics_log import MetricsLog
from r1mega.train.moe_balance import update_routing_bias
from r1mega.train.optimizer import DistributedAdamW, lr_at

H100_BF16_DENSE_TFLOPS = 989.0


def build_chunks(cfg: Config, ps: ParallelState) -> torch.nn.ModuleList:
    """This rank's model chunks (one per virtual pipeline stage)."""
    v = cfg.train.virtual_stages
    return torch.nn.ModuleList(
        DeepseekV3(cfg.model, ps, cfg.parallel.pp_layers if v == 1 else None,
                   stage=c * ps.pp + ps.r("pp"), num_stages=ps.pp * v)
        for c in range(v))


def place(chunks: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move to the device and weight dtype; the routing selection bias stays float32."""
    chunks.to(device=device, dtype=dtype)
    for m in chunks.modules():
        if getattr(m, "e_score_correction_bias", None) is not None:
            m.e_score_correction_bias.data = m.e_score_correction_bias.float()
    return chunks


@torch.no_grad()
def init_weights(chunks: torch.nn.ModuleList, seed: int) -> None:
    """Layout-independent initialisation: each tensor is drawn whole from a generator seeded by
    (seed, its checkpoint name), then sliced, so every layout starts from the same model."""
    std = chunks[0].cfg.initializer_range
    for chunk in chunks:
        for spec in param_slices(chunk):
            leaf = spec.key.rsplit(".", 1)[-1] if "." in spec.key else spec.key
            if "norm" in spec.key:
                spec.local.fill_(1.0)
            elif leaf in ("bias", "e_score_correction_bias"):
                spec.local.zero_()
            else:
                # the last stage's embedding copy (MTP under PP) starts equal to the embedding
                key = "model.embed_tokens.weight" if getattr(spec.param, "is_mtp_copy", False) else spec.key
                g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
                full = torch.randn(spec.full_shape, generator=g) * std
                if spec.dim is not None:
                    full = full.chunk(spec.parts, dim=spec.dim)[spec.rank]
                spec.local.copy_(full)


def _data(cfg: Config, kind: str):
    from r1mega.data.pretrain import PretrainData
    from r1mega.data.sft import SFTData

    d = resolve_data(cfg.data, kind, cfg.model.vocab_size)
    if kind == "sft" and (len(d.paths) > 1 or d.weights is not None):
        raise ConfigError("data.paths", f"SFT reads one chat JSONL file, got {len(d.paths)} paths"
                          + (" and data.weights" if d.weights is not None else "") + "; concatenate the files")
    if d.tokenizer is None and kind == "sft":
        raise ConfigError("data.tokenizer", "SFT renders chat records and needs a tokenizer")
    if d.tokenizer is not None:
        if not os.path.exists(d.tokenizer):
            raise ConfigError("data.tokenizer", f"{d.tokenizer}: not found")
        tok = Tokenizer(d.tokenizer)
        if tok.vocab_size > cfg.model.vocab_size:
            raise ConfigError("data.tokenizer", f"{d.tokenizer} has {tok.vocab_size} tokens but "
                              f"model.vocab_size is {cfg.model.vocab_size}")
    if kind == "pretrain":
        return PretrainData(d.paths, d.weights, d.seq_length, cfg.seed, cfg.model.vocab_size)
    return SFTData(d.paths[0], tok, d.seq_length, cfg.seed)


def _batch(data, kind: str, first: int, size: int) -> dict:
    if kind == "pretrain":
        ids, labels = data.batch(first, size)
        return {"input_ids": ids, "labels": labels}
    return data.batch(first, size)


def train(cfg: Config, kind: str) -> dict:
    """Run (or resume) a training run. Returns {'final_loss', 'steps', 'losses', 'skipped'}."""
    distributed, owns_group, world = join_ranks()
    cfg = validate_training(cfg, world)  # before any weight exists
    ps = build_parallel_state(cfg.parallel) if distributed else single_process_state()
    torch.manual_seed(cfg.seed)
    device = default_device()
    t = cfg.train
    dtype = getattr(torch, t.dtype)

    # everything a user can get wrong is checked before any weight exists: data, checkpoints, arch
    data = _data(cfg, kind)
    ckpt_root = os.path.join(t.run_dir, "checkpoints")
    model_config = asdict(cfg.model)
    candidates = find_resume_checkpoint(ckpt_root, t.load, model_config, t.allow_arch_change)

    chunks = build_chunks(cfg, ps)
    init_weights(chunks, cfg.seed)
    place(chunks, device, dtype)
    optimizer = DistributedAdamW(chunks, ps, cfg.optim)

    # the run's own newest checkpoint wins over train.load, so a requeued job continues where it was
    resume, meta = resume_from(candidates, chunks, optimizer, ps, model_config, t.allow_arch_change,
                               t.verify_checkpoint)
    start, consumed = meta.get("step", 0), meta.get("consumed_samples", 0)
    if start >= t.steps:  # nothing left: say so rather than report an empty run
        if ps.rank == 0:
            print(f"run {t.run_dir} is complete: {resume} is at step {start} and train.steps={t.steps}. "
                  f"To train further, raise train.steps (e.g. train.steps={start + t.steps}); "
                  f"to start afresh, choose another train.run_dir.", flush=True)
        if distributed and owns_group:
            dist.destroy_process_group()
        return {"final_loss": meta.get("loss"), "steps": start, "losses": [], "skipped": optimizer.skipped,
                "complete": True}
    log = MetricsLog(t.run_dir, t.steps, start, ps.rank == 0, t.wandb_project if t.wandb else None, cfg)
    if resume:
        log.print(f"resumed from {resume} at step {start} (saved under layout {meta.get('layout', 'n/a')})")

    gbs = cfg.data.global_batch_size
    micro = gbs // (ps.dp * cfg.data.micro_batch_size)
    tokens_per_step = gbs * cfg.data.seq_length
    flops_step = flops_per_token(cfg.model, cfg.data.seq_length) * tokens_per_step
    peak = t.peak_tflops or (H100_BF16_DENSE_TFLOPS if device.type == "cuda" else None)
    # FP8 GEMMs for the linears and routed experts (the head, router, norms, attention core stay high precision)
    kernels = fp8_backend(t.fp8, t.fp8_backend, t.fp8_block, t.fp8_pow2_scales)
    if kernels is not None:
        log.print(f"FP8 {t.fp8} (block {t.fp8_block}{', power-of-2 scales' if t.fp8_pow2_scales else ''}) "
                  f"through the {kernels.name} backend")
    losses: list[float] = []
    in_a_row, last_saved = 0, resume  # consecutive non-finite steps; newest checkpoint on disk
    chunks.train()
    for step in range(start, t.steps):
        t0 = time.perf_counter()
        batch = {k: v.to(device) for k, v in _batch(data, kind, consumed, gbs).items()}
        lr = lr_at(step, t.steps, cfg.optim)
        with use_backend(kernels) if kernels is not None else contextlib.nullcontext():
            res = lm_forward_backward(
                chunks, ps, batch["input_ids"], batch["labels"], micro, t.mtp_weight,
                attn_mask=batch.get("attn_mask"), position_ids=batch.get("position_ids"),
                schedule=t.schedule, balance_alpha=t.balance_alpha, reduce_dp=False)
        if math.isfinite(res.loss):
            grad_norm, skipped = optimizer.step(lr)
        else:
            grad_norm, skipped = float("nan"), True
            optimizer.skipped += 1
        balance = update_routing_bias(chunks, ps, 0.0 if skipped else t.bias_update_rate)
        optimizer.zero_grad(chunks)
        consumed += gbs
        dt = time.perf_counter() - t0
        losses.append(res.loss)
        metrics = {"loss": res.loss, "mtp_loss": res.mtp_loss, "lr": lr, "grad_norm": grad_norm,
                   "skipped_steps": optimizer.skipped, "tok/s": tokens_per_step / dt,
                   "tflops_per_device": flops_step / dt / world / 1e12,
                   "expert_max_load": balance["max_load_ratio"], "expert_min_load": balance["min_load_ratio"],
                   "balance_loss": balance["balance_loss"]}
        if peak:
            metrics["mfu"] = metrics["tflops_per_device"] / peak
        if skipped:
            log.print(f"step {step + 1}: non-finite loss or gradient, update skipped "
                      f"({optimizer.skipped} so far)")
        log.log(step + 1, metrics, echo=(step + 1) % t.log_interval == 0 or step + 1 == t.steps)
        in_a_row = in_a_row + 1 if skipped else 0  # the skip decision is the same on every rank
        if t.max_consecutive_skips and in_a_row >= t.max_consecutive_skips:
            log.close()
            raise TrainingError(
                f"steps {step + 2 - in_a_row}..{step + 1} all had a non-finite loss or gradient "
                f"(train.max_consecutive_skips={t.max_consecutive_skips}); stopped without saving. "
                f"The newest checkpoint is {last_saved or 'none'}; check the data and lower optim.lr, "
                f"or raise train.max_consecutive_skips")
        last = step + 1 == t.steps
        if last or (t.save_interval and (step + 1) % t.save_interval == 0):
            last_saved = save_checkpoint(ckpt_root, step + 1, chunks, optimizer, ps,
                                         {"consumed_samples": consumed, "kind": kind, "model_config": model_config,
                                          "loss": res.loss if math.isfinite(res.loss) else None})
    log.close()
    final = losses[-1] if losses else float("nan")
    if ps.rank == 0:
        print(f"final_loss={final:.6f} steps={t.steps}", flush=True)
    result = {"final_loss": final, "steps": t.steps, "losses": losses, "skipped": optimizer.skipped}
    if distributed and owns_group:
        dist.destroy_process_group()
    return result
