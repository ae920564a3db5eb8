"""`r1mega pretrain` / `r1mega sft`: the training loop, on any layout, launched by torchrun.

    for each step: global batch (a pure function of the sample position)
                   -> pipeline-scheduled forward/backward of the microbatches (lm_step)
                   -> ZeRO-1 AdamW step (skipped on a NaN/Inf gradient) -> routing-bias update
                   -> log, and checkpoint at intervals and at the end
A run resumes from the newest checkpoint in <run_dir>/checkpoints (or train.load) by itself.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, replace


from r1mega.config import Config, ConfigError, validate_training
from r1mega.errors import TrainingError
from r1mega.data.prepare import resolve_data
from r1mega.data.tokenizer import check_fits, load_tokenizer
from r1mega.models.family import family_for
from r1mega.train.checkpoint import find_resume_checkpoint, resume_from, save_checkpoint
from r1mega.train.lm_step import lm_forward_backward
from r1mega.train.metrics_log import MetricsLog
from r1mega.train.moe_balance import moe_layers, update_routing_bias
from r1mega.train.optimizer import DistributedAdamW, lr_at
from r1mega.models.stage import IGNORE_INDEX
from r1mega.train.dsa_stage import index_loss, prepare_stage, set_index_loss_scale
from r1mega.train.setup import build_model, finish_run, fp8_kernels, kernels_scope, own_checkpoint, start_run

H100_BF16_DENSE_TFLOPS = 989.0


def _data(cfg: Config, kind: str):
    from r1mega.data.pretrain import PretrainData
    from r1mega.data.sft import SFTData

    vocab = cfg.active_model.vocab_size
    d = resolve_data(cfg.data, kind, vocab)
    load = cfg.train.load
    if d.tokenizer is None and load and os.path.exists(os.path.join(load, "tokenizer.json")):
        d = replace(d, tokenizer=load)  # the tokenizer r1mega-convert import copied beside the weights
    if kind == "sft" and (len(d.paths) > 1 or d.weights is not None):
        raise ConfigError("data.paths", f"SFT reads one chat JSONL file, got {len(d.paths)} paths"
                          + (" and data.weights" if d.weights is not None else "") + "; concatenate the files")
    if d.tokenizer is None and kind == "sft":
        raise ConfigError("data.tokenizer", "SFT renders chat records and needs a tokenizer")
    if d.tokenizer is not None:
        if not os.path.exists(d.tokenizer):
            raise ConfigError("data.tokenizer", f"{d.tokenizer}: not found")
        tok = load_tokenizer(d.tokenizer)
        check_fits(tok, vocab)
    if kind == "pretrain":
        return PretrainData(d.paths, d.weights, d.seq_length, cfg.seed, vocab)
    return SFTData(d.paths[0], tok, d.seq_length, cfg.seed, d.sft_template)


def _batch(data, kind: str, first: int, size: int) -> dict:
    if kind == "pretrain":
        ids, labels = data.batch(first, size)
        return {"input_ids": ids, "labels": labels}
    return data.batch(first, size)


def train(cfg: Config, kind: str) -> dict:
    """Run (or resume) a training run. Returns {'final_loss', 'steps', 'losses', 'skipped'}."""
    ckpt_root = os.path.join(cfg.train.run_dir, "checkpoints")
    # ranks joined, the model's shapes taken from the checkpoint if the config has none, validated
    run = start_run(cfg, validate_training, own_checkpoint(ckpt_root))
    cfg, ps, world, device = run.cfg, run.ps, run.world, run.device
    t = cfg.train

    # everything a user can get wrong is checked before any weight exists: data, checkpoints, arch
    for key, path in (("train.run_dir", t.run_dir), ("train.run_dir", os.path.join(t.run_dir, "checkpoints"))):
        if os.path.exists(path) and not os.path.isdir(path):
            raise ConfigError(key, f"{path} exists and is not a directory")
    if ps.rank == 0 and cfg.optim.warmup_steps > t.steps:
        print(f"warning: optim.warmup_steps={cfg.optim.warmup_steps} exceeds train.steps={t.steps}: the run ends "
              f"before the learning rate reaches optim.lr={cfg.optim.lr}", file=sys.stderr, flush=True)
    data = _data(cfg, kind)
    family, model_cfg = family_for(cfg)
    model_config = asdict(model_cfg)
    candidates = find_resume_checkpoint(ckpt_root, t.load, model_config, t.allow_arch_change)

    chunks = build_model(cfg, ps, device, run.dtype)
    dsa = prepare_stage(chunks, t.dsa_stage) if t.dsa_stage else []  # DeepSeek-V3.2: freezes before the optimizer
    optimizer = DistributedAdamW(chunks, ps, cfg.optim)

    # the run's own newest checkpoint wins over train.load, so a requeued job continues where it was
    resume, meta = resume_from(candidates, chunks, optimizer, ps, model_config, t.allow_arch_change,
                               t.verify_checkpoint)
    start, consumed = meta.get("step", 0), meta.get("consumed_samples", 0)
    hf_config = meta.get("hf_config")  # an imported model's config.json travels on, so an export reproduces it
    if start >= t.steps:  # nothing left: say so rather than report an empty run
        if ps.rank == 0:
            print(f"run {t.run_dir} is complete: {resume} is at step {start} and train.steps={t.steps}. "
                  f"To train further, raise train.steps (e.g. train.steps={start + t.steps}); "
                  f"to start afresh, choose another train.run_dir.", flush=True)
        finish_run(run)
        return {"final_loss": meta.get("loss"), "steps": start, "losses": [], "skipped": optimizer.skipped,
                "complete": True}
    log = MetricsLog(t.run_dir, t.steps, start, ps.rank == 0, t.wandb_project if t.wandb else None, cfg)
    if resume:
        log.print(f"resumed from {resume} at step {start} (saved under layout {meta.get('layout', 'n/a')})")

    gbs = cfg.data.global_batch_size
    micro = gbs // (ps.dp * cfg.data.micro_batch_size)
    tokens_per_step = gbs * cfg.data.seq_length
    flops_step = family.flops_per_token(model_cfg, cfg.data.seq_length) * tokens_per_step
    peak = t.peak_tflops or (H100_BF16_DENSE_TFLOPS if device.type == "cuda" else None)
    kernels = fp8_kernels(t, log)  # None unless train.fp8
    losses: list[float] = []
    moe_or_mtp = bool(moe_layers(chunks)) or getattr(model_cfg, "num_mtp_layers", 0) > 0
    in_a_row, last_saved = 0, resume  # consecutive non-finite steps; newest checkpoint on disk
    chunks.train()
    for step in range(start, t.steps):
        t0 = time.perf_counter()
        batch = {k: v.to(device) for k, v in _batch(data, kind, consumed, gbs).items()}
        lr = lr_at(step, t.steps, cfg.optim)
        if dsa:
            num_tokens = int((batch["labels"] != IGNORE_INDEX).sum())
            set_index_loss_scale(dsa, t.index_loss_weight, num_tokens)
        with kernels_scope(kernels):
            res = lm_forward_backward(
                chunks, ps, batch["input_ids"], batch["labels"], micro, t.mtp_weight,
                attn_mask=batch.get("attn_mask"), position_ids=batch.get("position_ids"),
                schedule=t.schedule, balance_alpha=t.balance_alpha, reduce_dp=False)
        if math.isfinite(res.loss):
            grad_norm, skipped = optimizer.step(lr)
        else:
            grad_norm, skipped = float("nan"), True
            optimizer.skipped += 1
        frozen = t.dsa_stage == "dense_warmup"  # the main model, routing biases included, stays as it is
        balance = update_routing_bias(chunks, ps, 0.0 if skipped or frozen else t.bias_update_rate)
        optimizer.zero_grad(chunks)
        consumed += gbs
        dt = time.perf_counter() - t0
        losses.append(res.loss)
        metrics = {"loss": res.loss, "mtp_loss": res.mtp_loss, "lr": lr, "grad_norm": grad_norm,
                   "skipped_steps": optimizer.skipped, "tok/s": tokens_per_step / dt,
                   "tflops_per_device": flops_step / dt / world / 1e12,
                   "expert_max_load": balance["max_load_ratio"], "expert_min_load": balance["min_load_ratio"],
                   "balance_loss": balance["balance_loss"]}
        if dsa:
            metrics["index_loss"] = index_loss(dsa, ps, num_tokens)
        if not moe_or_mtp:  # e.g. a dense student: no MTP or expert statistics to report
            for k in ("mtp_loss", "expert_max_load", "expert_min_load", "balance_loss"):
                metrics.pop(k)
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
                                         {"consumed_samples": consumed, "kind": kind, "family": family.name,
                                          "model_config": model_config, "hf_config": hf_config,
                                          "loss": res.loss if math.isfinite(res.loss) else None})
    log.close()
    final = losses[-1] if losses else float("nan")
    if ps.rank == 0:
        print(f"final_loss={final:.6f} steps={t.steps}", flush=True)
    result = {"final_loss": final, "steps": t.steps, "losses": losses, "skipped": optimizer.skipped}
    finish_run(run)
    return result
