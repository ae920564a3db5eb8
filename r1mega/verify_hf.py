"""`r1mega verify-hf`: load an HF checkpoint under a layout and compare with transformers.
Any model family: DeepSeek-V3/V2 or a dense Qwen2/Llama student, chosen by config.json's model_type.

    torchrun --nproc_per_node N -m r1mega.cli verify-hf --hf-dir DIR --tp T --pp P --ep E

Rank 0 runs `transformers` on the same random batch; r1mega runs it sharded (DP = the rest). The
last line is `max_abs_logit_diff=<float>`; the exit status is non-zero above tolerance.
"""
from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from r1mega.config import ConfigError, ParallelConfig, build_config, validate
from r1mega.models.family import family_for_hf
from r1mega.models.hf_config import read_hf_config
from r1mega.models.weights import PieceReader, load_hf_weights, load_weights
from r1mega.parallel.context_parallel import gather_sequence
from r1mega.parallel.layout import build_parallel_state, default_device, join_ranks, single_process_state
from r1mega.parallel.vocab_parallel import gather_vocab
from r1mega.train.lm_step import lm_forward_backward


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hf-dir", required=True, help="Hugging Face checkpoint directory (transformers' side)")
    p.add_argument("--ckpt", default=None,
                   help="load r1mega's side from this r1mega checkpoint (e.g. made by r1mega-convert import)")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--ep", type=int, default=1)
    p.add_argument("--etp", type=int, default=None, help="expert tensor parallel size (default: tp)")
    p.add_argument("--sp", action="store_true", help="sequence parallel")
    p.add_argument("--cp", type=int, default=1, help="context parallel size (seq-length divisible by 2 x cp)")
    p.add_argument("--seq-length", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=0, help="global batch (default: dp)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=None,
                   help="max |logit diff| allowed (default: 1e-4 in float32, 5e-2 in bfloat16)")
    p.add_argument("--grad-tol", type=float, default=None,
                   help="max |grad diff| / max |grad| allowed per tensor, max |grad| at least 1e-4 of the "
                        "model's largest (default: 1e-4 in float32, 5e-2 in bfloat16); negative: skip gradients")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])


# default tolerances by weight dtype: bf16 keeps 8 bits of mantissa (a step of 2^-8 relative), so two
# correct implementations summing in different orders differ by a few of those steps per logit
DEFAULT_TOL = {"float32": 1e-4, "bfloat16": 5e-2}


def _report(msg: str) -> None:
    print(msg, flush=True)


