"""Language consistency: the share of a chain of thought's words written in the target language.

DeepSeek-R1's language-consistency reward is "the proportion of target language words in the
CoT"; the rejection filter keeps a sample when that share reaches its threshold. Both call
language_share here.

Words, by script (one pass of one regex over the text):
  Latin, Cyrillic, Greek, Arabic, Hebrew, Devanagari, Hangul: runs of letters of that script
  kana, Han (CJK ideographs): one word per character (the languages write no spaces)
  other letters (Thai, ...): a word in no target language
Neutral (not words at all): digits in any script, punctuation, mathematical symbols, LaTeX commands
(\\frac, \\sqrt, ...), function names (sin, log, gcd, ...) and single Latin or Greek letters
(variables: x, n, π). So a thought of pure mathematics ("3+4=7", "x^2 = 4") has no words:
language_share is None, which the reward scores as consistent (1.0) and the filter keeps.

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
on which statistical detectors guess (langdetect's answers also vary run to run unless seeded); a
function-word count is deterministic, linear, dependency-free and decides the cases that matter (an
English reward must not pay for French or Russian); it cannot tell apart Latin-script languages
outside its lexicons (they count as whichever listed language they share words with, or the target).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Optional

from r1mega.judge.lexicons import LATIN_LANGUAGES, LATIN_LEXICON, MATH_WORDS

KANA_FOR_JAPANESE = 0.1
SCRIPT_LANGUAGE = {"cyrillic": "ru", "greek": "el", "arabic": "ar", "hebrew": "he", "devanagari": "hi",
                   "hangul": "ko"}
ALIASES = {"uk": "ru", "bg": "ru", "sr": "ru", "fa": "ar", "ur": "ar", "mr": "hi", "ne": "hi"}
LANGUAGES = tuple(sorted({*LATIN_LANGUAGES, *SCRIPT_LANGUAGE.values(), *ALIASES, "ja", "zh"}))

_LATEX = r"\\[A-Za-z]+"
_TOKEN = re.compile("|".join([
    f"(?P<latex>{_LATEX})",
    r"(?P<latin>[A-Za-z\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u024F\u1E00-\u1EFF\u0300-\u036F]+)",
    r"(?P<cyrillic>[\u0400-\u052F]+)",
    r"(?P<greek>[\u0370-\u03FF\u1F00-\u1FFF]+)",
    r"(?P<arabic>[\u0600-\u065F\u066A-\u06EF\u06FA-\u06FF\u0750-\u077F\u08A0-\u08FF]+)",
    r"(?P<hebrew>[\u0590-\u05FF]+)",
    r"(?P<devanagari>[\u0900-\u0965\u0970-\u097F]+)",
    r"(?P<hangul>[\uAC00-\uD7AF\u1100-\u11FF\u3130-\u318F]+)",
    r"(?P<kana>[\u3041-\u309F\u30A0-\u30FA\u30FC-\u30FF])",
    r"(?P<han>[\u3400-\u4DBF\u4E00-\u9FFF\uF900-\uFAFF])",
    r"(?P<end>[.!?;\n\u3002\uFF01\uFF1F])",
    r"(?P<other>[^\W\d_]+)",
]))


def canonical(language: str) -> str:
    """The language code the counts use (uk -> ru, ...); ValueError for one it cannot judge."""
    lang = ALIASES.get(language, language)
    if lang not in LANGUAGES:
        raise ValueError(f"language {language!r}: choose from {LANGUAGES}")
    return lang


def word_languages(text: str, target: str) -> Counter:
    """Words of the text per language ('other' for letters of no listed language)."""
    target = canonical(target)
    counts: Counter = Counter()
    sentence: list[str] = []  # Latin words of the sentence being read
    undecided = 0  # Latin words of sentences without a winner
    points: Counter = Counter()  # lexicon points over the whole text
    kana = han = 0

    def close_sentence() -> None:
        nonlocal undecided
        if not sentence:
            return
        score: Counter = Counter()
        for w in sentence:
            score.update(LATIN_LEXICON.get(w.lower(), ()))
        points.update(score)
        best = score.most_common(2)
        if best and (len(best) == 1 or best[0][1] > best[1][1]):
            counts[best[0][0]] += len(sentence)
        else:
            undecided += len(sentence)
        sentence.clear()

    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "latin":
            if len(m.group()) > 1 and m.group().lower() not in MATH_WORDS:
                sentence.append(m.group())
        elif kind == "end":
            close_sentence()
        elif kind == "kana":
            kana += 1
        elif kind == "han":
            han += 1
        elif kind == "greek":
            if len(m.group()) > 1:
                counts["el"] += 1
        elif kind in SCRIPT_LANGUAGE:
            counts[SCRIPT_LANGUAGE[kind]] += 1
        elif kind == "other":
            counts["other"] += 1
    close_sentence()
    if undecided:
        best = points.most_common(2)
        if best and (len(best) == 1 or best[0][1] > best[1][1]):
            counts[best[0][0]] += undecided
        else:
            counts[target if target in LATIN_LANGUAGES else "latin"] += undecided
    japanese = kana and kana >= KANA_FOR_JAPANESE * (kana + han)
    counts["ja"] += kana + (han if japanese else 0)
    counts["zh"] += 0 if japanese else han
    return +counts  # drop zeros


def language_share(text: str, target: str) -> Optional[float]:
    """Share of the text's words in the target language; None when it has no words at all."""
    counts = word_languages(text, target)
    total = sum(counts.values())
    return None if total == 0 else counts[canonical(target)] / total
