"""Train a small sentencepiece (BPE, byte fallback) tokenizer for tiny runs, with R1's chat markers.

    python tools/train_tokenizer.py --input docs.jsonl --vocab-size 512 --output-prefix data/tok

A bad input or size ends in one line `error: ...` and exit status 2 (--debug for the traceback).
The tokenizer is written under a temporary name and renamed into place: an existing
<prefix>.model/.vocab is replaced only by a complete new pair.
"""
from __future__ import annotations

import argparse
import os
import sys

from r1mega.data.jsonl import DataError, iter_texts
from r1mega.data.tokenizer import train_sentencepiece
from r1mega.errors import debug_requested, run_command


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, nargs="+")
    p.add_argument("--json-key", default="text")
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--output-prefix", required=True)
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors (also R1MEGA_DEBUG=1)")
    args = p.parse_args(argv)
    return run_command(lambda: _run(args), args.debug or debug_requested())


def _run(args) -> int:
    if args.vocab_size < 1:
        raise DataError(f"--vocab-size must be >= 1, got {args.vocab_size}")
    for path in args.input:
        if not os.path.isfile(path):
            raise DataError(f"--input {path}: no such file")
    folder = os.path.dirname(os.path.abspath(args.output_prefix))
    if not os.path.isdir(folder):
        raise DataError(f"--output-prefix {args.output_prefix}: directory {folder} does not exist")
    if os.path.isdir(args.output_prefix + ".model"):
        raise DataError(f"--output-prefix {args.output_prefix}: {args.output_prefix}.model is a directory")
    texts = [t for path in args.input for t in iter_texts(path, args.json_key)]
    if not texts:
        raise DataError(f"--input {' '.join(args.input)}: no documents under key {args.json_key!r}")
    try:
        model = train_sentencepiece(texts, args.output_prefix, args.vocab_size)
    except RuntimeError as e:  # sentencepiece's own refusal, e.g. a vocabulary too small for the characters
        raise DataError(f"sentencepiece refused to train: {str(e).splitlines()[0]}") from None
    print(f"wrote {model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
