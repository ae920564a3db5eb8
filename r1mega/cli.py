"""The `r1mega` command. Each subcommand lives in its own module; this file only dispatches.

    r1mega demo                       built-in first run (see README)
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

    args = parser.parse_args(argv)
    if args.command == "verify-hf":
        return verify_hf.run(args)
    if args.command == "demo":
        return demo.run(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
