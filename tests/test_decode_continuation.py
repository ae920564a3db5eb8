"""A completion decodes as the text it adds after its prompt (`Tokenizer.decode_continuation`), for the
kinds of tokenizer users bring: byte-level BPE, Metaspace with byte fallback (prefix first or always),
end-of-word-suffix BPE (GPT-1/CLIP style), WordPiece, and a Metaspace vocabulary with no bare letters.
Decoded on its own a completion's first word lost its space (`▁minus` read `minus`), so a stop string
` minus` was missed; a one-letter anchor then glued onto suffix-BPE words and was missing where the
vocabulary has no bare letters (a hostile helper's cases)."""
import json

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from r1mega.data.tokenizer import Tokenizer
from r1mega.generation.sampling_rounds import _stop_check

CORPUS = ["The sum of 12 and 30 is 42, and the answer is 42.", "Q: 7-3= 7 minus 3 is 4", "x = 1, y = 22.5; done.",
          "héllo wörld, ünïcode 文字 🙂 emoji", "Answer: 42 </answer> is it the minus"] * 40
TEXTS = ["Q: 7-3= 7 minus 3", "The sum is 42, and the answer is 42.", "héllo wörld 文字 🙂 ok", "x = 1, y = 22.5"]


def trained(kind: str) -> HFTokenizer:
    if kind == "bytelevel":
        t = HFTokenizer(models.BPE())
        t.pre_tokenizer, t.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif kind.startswith("metaspace"):
        scheme = kind.split("-")[1]
        t = HFTokenizer(models.BPE(byte_fallback=True))
        t.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=scheme)
        t.decoder = decoders.Sequence([decoders.Metaspace(prepend_scheme=scheme), decoders.ByteFallback(),
                                       decoders.Fuse()])
        trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>"] + [f"<0x{i:02X}>" for i in range(256)])
    elif kind == "suffix":
        t = HFTokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
        t.pre_tokenizer, t.decoder = pre_tokenizers.Whitespace(), decoders.BPEDecoder(suffix="</w>")
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>"], end_of_word_suffix="</w>",
                                      initial_alphabet=list("abcdefghijklmnopqrstuvwxyz"))
    else:
        t = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
        t.pre_tokenizer, t.decoder = pre_tokenizers.BertPreTokenizer(), decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=320, special_tokens=["[UNK]"])
    t.train_from_iterator(CORPUS, trainer)
    return t


def load(t: HFTokenizer, folder) -> Tokenizer:
    t.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    return Tokenizer(str(folder))


def in_context(tok: Tokenizer, prompt: list[int], completion: list[int]):
    whole, head = tok.decode(prompt + completion), tok.decode(prompt)
    return whole[len(head):] if whole.startswith(head) else None


@pytest.mark.parametrize("kind", ["bytelevel", "metaspace-first", "metaspace-always", "suffix", "wordpiece"])
def test_every_split_reads_as_in_context(kind, tmp_path):
    tok = load(trained(kind), tmp_path)
    checked = 0
    for text in TEXTS:
        ids = tok.encode(text)
        for j in range(1, len(ids)):
            expected = in_context(tok, ids[:j], ids[j:])
            # (an unknown token behind a word's inner piece: no anchor can know it joins that word)
            if expected is not None and tok.decode(ids[j:j + 1]) not in ("<unk>", "[UNK]"):
                assert tok.decode_continuation(ids[j:]) == expected, (kind, text, j)
                checked += 1
    assert checked >= 10


def test_a_suffix_vocabulary_and_one_without_bare_letters(tmp_path):
    def build(model, pre, dec, name):
        t = HFTokenizer(model)
        t.pre_tokenizer, t.decoder = pre, dec
        (tmp_path / name).mkdir()
        return load(t, tmp_path / name)

    vocab = {"<unk>": 0, "<eos>": 1, "a": 2, "the</w>": 3, "minus</w>": 4, "a</w>": 5}
    suffix = build(models.BPE(vocab, [], unk_token="<unk>", end_of_word_suffix="</w>"), pre_tokenizers.Whitespace(),
                   decoders.BPEDecoder(suffix="</w>"), "suffix")
    vocab = {"<unk>": 0, "<eos>": 1, "\u2581the": 2, "\u2581minus": 3, "\u25815": 4}
    words = build(models.WordLevel(vocab, unk_token="<unk>"), pre_tokenizers.Metaspace(), decoders.Metaspace(), "words")
    for tok, prompt, completion in ((suffix, [3], [4]), (words, [2], [3, 4])):
        expected = in_context(tok, prompt, completion)
        assert expected.startswith(" minus") and tok.decode_continuation(completion) == expected
        assert _stop_check(tok, [" minus"])(completion[:1])
