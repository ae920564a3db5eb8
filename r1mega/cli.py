"""The `r1mega` command. Each subcommand lives in its own module; this file only dispatches.

    r1mega demo                       built-in first run (see README)
    r1mega pretrain --config configs/tiny/pretrain.yaml [key=value ...]
    r1mega sft --config configs/tiny/sft.yaml [key=value ...]
    torchrun --nproc_per_node N -m r1mega.cli verify-hf --hf-dir DIR --tp T --pp P --ep E
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="r1mega", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    from r1mega import demo, verify_hf

    verify_hf.add_args(sub.add_parser("verify-hf", help="compare a sharded HF checkpoint with transformers"))
    demo.add_args(sub.add_parser("demo", help="the built-in demo on a tiny model (CPU, minutes)"))

    for kind in ("pretrain", "sft"):
        p = sub.add_parser(kind, help=f"{kind} (torchrun for several ranks)")
        p.add_argument("--config", required=True, help="YAML config")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. parallel.tp=2 train.steps=50")

    args = parser.parse_args(argv)
    if args.command in ("pretrain", "sft"):
        from r1mega.config import load_config
        from r1mega.train.trainer import train

        train(load_config(args.config, args.overrides), args.command)
        return 0
    if args.command == "verify-hf":
        return verify_hf.run(args)
    if args.command == "demo":
        return demo.run(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
