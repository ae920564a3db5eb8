"""Language consistency: the share of a chain of thought's words written in the target language.

DeepSeek-R1's language-consistency reward is "the proportion of target language words in the
CoT"; the rejection filter keeps a sample when that share reaches its threshold. Both call
language_share here.

Words, by script (each counted by one character-class scan over the text):
  Latin, Cyrillic, Greek, Arabic, Hebrew, Devanagari, Hangul: runs of letters of that script
  kana, Han (CJK ideographs): one word per character (the languages write no spaces)
  other letters (Thai, ...): a word in no target language
Characters that show nothing (zero-width space, soft hyphen, ...: characters.py) are dropped first,
so they cannot cut a word into fragments no lexicon knows. Neutral (not words at all): digits in any
script, punctuation, mathematical symbols, LaTeX commands (\\frac, \\sqrt, ...), function names
(sin, log, gcd, ...) and single Latin or Greek letters (variables: x, n, π). So a thought of pure
mathematics ("3+4=7", "x^2 = 4") has no words: language_share is None, which the reward scores as
consistent (1.0) and the filter keeps.

Which language a word is in:
  Cyrillic -> ru (also uk, bg, sr: the script is the language here), Greek -> el, Arabic -> ar (fa,
  ur), Hebrew -> he, Devanagari -> hi (mr, ne), Hangul -> ko
  Han -> ja when the text's kana are at least KANA_FOR_JAPANESE of its Han + kana characters
         (kanji with kana is Japanese), else zh; kana -> ja
  Latin -> one of en, fr, de, es, it, pt, nl, decided per sentence by function words: each language
         scores one point per word of the sentence in its lexicon (lexicons.py); the best score takes
         the sentence's Latin words. A sentence without a winner (no lexicon word, or a tie) takes
         the text's winner (all sentences' points summed); a text with none counts its Latin words
         as the target language when the target is written in Latin script.
Why a lexicon and not a detector library: thoughts mix mathematics, variables and short sentences,
on which statistical detectors guess (bench/language_detect.py: langdetect, seeded, misses 3 of 20
short math sentences and takes ~90 ms each with its profile loading; none is a dependency); a
function-word count is deterministic, linear, dependency-free and decides the cases that matter (an
English reward must not pay for French or Russian); it cannot tell apart Latin-script languages
outside its lexicons (they count as whichever listed language they share words with, or the target).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Optional

from r1mega.judge.characters import without_invisible
from r1mega.judge.lexicons import LATIN_LANGUAGES, LATIN_LEXICON, MATH_WORDS

KANA_FOR_JAPANESE = 0.1
SCRIPT_LANGUAGE = {"cyrillic": "ru", "greek": "el", "arabic": "ar", "hebrew": "he", "devanagari": "hi",
                   "hangul": "ko"}
ALIASES = {"uk": "ru", "bg": "ru", "sr": "ru", "fa": "ar", "ur": "ar", "mr": "hi", "ne": "hi"}
LANGUAGES = tuple(sorted({*LATIN_LANGUAGES, *SCRIPT_LANGUAGE.values(), *ALIASES, "ja", "zh"}))

_RANGES = {  # the letters of each script (digits of Arabic and Devanagari left out: they are neutral)
    "latin": "A-Za-z\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u024F\u1E00-\u1EFF\u0300-\u036F",
    "cyrillic": "\u0400-\u052F",
    "greek": "\u0370-\u03FF\u1F00-\u1FFF",
    "arabic": "\u0600-\u065F\u066A-\u06EF\u06FA-\u06FF\u0750-\u077F\u08A0-\u08FF",
    "hebrew": "\u0590-\u05FF",
    "devanagari": "\u0900-\u0965\u0970-\u097F",
    "hangul": "\uAC00-\uD7AF\u1100-\u11FF\u3130-\u318F",
    "kana": "\u3041-\u309F\u30A0-\u30FA\u30FC-\u30FF",
    "han": "\u3400-\u4DBF\u4E00-\u9FFF\uF900-\uFAFF",
}
# each pattern is one character class, scanned once over the text in C (no per-character alternation)
_LATEX = re.compile(r"\\[A-Za-z]+")
_LATIN = re.compile(f"[{_RANGES['latin']}]+")
_RUNS = {k: re.compile(f"[{v}]+") for k, v in _RANGES.items() if k in SCRIPT_LANGUAGE}
_GREEK_WORD = re.compile(f"[{_RANGES['greek']}]{{2,}}")  # a single Greek letter is a variable
_KANA, _HAN = re.compile(f"[{_RANGES['kana']}]"), re.compile(f"[{_RANGES['han']}]")
_OTHER = re.compile(f"[^\\W\\d_{''.join(_RANGES.values())}]+")
_SENTENCE_END = re.compile(r"[.!?;\n\u3002\uFF01\uFF1F]")


def canonical(language: str) -> str:
    """The language code the counts use (uk -> ru, ...); ValueError for one it cannot judge."""
    lang = ALIASES.get(language, language)
    if lang not in LANGUAGES:
        raise ValueError(f"language {language!r}: choose from {LANGUAGES}")
    return lang


def _winner(score: Counter) -> Optional[str]:
    best = score.most_common(2)
    return best[0][0] if best and (len(best) == 1 or best[0][1] > best[1][1]) else None


def word_languages(text: str, target: str) -> Counter:
    """Words of the text per language ('other' for letters of no listed language)."""
    target = canonical(target)
    text = _LATEX.sub(" ", without_invisible(text))  # a zero-width space inside a word does not split it
    counts: Counter = Counter()
    for script, rx in _RUNS.items():
        if script != "greek":
            counts[SCRIPT_LANGUAGE[script]] += len(rx.findall(text))
    counts["el"] += len(_GREEK_WORD.findall(text))
    counts["other"] += len(_OTHER.findall(text))
    undecided = 0  # Latin words of sentences without a winner
    points: Counter = Counter()  # lexicon points over the whole text
    for sentence in _SENTENCE_END.split(text.lower()):
        words = [w for w in _LATIN.findall(sentence) if len(w) > 1 and w not in MATH_WORDS]
        if not words:
            continue
        score: Counter = Counter()
        for langs in map(LATIN_LEXICON.get, words):
            if langs:
                for lang in langs:
                    score[lang] += 1
        points.update(score)
        lang = _winner(score)
        if lang is None:
            undecided += len(words)
        else:
            counts[lang] += len(words)
    if undecided:
        counts[_winner(points) or (target if target in LATIN_LANGUAGES else "latin")] += undecided
    kana, han = len(_KANA.findall(text)), len(_HAN.findall(text))
    japanese = kana and kana >= KANA_FOR_JAPANESE * (kana + han)
    counts["ja"] += kana + (han if japanese else 0)
    counts["zh"] += 0 if japanese else han
    return +counts  # drop zeros


def language_share(text: str, target: str) -> Optional[float]:
    """Share of the text's words in the target language; None when it has no words at all."""
    counts = word_languages(text, target)
    total = sum(counts.values())
    return None if total == 0 else counts[canonical(target)] / total
