"""Answers that say more than one thing, or less than they seem to: never credited.

A policy under RL is paid for any reading of its answer that matches, so the judge refuses (no final
answer, or not equal) what a human grader would not credit:
  several answers    every \\boxed{} and <answer> after the thought must agree (equivalent): "\\boxed{5}
                     ... \\boxed{6}", "<answer>5</answer> \\boxed{6}", a box hidden in a comment; more
                     than MAX_ANSWERS of them is no answer (and bounds the work)
  lossy answers      math-verify's LaTeX parser drops what it does not know and keeps a part: "5 \\approx 6"
                     read 5; "5 \\quad 6" and "5 \\, 6" read 11 (a mixed number); "\\phantom{6}5" read 11;
                     a box inside the answer; a negated value ("\\not= 5", "\\neg 5"); a hedge in \\text{}
                     ("5 \\text{ or 6}" read 5); a LaTeX comment ("5 % 6", shown as 5) -- such an answer is
                     compared as a string only (LOSSY; see unreadable)
  reordered text     bidirectional controls (U+202A-202E, U+2066-2069, U+200E/F, U+061C) show "12" as
                     "21"; combining marks over a digit or a sign (5 U+0338: 5 struck through) -- no answer
  false equations    "6 = 5" or "1 = 2 = 5" against 5 (math-verify compared the last side only): a chain whose
                     sides are all numbers must hold (equations.py)
  negated fallbacks  the last-number and "A:" fallbacks refuse "not 5", "5 is wrong", "5 or 6", the last
                     of a list, and two numbers stated as the answer ("Answer: 5 ... Answer: 6")
"""
from __future__ import annotations

import re
import unicodedata
from typing import Optional

from r1mega.judge.braces import BOX_BRACE, closing_brace

MAX_ANSWERS = 16
BOXES = ("\\boxed", "\\fbox")
_BOX_TOKEN = re.compile(r"\s+([0-9A-Za-z])")
# commands math-verify's LaTeX parser drops (keeping what is around them), that change what an answer
# says (approximately, not, struck out, hidden), and a box inside the answer
_LOSSY = re.compile(r"\\(?:approx|thickapprox|not|neg|lnot|ne|neq|nleq|ngeq|phantom|hphantom|vphantom|smash|cancel|"
                    r"bcancel|xcancel|sout|color|textcolor|boxed|fbox|framebox|llap|rlap|clap|mathllap|mathrlap)(?![A-Za-z])")
_SYNONYMS = {"\\neq": "\\ne", "\\lnot": "\\neg", "\\fbox": "\\boxed"}
# two numbers with only spacing (or dots) between them: the parser adds them (5 \quad 6 = 11)
_SPACED_NUMBERS = re.compile(r"(?<![\w^.\\])\d+(?:\.\d+)?(?:\s|~|\\[,;:! ]|\\q?quad(?![A-Za-z])|\\[lc]?dots(?![A-Za-z])|\\hspace\{[^{}]*\})+[-+]?\.?\d")
# words in \text{} that make an answer say two things, or the opposite ("5 \text{ or 6}" was read 5)
_TEXT = re.compile(r"\\(?:text[a-z]*|math[a-z]*|[mh]box|operatorname\*?|emph)\s*\{([^{}]*)\}")
_HEDGE_WORDS = re.compile(r"\b(?:or|and|not|nor|no|maybe|perhaps|possibly|either|but|except|unless|otherwise|else|"
                          r"wrong|incorrect|false|approximately|about|roughly|around)\b", re.IGNORECASE)
_CONNECTIVES = ("or", "and", ",", "")
_COMMENT = re.compile(r"(?<!\\)%(?!\s*$)")  # LaTeX's comment sign, unless it ends the answer (a percent)
_LIST_BEFORE = re.compile(r"\d\s*[,;]\s*$")  # "x = 1, 2, 3, 4, 5": the last of a list
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")  # embeddings, overrides, isolates
_BIDI_MARK = re.compile("[\u061c\u200e\u200f]")  # direction marks: reorder only between characters
_NEGATION = re.compile(r"(?:\b(?:not|no|never|isn't|isnt|wrong|incorrect|false|neither|nor|or|either|maybe|perhaps|"
                       r"possibly|except|unless|instead)\b|≠|\\neq?\b|!=)", re.IGNORECASE)


def _closing(text: str, start: int) -> int:
    return closing_brace(text, start, len(text))


