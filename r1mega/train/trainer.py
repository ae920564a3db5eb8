"""`r1mega pretrain` / `r1mega sft`: the training loop, on any layout, launched by torchrun; its data
(`training_data`: the dataset and tokenizer of the `data:` section) and the data a resume must read again.

    for each step: global batch (a pure function of the sample position)
                   -> pipeline-scheduled forward/backward of the microbatches (lm_step)
                   -> ZeRO-1 AdamW step (skipped on a NaN/Inf gradient) -> routing-bias update
                   -> log, and checkpoint at intervals and at the end
A run resumes from the newest checkpoint in <run_dir>/checkpoints (or train.load) by itself; a
train.load made by another kind of run (SFT of a pretrained, RL or imported model) gives only its
weights: the run starts at step 0 with fresh optimizer moments.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import replace
from typing import Optional

import torch.distributed as dist

from r1mega.config import Config, ConfigError, DataConfig, validate_training
from r1mega.data.pretrain import PretrainData
from r1mega.data.synthetic import resolve_data
from r1mega.data.tokenizer import check_fits, load_tokenizer
from r1mega.errors import DataError
from r1mega.output_dir import release
from r1mega.train.checkpoint import find_resume_checkpoint, in_run, resume_from, run_meta, save_checkpoint
from r1mega.kernels.fp8_backend import fp8_kernels, kernels_scope
from r1mega.train.lm_step import lm_forward_backward
from r1mega.train.metrics_log import MetricsLog
from r1mega.train.optimizer import DistributedAdamW, SkipGuard, lr_at
from r1mega.train.setup import Run, build_model, claim_run_dir, finish_run, own_checkpoint, start_run

H100_BF16_DENSE_TFLOPS = 989.0


def train(cfg: Config, kind: str) -> dict:
    """Run (or resume) a training run. Returns {'final_loss', 'steps', 'losses', 'skipped'}."""
    try:
        return _train(cfg, kind)
    finally:
        release(cfg.train.run_dir)  # the run directory's lock, however the run ended


def training_data(cfg: DataConfig, kind: str, vocab_size: int, seed: int, load: Optional[str] = None):
    """(the dataset of a pretrain or SFT run ("pretrain" | "sft"), whose `batch(first, size)` gives a
    global batch as the model's inputs; the path of its tokenizer, None when there is none), resolved
    once. The tokenizer: data.tokenizer, the synthetic corpus's, else the one in `load`, the checkpoint
    the run starts from (r1mega-convert import and every checkpoint keep its files)."""
    from r1mega.data.sft import SFTData

    d = resolve_data(cfg, kind, vocab_size)
    if d.tokenizer is None and load and os.path.exists(os.path.join(load, "tokenizer.json")):
        d = replace(d, tokenizer=load)
    if kind == "sft" and (len(d.paths) > 1 or d.weights is not None):
        raise ConfigError("data.paths", f"SFT reads one chat JSONL file, got {len(d.paths)} paths"
                          + (" and data.weights" if d.weights is not None else "") + "; concatenate the files")
    if d.tokenizer is None and kind == "sft":
        raise ConfigError("data.tokenizer", "SFT renders chat records and needs a tokenizer")
    if d.tokenizer is not None:
        if not os.path.exists(d.tokenizer):
            raise ConfigError("data.tokenizer", f"{d.tokenizer}: not found")
        tok = load_tokenizer(d.tokenizer)
        check_fits(tok, vocab_size)
    if kind == "pretrain":
        return PretrainData(d.paths, d.weights, d.seq_length, seed, vocab_size), d.tokenizer
    return SFTData(d.paths[0], tok, d.seq_length, seed, d.sft_template), d.tokenizer


def check_same_sft_data(meta: dict, record: dict, where: str, how: str) -> None:
    """An SFT run resumed from its own checkpoint reads the data file it was saved with, packed into the
    same rows: the saved position (consumed rows) means nothing in another file, or in the same file
    rendered by another template or tokenizer. Checkpoints from before each was recorded have none."""
    saved = meta.get("data_sha256")
    if saved is not None and saved != record["data_sha256"]:
        raise ConfigError("data.paths", f"{where} was saved at a position in other SFT data (the file's content "
                          f"differs); " + how)
    saved_template = meta.get("data_sft_template")
    if saved_template is not None and saved_template != record["data_sft_template"]:
        raise ConfigError("data.sft_template", f"{where} was saved on rows rendered with data.sft_template="
                          f"{saved_template}, this run renders {record['data_sft_template']}; " + how)
    if meta.get("data_rows") not in (None, record["data_rows"]):
        raise ConfigError("data.tokenizer", f"{where} was saved on other rows of this file: the tokenizer "
                          f"(its vocabulary, chat template or end-of-sequence token) differs; " + how)


def check_same_data(meta: dict, record: dict, seq_length: int, where: str) -> None:
    """A run resumed from a checkpoint of its kind (its own, or another run's through train.load: both
    continue at the saved step and data position) reads the samples it was saved among: the same files
    (`record`, this run's data_record) in the same blend and order, cut at the same seq_length.
    Checkpoints from before these were recorded have nothing to compare."""
    how = (f"resuming would continue at step {meta.get('step')}'s position in other samples. Give the same data, "
           f"or set train.allow_data_change=true to continue on it deliberately")
    saved_seed = meta.get("data_seed")  # it orders the samples: another reads others at the saved position
    if saved_seed is not None and saved_seed != record["data_seed"]:
        raise ConfigError("seed", f"{where} was saved at seed={saved_seed}, not {record['data_seed']}; " + how)
    saved_len = meta.get("data_seq_length")
    if saved_len is not None and saved_len != seq_length:
        raise ConfigError("data.seq_length", f"{where} was saved at data.seq_length={saved_len}, not {seq_length}; "
                          + how)
    if "data_sha256" in record:
        check_same_sft_data(meta, record, where, how)
        return
    saved = meta.get("data_files")
    if saved is None:
        return
    mine = record["data_files"]
    if len(saved) != len(mine):
        raise ConfigError("data.paths", f"{where} was saved on {len(saved)} data files, this run gives {len(mine)}; "
                          + how)
    for old, new in zip(saved, mine):
        for ext in ("idx", "bin"):
            if old.get(ext) != new[ext]:
                raise ConfigError("data.paths", f"{new['prefix']}.{ext} differs from the file {where} was trained "
                                  f"on ({old.get('prefix')}.{ext}: size, header or sampled content); " + how)
    blend = meta.get("data_weights")  # which file each sample position reads (normalised)
    if blend is not None and not all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(blend, record["data_weights"])):
        raise ConfigError("data.weights", f"{where} was saved blending its data files as "
                          f"{[round(w, 6) for w in blend]}, this run as {[round(w, 6) for w in record['data_weights']]}; "
                          + how)


def _on_rank0(ps, fn):
    """fn() on rank 0 only (its value there, None elsewhere): a user error it raises is raised on
    every rank, so none waits for rank 0 in a collective."""
    value, error = None, None
    if ps.rank == 0:
        try:
            value = fn()
        except ConfigError as e:
            error = ("config", e.key, e.message)
        except DataError as e:
            error = ("data", str(e))
    if ps.world > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise ConfigError(*error[1:]) if error[0] == "config" else DataError(error[1])
    return value


def data_record(ps, kind: str, data) -> dict:
    """What a resume checks it reads again (check_same_data), saved with every checkpoint: the seed that
    orders the samples, and the SFT file's digest, its resolved template and a digest of the rows it
    packs into, or each pretraining .bin/.idx by size, header and sampled content (read on rank 0, which
    writes meta.json; None elsewhere) and their blend (data.weights, normalised)."""
    if kind == "sft":
        return {"data_seed": data.seed, "data_sha256": data.digest, "data_sft_template": data.template,
                "data_rows": data.rows_digest}
    return {"data_seed": data.seed, "data_files": _on_rank0(ps, data.fingerprints),
            "data_weights": [float(w) for w in data.weights]}


def _train(cfg: Config, kind: str) -> dict:
    ckpt_root = os.path.join(cfg.train.run_dir, "checkpoints")
    # ranks joined, the model's shapes taken from the checkpoint if the config has none, validated
    # (and train.run_dir refused before the data, a synthetic corpus, is built)
    run = start_run(cfg, kind, validate_training, own_checkpoint(ckpt_root))
    cfg, ps, t = run.cfg, run.ps, run.cfg.train

    # everything a user can get wrong is checked before any weight exists: data, checkpoints, arch
    if ps.rank == 0 and cfg.optim.warmup_steps > t.steps:
        print(f"warning: optim.warmup_steps={cfg.optim.warmup_steps} exceeds train.steps={t.steps}: the run ends "
              f"before the learning rate reaches optim.lr={cfg.optim.lr}", file=sys.stderr, flush=True)
    # the dataset, and the tokenizer whose files go into each checkpoint
    data, tokenizer = training_data(cfg.data, kind, cfg.active_model.vocab_size, cfg.seed, t.load)
    if kind == "sft" and ps.rank == 0:  # what train.steps amounts to (the recipe's SFT stages run 2 epochs)
        print(f"sft: {data.num_conversations} conversations in {len(data.rows)} packed rows of "
              f"{cfg.data.seq_length} tokens; train.steps={t.steps} x {cfg.data.global_batch_size} rows = "
              f"{t.steps * cfg.data.global_batch_size / len(data.rows):.2f} epochs", flush=True)
    arch = run.arch  # compared on resume
    candidates = find_resume_checkpoint(ckpt_root, t.load, arch, t.allow_arch_change)
    claim_run_dir(run, kind)  # one run per directory, only one this kind of run made

    chunks = build_model(run)
    hooks = run.family.training  # the family's extra losses and its work around each optimizer step
    hooks.prepare(chunks, cfg.active_model)  # e.g. DeepSeek-V3.2's dense warm-up freezes all but the indexer
    optimizer = DistributedAdamW(chunks, ps, cfg.optim)

    # the run's own newest checkpoint wins over train.load, so a requeued job continues where it was
    resume, meta = resume_from(candidates, chunks, optimizer, ps, arch, t.allow_arch_change,
                               t.verify_checkpoint)
    if resume is not None and not in_run(resume, ckpt_root) and meta.get("kind") != kind:
        # train.load made by another kind of run (a pretrained model for SFT, an RL or imported one): its
        # weights start this run at step 0, as GRPO starts; its step, data position and moments were its own
        optimizer.fresh_moments()
        meta = {k: v for k, v in meta.items() if k not in ("step", "consumed_samples", "optimizer_step",
                                                           "skipped_steps")}
        if ps.rank == 0:
            print(f"starting at step 0 from the weights of {resume} (a {meta.get('kind', 'unknown')} checkpoint; "
                  f"fresh optimizer moments)", flush=True)
        resume = None
    record = data_record(ps, kind, data)  # read once: checked here, saved with each checkpoint
    # a resume reads the same data: the run's own checkpoint, or a train.load of this kind, which continues at
    # its step and data position as well (another run's, e.g. a run forked into a new directory)
    if resume is not None and not t.allow_data_change:
        _on_rank0(ps, lambda: check_same_data(meta, record, cfg.data.seq_length, resume))
    run.hf_config = meta.get("hf_config")  # an imported model's config.json travels on, so an export reproduces it
    start = meta.get("step", 0)
    if start >= t.steps:  # nothing left: say so rather than report an empty run
        if ps.rank == 0:
            print(f"run {t.run_dir} is complete: {resume} is at step {start} and train.steps={t.steps}. "
                  f"To train further, raise train.steps (e.g. train.steps={start + t.steps}); "
                  f"to start afresh, choose another train.run_dir.", flush=True)
        result = {"final_loss": meta.get("loss"), "steps": start, "losses": [], "skipped": optimizer.skipped,
                  "complete": True}
    else:
        result = _steps(run, kind, chunks, optimizer, data, record, tokenizer, meta, resume, ckpt_root)
    finish_run(run)
    return result


def _steps(run: Run, kind: str, chunks, optimizer: DistributedAdamW, data, record: dict, tokenizer: Optional[str],
           meta: dict, resume: Optional[str], ckpt_root: str) -> dict:
    """The steps from the one `meta` records (0 for a fresh run) to train.steps, logged, checkpointed
    at intervals and at the end (each checkpoint with the data's `record`). resume: the checkpoint the
    run continues (None for a fresh one)."""
    cfg, ps, world, device = run.cfg, run.ps, run.world, run.device
    t, family, model_cfg, hooks = cfg.train, run.family, cfg.active_model, run.family.training
    start, consumed = meta.get("step", 0), meta.get("consumed_samples", 0)
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
    guard, last_saved = SkipGuard(t.max_consecutive_skips, log), resume  # newest checkpoint on disk
    chunks.train()
    for step in range(start, t.steps):
        t0 = time.perf_counter()
        batch = {k: v.to(device) for k, v in data.batch(consumed, gbs).items()}
        hooks.before_step(chunks, model_cfg, batch["labels"])
        with kernels_scope(kernels):
            res = lm_forward_backward(
                chunks, ps, batch["input_ids"], batch["labels"], micro,
                attn_mask=batch.get("attn_mask"), position_ids=batch.get("position_ids"),
                schedule=t.schedule, reduce_dp=False, loss_weights=hooks.loss_weights(model_cfg))
        lr = lr_at(step, t.steps, cfg.optim)
        if math.isfinite(res.loss):
            grad_norm, skipped = optimizer.step(lr)
        else:
            grad_norm, skipped = float("nan"), True
            optimizer.skipped += 1
        family_metrics = hooks.after_step(chunks, ps, model_cfg, skipped, res)
        optimizer.zero_grad(chunks)
        consumed += gbs
        dt = time.perf_counter() - t0
        losses.append(res.loss)
        metrics = {"loss": res.loss, "lr": lr, "grad_norm": grad_norm,
                   "skipped_steps": optimizer.skipped, "tok/s": tokens_per_step / dt,
                   "tflops_per_device": flops_step / dt / world / 1e12, **family_metrics}
        if peak:
            metrics["mfu"] = metrics["tflops_per_device"] / peak
        log.log(step + 1, metrics, echo=(step + 1) % t.log_interval == 0 or step + 1 == t.steps)
        guard.after_step(step + 1, skipped, optimizer.skipped,
                         f"The newest checkpoint is {last_saved or 'none'}; check the data and lower optim.lr, "
                         f"or raise train.max_consecutive_skips")
        last = step + 1 == t.steps
        if last or (t.save_interval and (step + 1) % t.save_interval == 0):
            last_saved = save_checkpoint(ckpt_root, step + 1, chunks, optimizer, ps,
                                         run_meta(run, kind, consumed_samples=consumed,
                                                  data_seq_length=cfg.data.seq_length, **record,
                                                  loss=res.loss if math.isfinite(res.loss) else None),
                                         tokenizer=tokenizer)
    log.close()
    final = losses[-1] if losses else float("nan")
    if ps.rank == 0:
        print(f"final_loss={final:.6f} steps={t.steps}", flush=True)
    return {"final_loss": final, "steps": t.steps, "losses": losses, "skipped": optimizer.skipped}
