"""JSONL text -> Megatron indexed dataset (<prefix>.bin/.idx), one document per line.

    python tools/preprocess_data.py --input docs.jsonl --tokenizer tok.model --output-prefix data/corpus

The files are written by megatron-core's IndexedDatasetBuilder, so Megatron-LM reads them too.
A malformed line stops the run with its file and line number (`error: ...`, exit status 2). Output
goes to temporary names beside the prefix, renamed into place at the end: a failure leaves an
existing <prefix>.bin/.idx exactly as it was.
"""
from __future__ import annotations

import argparse
import os
import sys

from r1mega.data.jsonl import iter_texts
from r1mega.data.pretrain import write_indexed
from r1mega.data.tokenizer import EOS, Tokenizer
from r1mega.errors import DataError, debug_requested, run_command


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, nargs="+", help="JSONL files")
    p.add_argument("--json-key", default="text")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json (or its directory) or a sentencepiece .model")
    p.add_argument("--output-prefix", required=True)
    p.add_argument("--no-eos", action="store_true", help="do not end each document with EOS")
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors (also R1MEGA_DEBUG=1)")
    args = p.parse_args(argv)
    return run_command(lambda: _run(args), args.debug or debug_requested())


def _run(args) -> int:
    for path in args.input:
        if not os.path.isfile(path):
            raise DataError(f"--input {path}: no such file")
    if not os.path.exists(args.tokenizer):
        raise DataError(f"--tokenizer {args.tokenizer}: not found")
    folder = os.path.dirname(os.path.abspath(args.output_prefix))
    if not os.path.isdir(folder):
        raise DataError(f"--output-prefix {args.output_prefix}: directory {folder} does not exist")
    tok = Tokenizer(args.tokenizer)
    eos = "" if args.no_eos else EOS

    def docs():
        for path in args.input:
            for text in iter_texts(path, args.json_key):
                yield tok.encode(text + eos)

    n = write_indexed(args.output_prefix, docs(), tok.vocab_size)
    print(f"wrote {n} tokens to {args.output_prefix}.bin/.idx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