def boxes(text: str) -> Optional[list[str]]:
    """The contents of the top-level \\boxed{...} / \\fbox{...} of a text, in order (a box inside
    another is part of that box's content); None when there are more than MAX_ANSWERS boxes."""
    starts = []
    for box in BOXES:
        at = text.find(box)
        while at >= 0:
            starts.append((at, len(box)))
            if len(starts) > MAX_ANSWERS:
                return None
            at = text.find(box, at + 1)
    found, covered = [], -1
    for at, n in sorted(starts):
        if at < covered:
            continue
        brace = BOX_BRACE.match(text, at + n)  # \\boxedx is another command
        if not brace:
            token = _BOX_TOKEN.match(text, at + n)  # \\boxed 6: LaTeX boxes the one token
            if token:
                found.append(token.group(1))
            continue
        close = _closing(text, brace.end())
        if close >= 0:
            found.append(text[brace.end():close])
            covered = close
    return found


def tagged(text: str) -> Optional[list[str]]:
    """The texts of the closed <answer>...</answer> pairs of a text, in order; None past MAX_ANSWERS."""
    found, at = [], 0
    while True:
        start = text.find("<answer>", at)
        if start < 0:
            return found
        close = text.find("</answer>", start)
        if close < 0:
            return found
        nxt = text.rfind("<answer>", start, close)  # <answer> <answer>5</answer>: the inner one
        found.append(text[nxt + len("<answer>"):close])
        if len(found) > MAX_ANSWERS:
            return None
        at = close + len("</answer>")


def shows(answer: str) -> bool:
    """Does the answer show anything (not only spaces or invisible characters)?"""
    from r1mega.judge.characters import shows_something

    return shows_something(answer)


def reordered(answer: str) -> bool:
    """Does the answer hold characters that change how it shows: bidirectional controls, or a combining
    mark on something other than a letter (NFC first: an accented letter is one letter)?"""
    if answer.isascii():
        return False
    if _BIDI.search(answer) or _BIDI_MARK.search(answer.strip("\u061c\u200e\u200f \t\n")):
        return True
    s = unicodedata.normalize("NFC", answer)
    return any(unicodedata.combining(c) or unicodedata.category(c) == "Me" for i, c in enumerate(s)
               if i and not s[i - 1].isalpha() and not unicodedata.combining(s[i - 1]))


def lossy(answer: str, other: str) -> bool:
    """Would math-verify read `answer` as less than it says (and `other`, the side it is compared with,
    does not say the same thing)? Then the two are compared as strings only."""
    said = {_SYNONYMS.get(m.group(), m.group()) for m in _LOSSY.finditer(other)} if "\\" in other else set()
    if any(_SYNONYMS.get(m.group(), m.group()) not in said for m in _LOSSY.finditer(answer)):
        return True
    if _SPACED_NUMBERS.search(answer) and not _SPACED_NUMBERS.search(other):
        return True
    if _COMMENT.search(answer) and not _COMMENT.search(other):  # "5 % 6" shows as 5 and was read 5 x 6 / 100
        return True
    for m in _TEXT.finditer(answer):  # words the parser drops as a unit: "5 \text{ or 6}", "\text{not } 5"
        words = m.group(1)
        if words.strip().lower() in _CONNECTIVES:  # 5 \\text{ or } 6: math-verify reads the set {5, 6}
            continue
        if m.group() not in other and (_HEDGE_WORDS.search(words) or (any(c.isdigit() for c in words)
                                                                      and answer.strip() != m.group())):
            return True
    return False


def negated_around(text: str, start: int, end: int) -> bool:
    """Does the text around a fallback's number (text[start:end]) negate or hedge it: "not 5", "5 is
    wrong", "5 or 6", "5? No"? Read on the 40 characters before it and its sentence after it."""
    before = text[max(0, start - 24):start]  # the clause before it: "not 5", "either 4 or 5", "≠ 5"
    before = before[max(before.rfind(c) for c in ".,;:\n") + 1:] if not _LIST_BEFORE.search(before) else before
    after = re.split(r"[.\n]", text[end:end + 80], maxsplit=1)[0] if not text[end:end + 1] == "?" else text[end:end + 80]
    return bool(_NEGATION.search(before) or _NEGATION.search(after) or _LIST_BEFORE.search(before))


_STATED = re.compile(r"\b(?:final\s+)?answer\s*(?:is|:|=)\s*\$?\s*([-+]?\d[\d,]*(?:\.\d+)?(?:/\d+)?)", re.IGNORECASE)


def stated_twice(text: str) -> bool:
    """Does a response without a box or tags state two different numbers as its answer ("Answer: 5 ...
    Answer: 6")? The fallback would read the last; a grader reads a hedge."""
    said = {m.group(1).replace(",", "") for m in _STATED.finditer(text[-1 << 16:])}
    return len(said) > 1
