"""The `r1mega` command. Each subcommand lives in its own module; this file only dispatches.

    r1mega demo                       built-in first run: R1-Zero on a tiny MoE (see README)
    r1mega grpo --config configs/tiny/r1_zero_demo.yaml train.load=CKPT [key=value ...]
    r1mega pretrain --config configs/tiny/pretrain.yaml [key=value ...]
    r1mega sft --config configs/tiny/sft.yaml [key=value ...]
    r1mega sft --config configs/model/students/qwen2.5_1.5b.yaml --config configs/stage/distillation.yaml
        train.load=CKPT                  (one command: a student's shapes, then a stage recipe)
    r1mega plan --config configs/model/MODEL.yaml --tp 2 --pp 16 --ep 64 --dp 64 --sp   (the 671B models: README)
    torchrun --nproc_per_node N -m r1mega.cli verify-hf --hf-dir DIR --tp T --pp P --ep E

A bad config, data file or checkpoint ends in one line `error: ...` and exit status 2; add
--debug (anywhere) or set R1MEGA_DEBUG=1 for the traceback.
"""
from __future__ import annotations

import argparse
import sys

from r1mega.errors import debug_requested, run_command


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    parser = argparse.ArgumentParser(prog="r1mega", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    from r1mega import demo, plan, verify_hf

    verify_hf.add_args(sub.add_parser("verify-hf", help="compare a sharded HF checkpoint with transformers"))
    demo.add_args(sub.add_parser("demo", help="R1-Zero on a tiny model: pretrain, then GRPO (CPU, minutes)"))
    plan.add_args(sub.add_parser("plan", help="parameters, memory and communication of a layout (no GPUs)"))
    from r1mega.generation import run as generation_run

    generation_run.add_args(sub.add_parser("generate", help="k samples per prompt to sharded JSONL (resumable)"))
    from r1mega.eval import benchmark

    benchmark.add_args(sub.add_parser("eval", help="pass@1 over k samples, pass@k, cons@k per benchmark"))
    from r1mega.generation import reject_sample

    reject_sample.add_args(sub.add_parser("reject-sample", help="sample, keep correct readable ones, write SFT JSONL"))
    from r1mega import recipe

    recipe.add_args(sub.add_parser("pipeline", help="the DeepSeek-R1 recipe stage by stage, each evaluated"))

    for kind in ("pretrain", "sft", "grpo"):
        p = sub.add_parser(kind, help=f"{kind} (torchrun for several ranks)", description=(
            f"train.run_dir is a new or empty directory, or one an earlier `r1mega {kind}` made: then the run "
            f"resumes from its newest good checkpoint. A non-empty directory r1mega did not make, one another "
            f"command made, or one in use by another run is refused (nothing in it is touched)."))
        p.add_argument("--config", required=True, action="append",
                       help="YAML config; repeat to layer files (later ones win), e.g. a student then a stage")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. parallel.tp=2 train.steps=50")
        p.add_argument("--dry-run", action="store_true", help="print the layout and plan; allocate nothing")
        p.add_argument("--world", type=int, default=None, help="ranks for --dry-run (default: tp x pp x dp)")
        p.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per GPU, for --dry-run")

    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors (also R1MEGA_DEBUG=1)")
    args, extra = parser.parse_known_args(argv)
    # argparse hands a positional list only its first run: key=value overrides written after an option
    # (`--dry-run a=1`) come back unparsed; they are overrides too, read in the order written
    if extra and (getattr(args, "overrides", None) is None or any(x.startswith("-") for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    from r1mega.output_dir import release_all

    try:
        return run_command(lambda: _dispatch(parser, args), debug)
    finally:
        release_all()  # the output-directory locks this command took, however it ended


def _dispatch(parser, args) -> int:
    from r1mega import demo, plan, verify_hf

    if args.command in ("pretrain", "sft", "grpo"):
        from r1mega.config import load_config

        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            from r1mega.dry_run import dry_run
            from r1mega.train.setup import model_from_checkpoint

            cfg = model_from_checkpoint(cfg)[0]  # the model train.load holds, as the run would build it
            par = cfg.parallel
            world = args.world if args.world is not None else par.tp * par.cp * par.pp * (par.dp or 1)
            return dry_run(cfg, world, args.gpu_mem, args.command)
        if args.command == "grpo":
            from r1mega.rl.grpo import grpo

            grpo(cfg, eval_every=cfg.train.log_interval * 2)
            return 0
        from r1mega.train.trainer import train

        train(cfg, args.command)
        return 0
    if args.command == "verify-hf":
        return verify_hf.run(args)
    if args.command == "demo":
        return demo.run(args)
    if args.command == "plan":
        return plan.run(args)
    if args.command == "generate":
        from r1mega.generation import run as generation_run

        return generation_run.run(args)
    if args.command == "eval":
        from r1mega.eval import benchmark

        return benchmark.run(args)
    if args.command == "reject-sample":
        from r1mega.generation import reject_sample

        return reject_sample.run(args)
    if args.command == "pipeline":
        from r1mega import recipe

        return recipe.run(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
