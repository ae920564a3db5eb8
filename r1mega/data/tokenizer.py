"""Tokenizers: Hugging Face `tokenizer.json` (DeepSeek's own) or a sentencepiece model (small runs), and how a
conversation becomes their tokens under `data.sft_template` (render, render_sampled)."""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Optional

from r1mega.errors import ConfigError, DataError, R1MegaError

# DeepSeek-R1's chat markers; a sentencepiece model for small runs is trained with them as symbols
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
CHAT_SYMBOLS = [BOS, EOS, USER, ASSISTANT, "<think>", "</think>"]


def _token_text(value) -> Optional[str]:
    """tokenizer_config.json writes special tokens as strings or as {"content": ...} objects."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None



# a tokenizer directory's files (Hugging Face's names; transformers 5 keeps the chat template in its own
# file): r1mega-convert and every checkpoint carry them, so a model directory is usable on its own
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "tokenizer.model",
                   "special_tokens_map.json", "generation_config.json")


def copy_tokenizer_files(src: str, dst: str) -> None:
    """Copy the tokenizer files of `src` (a directory, or the tokenizer.json in one) into directory dst;
    nothing when src is no tokenizer.json (e.g. a synthetic corpus's sentencepiece model)."""
    folder = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
    if not os.path.isfile(os.path.join(folder, "tokenizer.json")) and not (os.path.isfile(src) and src.endswith(".json")):
        return
    if os.path.isfile(src):
        shutil.copyfile(src, os.path.join(dst, "tokenizer.json"))
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(folder, name)) and not os.path.exists(os.path.join(dst, name)):
            shutil.copyfile(os.path.join(folder, name), os.path.join(dst, name))


# decode_continuation's anchor: candidate words (one token each in most vocabularies), and texts whose every
# split it must read as the whole text reads (spaces, digits, punctuation, a tag, a word split inside)
ANCHOR_WORDS = ("the", "a", "is", "and", "x", "1", "0", "of", "in", "to")
ANCHOR_PROBES = ("the minus 5", "Answer: 42 </answer> is it", "x = 1, y = 22.5; done.", "unbelievably long words")


