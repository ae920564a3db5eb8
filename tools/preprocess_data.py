"""JSONL text -> Megatron indexed dataset (<prefix>.bin/.idx), one document per line.

    python tools/preprocess_data.py --input docs.jsonl --tokenizer tok.model --output-prefix data/corpus

The files are written by megatron-core's IndexedDatasetBuilder, so Megatron-LM reads them too.
A malformed line stops the run with its file and line number.
"""
from __future__ import annotations

import argparse
import sys

from r1mega.data.jsonl import DataError, iter_texts
from r1mega.data.pretrain import write_indexed
from r1mega.data.tokenizer import EOS, Tokenizer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, nargs="+", help="JSONL files")
    p.add_argument("--json-key", default="text")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json (or its directory) or a sentencepiece .model")
    p.add_argument("--output-prefix", required=True)
    p.add_argument("--no-eos", action="store_true", help="do not end each document with EOS")
    args = p.parse_args(argv)
    tok = Tokenizer(args.tokenizer)
    eos = "" if args.no_eos else EOS

    def docs():
        for path in args.input:
            for text in iter_texts(path, args.json_key):
                yield tok.encode(text + eos)

    try:
        n = write_indexed(args.output_prefix, docs(), tok.vocab_size)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {n} tokens to {args.output_prefix}.bin/.idx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