def hf_param_grads(model) -> dict[str, torch.Tensor]:
    """transformers' gradients under checkpoint names (its fused expert tensors split per expert)."""
    out = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        g = p.grad.float()
        if name.endswith("mlp.experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            gate, up = g.chunk(2, dim=1)
            for e in range(g.shape[0]):
                out[f"{base}{e}.gate_proj.weight"], out[f"{base}{e}.up_proj.weight"] = gate[e], up[e]
        elif name.endswith("mlp.experts.down_proj"):
            base = name[: -len("down_proj")]
            for e in range(g.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = g[e]
        else:
            out[name] = g
    return out


# a tensor's gradient is measured against at least this fraction of the model's largest gradient: one
# that is analytically zero comes out as float32 rounding of the terms summed into it (a top-1 router
# renormalised to weight 1: 1e-10 to 4e-10 against 0.2 to 0.6), which no two implementations round alike;
# a wrong gradient is still seen down to tolerance x GRAD_FLOOR (1e-8 in float32) of the largest
GRAD_FLOOR = 1e-4


def grad_diff(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> tuple[float, str]:
    """Worst relative difference over transformers' parameters (a missing gradient counts as 1), each
    relative to its largest gradient or GRAD_FLOOR of the model's largest, whichever is larger."""
    worst, where = 0.0, "-"
    floor = GRAD_FLOOR * max((g.abs().max().item() for g in ref.values() if g.numel()), default=0.0)
    for name, g in ref.items():
        if g.numel() == 0:  # e.g. transformers' zero-width shared expert (n_shared_experts: 0)
            continue
        rel = (1.0 if name not in ours or ours[name].shape != g.shape
               else float((ours[name] - g).abs().max() / g.abs().max().clamp(min=max(floor, 1e-12))))
        if rel > worst:
            worst, where = rel, name
    return worst, where


def _same_model(ckpt: str, hf_dir: str, family, model_cfg) -> None:
    """--ckpt must hold the model of --hf-dir (its family and architecture keys, as its meta.json
    records them): another model whose tensors happen to fit would only show as a failed comparison."""
    from dataclasses import asdict

    from r1mega.models.family import family_from_meta
    from r1mega.train.checkpoint import arch_differences, read_meta

    meta = read_meta(ckpt)
    if not isinstance(meta.get("model_config"), dict):
        return  # weights only: the tensors' names and shapes are still checked on load
    saved_family, saved = family_from_meta(meta)
    mine = {k: v for k, v in asdict(model_cfg).items() if k not in family.training_keys}
    diffs = ([f"model.family: checkpoint {saved_family.name!r}, config.json {family.name!r}"]
             if saved_family is not family else arch_differences(asdict(saved), mine))
    if diffs:
        raise ConfigError("--ckpt", f"{ckpt} holds another model than {hf_dir}/config.json describes:\n  "
                          + "\n  ".join(d.replace(", config ", ", config.json ") for d in diffs))


def run(args: argparse.Namespace) -> int:
    distributed, owns_group, world = join_ranks()
    rank = dist.get_rank() if distributed else 0
    dtype = getattr(torch, args.dtype)
    args.tol = DEFAULT_TOL[args.dtype] if args.tol is None else args.tol
    args.grad_tol = DEFAULT_TOL[args.dtype] if args.grad_tol is None else args.grad_tol
    par = ParallelConfig(tp=args.tp, pp=args.pp, ep=args.ep, etp=args.etp, sp=args.sp, cp=args.cp)
    if args.seq_length < 1:
        raise ConfigError("--seq-length", f"must be >= 1, got {args.seq_length}")
    if not (math.isfinite(args.tol) and args.tol > 0):
        raise ConfigError("--tol", f"must be a finite number > 0, got {args.tol}")
    if not math.isfinite(args.grad_tol):  # negative: skip the gradient comparison
        raise ConfigError("--grad-tol", f"must be a finite number (< 0 skips gradients), got {args.grad_tol}")
    for flag, v in (("--batch-size", args.batch_size), ("--seed", args.seed)):
        if v < 0:
            raise ConfigError(flag, f"must be >= 0, got {v}")
    if args.seq_length % par.sequence_divisor:
        raise ConfigError("--seq-length", f"{args.seq_length} is not divisible by {par.sequence_divisor_text()}")
    family, model_cfg = family_for_hf(args.hf_dir)
    cfg = validate(build_config(model_cfg, par), world)
    if args.seq_length > cfg.active_model.max_position_embeddings:
        raise ConfigError("--seq-length", f"{args.seq_length} exceeds the model's max_position_embeddings="
                          f"{cfg.active_model.max_position_embeddings}")
    ps = build_parallel_state(cfg.parallel) if distributed else single_process_state()
    batch = args.batch_size or ps.dp
    if rank == 0:
        _report(f"verify-hf: {args.ckpt or args.hf_dir} vs transformers({args.hf_dir}) on {world} ranks: tp={ps.tp} pp={ps.pp} ep={ps.ep} "
                f"etp={ps.etp} dp={ps.dp} cp={ps.cp} sp={ps.sp}; "
                f"batch {batch} x {args.seq_length} tokens, {args.dtype}")

    device = default_device()
    model = family.build_stage(cfg.active_model, ps, cfg.parallel.pp_layers).to(device=device, dtype=dtype)
    if args.ckpt:
        from r1mega.train.checkpoint import read_meta, verify_manifest

        verify_manifest(args.ckpt, read_meta(args.ckpt))  # as every loader does: an edited file is named
        _same_model(args.ckpt, args.hf_dir, family, cfg.active_model)
        report = load_weights(model, PieceReader(args.ckpt, "model"))
    else:
        report = load_hf_weights(model, args.hf_dir)
    if rank == 0 and report.kept_init:
        _report(f"note: the checkpoint lacks {len(report.kept_init)} tensors the family marks optional (e.g. an MTP "
                f"layer); they keep their init")

    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, cfg.active_model.vocab_size, (batch, args.seq_length), generator=g)
    pad = read_hf_config(args.hf_dir)[0].get("pad_token_id")
    if isinstance(pad, int) and 0 <= pad < cfg.active_model.vocab_size:
        # transformers' embedding never gives its padding row a gradient (nn.Embedding padding_idx); a pad
        # token is never an input the loss reaches, so the random inputs leave it out
        ids = torch.where(ids == pad, (pad + 1) % cfg.active_model.vocab_size, ids)
    ids = ids.to(device)
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = ids[:, 1:]
    with torch.no_grad():
        step = lm_forward_backward(model, ps, ids, labels, forward_only=True)
    grads = None
    if args.grad_tol >= 0:
        lm_forward_backward(model, ps, ids, labels)
        full = family.gather_full(model, grads=True)  # collective over the stage's groups
        if ps.r("tp") == 0 and ps.r("dp_cp") == 0:  # one copy per pipeline stage goes to rank 0
            grads = {k: v.float().cpu() for k, v in full.items()}
    mine = None
    if ps.is_last_stage:
        mine = gather_vocab(step.logits[0], ps.g("tp"))
        if ps.cp > 1:  # this rank's zigzag chunks -> whole rows
            mine = gather_sequence(mine, ps, args.seq_length)
        mine = mine.transpose(0, 1).float().cpu()
    # rank 0 collects each DP rank's rows (from the tp- and cp-rank-0 of the last stage)
    rows = (ps.r("dp"), mine) if ps.is_last_stage and ps.r("tp") == 0 and ps.r("cp") == 0 else None
    if distributed:
        gathered = [None] * world if rank == 0 else None
        dist.gather_object((rows, grads), gathered, dst=0)
    else:
        gathered = [(rows, grads)]

    failed = torch.zeros(1, device=device)
    if rank == 0:
        parts = dict(r for r, _ in gathered if r is not None)
        ours = torch.cat([parts[d] for d in sorted(parts)])
        our_grads = {}
        for _, g in gathered:
            our_grads.update(g or {})
        from transformers import AutoModelForCausalLM  # only rank 0 pays for the import

        try:
            # transformers' per-expert loop: its default grouped_mm refuses rows that are not 16-byte
            # aligned (e.g. hidden 33 in float32), which r1mega runs; dense models have no experts to set
            hf = AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=dtype, experts_implementation="eager").eval()
        except (ImportError, OSError, ValueError, RuntimeError) as e:  # e.g. FP8 weights and no FP8 support here
            why = (str(e).strip().splitlines() or [""])[0][:300]
            raise ConfigError("--hf-dir", f"{args.hf_dir}: transformers cannot load it here to compare against "
                                          f"({type(e).__name__}: {why})") from None
        ref = hf(ids.cpu()).logits.float()
        loss = F.cross_entropy(ref.flatten(0, 1), labels.cpu().flatten(), ignore_index=-100)
        ref_loss = loss.item()
        diff = (ours - ref.detach()).abs().max().item()
        _report(f"loss r1mega={step.loss:.6f} transformers={ref_loss:.6f} loss_diff={abs(step.loss - ref_loss):.3e}")
        ok = diff <= args.tol
        if args.grad_tol >= 0:
            loss.backward()
            worst, name = grad_diff(our_grads, hf_param_grads(hf))
            _report(f"gradients: worst {name} max_abs_diff/max_abs_grad={worst:.3e}")
            ok = ok and worst <= args.grad_tol
        _report(f"{'PASS' if ok else 'FAIL'}: tolerance {args.tol:g}")
        _report(f"max_abs_logit_diff={diff:.6e}")
        failed[0] = 0 if ok else 1
    if distributed:
        dist.broadcast(failed, src=0)
        if owns_group:
            dist.destroy_process_group()
    return int(failed.item())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="r1mega verify-hf")
    add_args(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