class Tokenizer:
    """Encode/decode with `tokenizers` (HF tokenizer.json) or sentencepiece (.model).

    `path` may be a tokenizer.json, a .model file, or a directory holding tokenizer.json - a
    Hugging Face checkpoint directory or an r1mega checkpoint made by `r1mega-convert import`. Its
    tokenizer_config.json (when present) names the special tokens (eos_token, bos_token) and the
    chat template (also read from chat_template.jinja)."""

    def __init__(self, path: str):
        self.path = path
        self.chat_template: Optional[str] = None
        self.add_bos: Optional[bool] = None  # prompts start with BOS (tokenizer_config.json's add_bos_token)
        self.special: dict[str, Optional[str]] = {"eos_token": EOS, "bos_token": BOS}
        if path.endswith(".model"):
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor(model_file=path)
            self._hf = None
            self.vocab_size = self._sp.get_piece_size()
        else:
            from tokenizers import Tokenizer as HFTokenizer

            file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
            if not os.path.exists(file):
                raise FileNotFoundError(f"data.tokenizer: {file} not found (expected tokenizer.json, a directory "
                                        "holding one, or a sentencepiece .model file)")
            self._hf = HFTokenizer.from_file(file)
            self._sp = None
            self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
            self._read_config(os.path.dirname(os.path.abspath(file)))
        self.eos_id = self.token_id(self.special["eos_token"]) if self.special["eos_token"] else None
        self.bos_id = self.token_id(self.special["bos_token"]) if self.special["bos_token"] else None
        if self.add_bos is None:  # no add_bos_token key (Llama 3's): BOS if tokenizer.json's post-processor
            # writes it, as transformers' tokenizer encodes the text
            self.add_bos = (self._hf is not None and self.bos_id is not None
                            and self._hf.encode("", add_special_tokens=True).ids[:1] == [self.bos_id])
        listed = self._generation_eos(path)
        if self.eos_id is None:
            self.eos_id = listed[0] if listed else None
        # every id that ends a completion: EOS, then generation_config.json's others (transformers stops at any)
        self.eos_ids: tuple[int, ...] = tuple(dict.fromkeys(
            i for i in (self.eos_id, *listed) if isinstance(i, int) and not isinstance(i, bool)))

    def add_model_eos(self, model_dir: str) -> None:
        """Also stop at the ids the model's own generation_config.json / config.json / meta.json list
        (transformers' generate reads the model's, wherever its tokenizer came from)."""
        listed = self._generation_eos(model_dir) if os.path.isdir(model_dir) else []
        self.eos_ids = tuple(dict.fromkeys((*self.eos_ids, *listed)))
        if self.eos_id is None and self.eos_ids:
            self.eos_id = self.eos_ids[0]

    def _read_config(self, folder: str) -> None:
        cfg_file = os.path.join(folder, "tokenizer_config.json")
        if os.path.exists(cfg_file):
            with open(cfg_file, encoding="utf-8") as f:
                try:
                    cfg = json.load(f)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{cfg_file}: not valid JSON ({e.msg}, line {e.lineno})") from None
            for key in ("eos_token", "bos_token", "pad_token"):
                if key in cfg:
                    self.special[key] = _token_text(cfg[key])
            if "add_bos_token" in cfg:
                self.add_bos = bool(cfg["add_bos_token"])
            template = cfg.get("chat_template")
            if isinstance(template, list):  # named templates: take the default one
                template = next((t.get("template") for t in template if t.get("name") == "default"), None)
            self.chat_template = template
        jinja = os.path.join(folder, "chat_template.jinja")
        if self.chat_template is None and os.path.exists(jinja):
            with open(jinja, encoding="utf-8") as f:
                self.chat_template = f.read()

    @staticmethod
    def _generation_eos(path: str) -> list:
        """generation_config.json's eos_token_id (one id or a list) beside the tokenizer, as a list. Without
        that file transformers' generate takes the model config's eos_token_id (GenerationConfig.from_model_config):
        config.json's in a Hugging Face directory, the imported config.json (meta.json's hf_config) in an r1mega
        checkpoint."""
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        for name, inner in (("generation_config.json", None), ("config.json", None), ("meta.json", "hf_config")):
            file = os.path.join(folder, name)
            if not os.path.exists(file):
                continue
            with open(file, encoding="utf-8") as f:
                try:
                    cfg = json.load(f)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{file}: not valid JSON ({e.msg}, line {e.lineno})") from None
            if inner is not None:
                cfg = cfg.get(inner) if isinstance(cfg, dict) else None
            eos = cfg.get("eos_token_id") if isinstance(cfg, dict) else None
            eos = eos if isinstance(eos, list) else [] if eos is None else [eos]
            if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in eos):
                raise ValueError(f"{file}: {inner + '.' if inner else ''}eos_token_id must be a token id or a list "
                                 f"of them, got {eos!r}")
            return eos
        return []

    def token_id(self, token: str):
        if self._sp is not None:
            i = self._sp.piece_to_id(token)
            return None if i == self._sp.unk_id() and token != self._sp.id_to_piece(i) else i
        return self._hf.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        if self._sp is not None:
            return self._sp.encode(text)
        return self._hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self._sp is not None:
            return self._sp.decode(ids)
        return self._hf.decode(ids, skip_special_tokens=False)

    def decode_continuation(self, ids) -> str:
        """The text `ids` add after earlier text (a completion after its prompt, a completion's last
        tokens after its first): decoded behind an anchor token whose text is then cut off. A text
        decoded on its own loses the space of a first token that starts a word (SentencePiece, and
        Metaspace tokenizers), so a completion's `▁minus` read as `minus`: a stop string ` minus` was
        missed and the stored text was not what followed the prompt (vLLM decodes in context too)."""
        ids = [int(i) for i in ids]
        anchor = self._anchor()
        if anchor is None or not ids:
            return self.decode(ids)
        return self._behind(anchor, ids)

    def _behind(self, anchor: tuple[int, str], ids: list[int]) -> str:
        both = self.decode([anchor[0]] + ids)
        return both[len(anchor[1]):] if both.startswith(anchor[1]) else self.decode(ids)

    def _anchor(self) -> Optional[tuple[int, str]]:
        """(id, text) of the token to decode behind: the first one-token word of ANCHOR_WORDS that reads
        every split of the ANCHOR_PROBES texts as it reads in context (a word-final token for decoders
        that join pieces by an end-of-word suffix, a `▁word` where a vocabulary has no bare letters).
        None (decoded on their own, as before) when none does."""
        if not hasattr(self, "_anchor_token"):
            self._anchor_token = None
            # (completion, its text in context) of every split of the probes the vocabulary spells back
            # (unknown tokens read the same behind any anchor)
            cases = []
            for text in ANCHOR_PROBES:
                ids = self.encode(text)
                whole = self.decode(ids)
                if whole.strip() == text:
                    heads = (self.decode(ids[:j]) for j in range(1, len(ids)))
                    cases += [(ids[j:], whole[len(h):]) for j, h in enumerate(heads, 1) if whole.startswith(h)]
            for word, i in self._anchor_candidates():
                anchor = (i, self.decode([i]))
                if all(self._behind(anchor, ids) == expected for ids, expected in cases):
                    self._anchor_token = anchor
                    break
        return self._anchor_token

    def _anchor_candidates(self):
        """(word, token) pairs to try as anchors: the vocabulary's end-of-word suffixed piece for the word
        first (a bare piece glues onto what follows where a decoder joins pieces by that suffix), then
        its word-start marked ones, its own encoding when that is one token, the bare piece; only tokens
        that read as the word (not an unknown-token stand-in) and do not end a sequence."""
        def one_token(word: str) -> Optional[int]:
            encoded = self.encode(word)
            return encoded[0] if len(encoded) == 1 else None
        kinds = (lambda w: self.token_id(w + "</w>"), lambda w: self.token_id("\u2581" + w),  # (▁)
                 lambda w: self.token_id("\u0120" + w), one_token, self.token_id)  # (Ġ)
        for kind in kinds:  # each kind for every word before the next kind
            for word in ANCHOR_WORDS:
                i = kind(word)
                if i is not None and i not in self.eos_ids and self.decode([i]).strip() == word:
                    yield word, i

    def fingerprint(self) -> str:
        """A short hash of the vocabulary (every token and its id): token ids written with one
        tokenizer mean the same text under another only when their fingerprints agree."""
        import hashlib

        if self._sp is not None:
            pieces = [self._sp.id_to_piece(i) for i in range(self.vocab_size)]
        else:
            vocab = self._hf.get_vocab(with_added_tokens=True)
            pieces = sorted(vocab, key=vocab.__getitem__)
        return hashlib.sha256("\n".join(pieces).encode("utf-8", "surrogatepass")).hexdigest()[:16]

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render a chat with the tokenizer's own template (transformers' sandboxed jinja renderer)."""
        if not self.chat_template:
            raise ConfigError("data.tokenizer", f"{self.path}: no chat_template in tokenizer_config.json "
                             "(or chat_template.jinja); use rl.template=r1_zero or raw")
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            rendered, _ = render_jinja_template([messages], chat_template=self.chat_template,
                                                add_generation_prompt=add_generation_prompt,
                                                **{k: v for k, v in self.special.items() if v is not None})
        except Exception as e:  # the template's own raise_exception (e.g. "no system role"), or its jinja errors
            raise DataError(f"{self.path}: the tokenizer's chat template refused this chat "
                            f"({type(e).__name__}: {e})") from None
        return rendered[0]


# How a conversation becomes tokens (`data.sft_template`, see data/sft.py): the template's text pieces
# encoded one by one, each marked learned or not, so the learned span is exact in tokens
SFT_TEMPLATES = ("auto", "model", "r1", "raw")


def resolve_template(template: str, tok: Tokenizer) -> str:
    """The template `auto` stands for with this tokenizer; a template it cannot render is refused."""
    if template not in SFT_TEMPLATES:
        raise ConfigError("data.sft_template", f"expected one of {SFT_TEMPLATES}, got {template!r}")
    has_own = bool(getattr(tok, "chat_template", None))
    if template == "model" and not has_own:
        raise ConfigError("data.sft_template", f"model: tokenizer {getattr(tok, 'path', tok)} has no chat_template "
                          "(tokenizer_config.json or chat_template.jinja); use r1 or raw")
    return ("model" if has_own else "r1") if template == "auto" else template


def _model_template_pieces(messages: list[dict], tok: Tokenizer) -> list[tuple[str, bool]]:
    """(text, learned) pieces of a conversation rendered by the tokenizer's own chat template."""
    pieces, done = [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tok.apply_chat_template(messages[:i], add_generation_prompt=True)
        through = tok.apply_chat_template(messages[:i + 1], add_generation_prompt=False)
        if not before.startswith(done) or not through.startswith(before):
            raise DataError(f"data.sft_template=model: the chat template does not render this conversation as a "
                            f"growing text (turn {i} rewrites earlier turns, e.g. drops old thoughts); "
                            "use data.sft_template=r1 or raw")
        reply = through[len(before):]
        if "".join(m["content"].split()) not in "".join(reply.split()):
            # e.g. DeepSeek-R1's template keeps only what follows </think>: the thought would never be learned
            raise DataError(f"data.sft_template=model: the chat template does not render assistant turn {i} whole "
                            f"(it renders {reply[:80]!r} for {m['content'][:80]!r}; DeepSeek-R1's template drops "
                            f"the thought before </think>), so SFT would not learn what it drops; use "
                            f"data.sft_template=r1 or raw")
        pieces += [(before[len(done):], False), (reply, True)]
        done = through
    return pieces


def render(messages: list[dict], tok: Tokenizer, template: str = "r1") -> tuple[list[int], list[bool]]:
    """Token ids and a mask that is True on the tokens the model learns (assistant turns + their end)."""
    ids, learn = [], []

    def add(text: str, trained: bool):
        piece = tok.encode(text)
        ids.extend(piece)
        learn.extend([trained] * len(piece))

    template = resolve_template(template, tok)
    if template == "model":
        for text, trained in _model_template_pieces(messages, tok):
            add(text, trained)
        return ids, learn
    if template == "raw":
        if getattr(tok, "add_bos", False) and tok.bos_id is not None:
            ids, learn = [tok.bos_id], [False]
        context = []
        for m in messages:
            if m["role"] != "assistant":
                context.append(m["content"])
                continue
            if context:
                add("\n".join(context), False)
                context = []
            add(m["content"], True)
            ids.append(tok.eos_id)
            learn.append(True)
        return ids, learn
    add(BOS, False)
    for m in messages:
        if m["role"] == "system":
            add(m["content"], False)
        elif m["role"] == "user":
            add(USER + m["content"], False)
        else:
            add(ASSISTANT, False)
            add(m["content"] + EOS, True)
    return ids, learn


def render_sampled(prompt_ids: list[int], completion_ids: list[int], eos_id: Optional[int],
                   ends: tuple[int, ...] = ()) -> tuple[list[int], list[bool]]:
    """A rejection-sampled record as the model saw and wrote it: the sampled tokens are learned as
    they are, then EOS (when the sample did not end with it)."""
    ended = completion_ids[-1] == eos_id or completion_ids[-1] in ends  # ends: the tokenizer's other end ids
    tail = [eos_id] if eos_id is not None and not ended else []
    return list(prompt_ids) + list(completion_ids) + tail, [False] * len(prompt_ids) + [True] * (len(completion_ids) + len(tail))


def check_fits(tok: Tokenizer, model_vocab: int) -> None:
    """A token id past the embedding would index out of range: refuse before any weight exists."""
    if tok.vocab_size > model_vocab:
        raise ConfigError("data.tokenizer", f"{tok.path} has {tok.vocab_size} tokens but the model's embedding "
                          f"has model.vocab_size={model_vocab} rows")


def train_sentencepiece(texts, prefix: str, vocab_size: int) -> str:
    """Train a small BPE sentencepiece model with the chat markers as atomic symbols."""
    import sentencepiece as spm

    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    texts = list(texts)
    # train under a temporary name beside the target, then rename: an existing tokenizer is
    # replaced only by a complete one, never left half-written by a crash or a refusal
    tmp = _temporary(prefix, os.getpid())
    _remove_dead_temporaries(prefix)
    try:
        try:
            _train_spm(spm, texts, tmp, vocab_size)
        except RuntimeError as e:
            # BPE needs an exact size; a small corpus supports fewer pieces - take what it supports
            found = re.search(r"value <= (\d+)", str(e))
            if not found:
                raise
            _train_spm(spm, texts, tmp, int(found.group(1)))
        for ext in (".vocab", ".model"):  # .model last: its presence means the pair is complete
            os.replace(tmp + ext, prefix + ext)
    finally:
        for ext in (".model", ".vocab"):
            if os.path.exists(tmp + ext):
                os.remove(tmp + ext)  # this call's own temporary files
    return prefix + ".model"


def _temporary(prefix: str, pid: int) -> str:
    """The temporary name process `pid` trains `prefix` under (sentencepiece adds .model and .vocab)."""
    return os.path.join(os.path.dirname(os.path.abspath(prefix)), f".{os.path.basename(prefix)}.tmp-{pid}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or no pid this system has
        return True
    return True


def _remove_dead_temporaries(prefix: str) -> None:
    """A training killed outright (kill -9, OOM) ran no `finally`: its temporary files stay beside the
    target. Remove those whose process is dead: only this function's own names (.<name>.tmp-<pid>.model
    and .vocab, regular files), never another file; a live process's (or a reused pid's) are left."""
    directory, name = os.path.split(os.path.abspath(prefix))
    own = re.compile(rf"\.{re.escape(name)}\.tmp-(\d+)\.(?:model|vocab)")
    for entry in os.listdir(directory):
        found = own.fullmatch(entry)
        path = os.path.join(directory, entry)
        if found and not _alive(int(found.group(1))) and os.path.isfile(path) and not os.path.islink(path):
            try:
                os.remove(path)
            except FileNotFoundError:  # another build removed it first
                pass


def _train_spm(spm, texts: list[str], prefix: str, vocab_size: int) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=prefix, vocab_size=vocab_size, model_type="bpe",
        user_defined_symbols=CHAT_SYMBOLS, byte_fallback=True, character_coverage=1.0,
        bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, split_digits=True, add_dummy_prefix=False,
        normalization_rule_name="identity", minloglevel=2, num_threads=1,
    )


def load_tokenizer(path: str, what: str = "data.tokenizer") -> Tokenizer:
    """Tokenizer(path), with a missing, corrupt or foreign file reported as a DataError naming it."""
    try:
        return Tokenizer(path)
    except R1MegaError:
        raise
    except Exception as e:  # tokenizers/sentencepiece raise bare Exception/RuntimeError on bad files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{what} {path}: cannot load a tokenizer ({msg}); expected a tokenizer.json, a "
                        f"directory holding one, or a sentencepiece .model file") from None
