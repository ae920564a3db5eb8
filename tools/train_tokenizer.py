"""Train a small sentencepiece (BPE, byte fallback) tokenizer for tiny runs, with R1's chat markers.

    python tools/train_tokenizer.py --input docs.jsonl --vocab-size 512 --output-prefix data/tok
"""
from __future__ import annotations

import argparse
import sys

from r1mega.data.jsonl import DataError, iter_texts
from r1mega.data.tokenizer import train_sentencepiece


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, nargs="+")
    p.add_argument("--json-key", default="text")
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--output-prefix", required=True)
    args = p.parse_args(argv)
    try:
        texts = [t for path in args.input for t in iter_texts(path, args.json_key)]
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {train_sentencepiece(texts, args.output_prefix, args.vocab_size)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
