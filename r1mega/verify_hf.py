"""`r1mega verify-hf`: load an HF checkpoint under a layout and compare with transformers.

    torchrun --nproc_per_node N -m r1mega.cli verify-hf --hf-dir DIR --tp T --pp P --ep E

Rank 0 runs `transformers` on the same random batch; r1mega runs it sharded (DP = the rest). The
last line is `max_abs_logit_diff=<float>`; the exit status is non-zero above tolerance.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from r1mega.config import Config, ModelConfig, ParallelConfig, validate
from r1mega.models.deepseek_v3.hf_weights import load_hf_weights
from r1mega.models.deepseek_v3.model import DeepseekV3
from r1mega.parallel.vocab_parallel import gather_vocab
from r1mega.train.lm_step import lm_forward_backward
from r1mega.train.setup import finish_run, start_run


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hf-dir", required=True, help="Hugging Face checkpoint directory (transformers' side)")
    p.add_argument("--ckpt", default=None,
                   help="load r1mega's side from this r1mega checkpoint (e.g. made by r1mega-convert import)")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--ep", type=int, default=1)
    p.add_argument("--etp", type=int, default=None, help="expert tensor parallel size (default: tp)")
    p.add_argument("--sp", action="store_true", help="sequence parallel")
    p.add_argument("--seq-length", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=0, help="global batch (default: dp)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-4, help="max |logit diff| allowed (float32)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])


def _report(msg: str) -> None:
    print(msg, flush=True)


def run(args: argparse.Namespace) -> int:
    dtype = getattr(torch, args.dtype)
    par = ParallelConfig(tp=args.tp, pp=args.pp, ep=args.ep, etp=args.etp, sp=args.sp)
    run = start_run(Config(model=ModelConfig.from_hf(args.hf_dir), parallel=par), validate)
    cfg, ps, distributed, world = run.cfg, run.ps, run.distributed, run.world
    rank = ps.rank
    batch = args.batch_size or ps.dp
    if rank == 0:
        _report(f"verify-hf: {args.ckpt or args.hf_dir} vs transformers({args.hf_dir}) on {world} ranks: tp={ps.tp} pp={ps.pp} ep={ps.ep} "
                f"etp={ps.etp} dp={ps.dp} sp={ps.sp}; batch {batch} x {args.seq_length} tokens, {args.dtype}")

    device = run.device
    model = DeepseekV3(cfg.model, ps, cfg.parallel.pp_layers).to(device=device, dtype=dtype)
    if args.ckpt:
        from r1mega.models.deepseek_v3.hf_weights import load_weights
        from r1mega.train.checkpoint import PieceReader

        report = load_weights(model, PieceReader(args.ckpt, "model"))
    else:
        report = load_hf_weights(model, args.hf_dir)
    if rank == 0 and report.kept_init:
        _report(f"note: the checkpoint has no MTP layer; {len(report.kept_init)} MTP tensors keep their init")

    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, cfg.model.vocab_size, (batch, args.seq_length), generator=g).to(device)
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = ids[:, 1:]
    with torch.no_grad():
        step = lm_forward_backward(model, ps, ids, labels, forward_only=True)
    mine = None
    if ps.is_last_stage:
        mine = gather_vocab(step.logits[0], ps.g("tp")).transpose(0, 1).float().cpu()
    # rank 0 collects each DP rank's rows (from the tp-rank-0 of the last stage)
    rows = (ps.r("dp"), mine) if ps.is_last_stage and ps.r("tp") == 0 else None
    if distributed:
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(rows, gathered, dst=0)
    else:
        gathered = [rows]

    failed = torch.zeros(1, device=device)
    if rank == 0:
        parts = dict(r for r in gathered if r is not None)
        ours = torch.cat([parts[d] for d in sorted(parts)])
        from transformers import AutoModelForCausalLM  # only rank 0 pays for the import

        hf = AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=dtype).eval()
        with torch.no_grad():
            ref = hf(ids.cpu()).logits.float()
        ref_loss = F.cross_entropy(ref.flatten(0, 1), labels.cpu().flatten(), ignore_index=-100).item()
        diff = (ours - ref).abs().max().item()
        _report(f"loss r1mega={step.loss:.6f} transformers={ref_loss:.6f} loss_diff={abs(step.loss - ref_loss):.3e}")
        ok = diff <= args.tol
        _report(f"{'PASS' if ok else 'FAIL'}: tolerance {args.tol:g}")
        _report(f"max_abs_logit_diff={diff:.6e}")
        failed[0] = 0 if ok else 1
    if distributed:
        dist.broadcast(failed, src=0)
    finish_run(run)
    return int(failed.item())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="r1mega verify-hf")
    add_args(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
