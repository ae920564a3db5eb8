"""Text as it shows: the judge reads characters that look like others, or like nothing, as what a
reader sees (answers.py compares answers so, format.py asks for a thought and an answer that show).

    plain_characters  other scripts' digits (٧, ７), fullwidth forms (U+FF01-FF5E: ３／４ is 3/4), minus
                      signs (−, ﹣, ➖) and Unicode spaces as ASCII; invisible characters dropped
    latex_signs       the square root, superscripts and vulgar fractions as LaTeX (√2, x², 2¹⁰, 2½, 1⁄3)
    without_invisible the text without its invisible characters (language.py counts words so)
    shows_something   whether any character shows (not whitespace, not invisible)
Invisible: Unicode format characters (soft hyphen, zero-width space/joiners, direction marks, word
joiner, invisible operators, BOM) and the blank letters that render as nothing (Braille blank, Hangul
fillers, combining grapheme joiner, Khmer inherent vowels). Linear, one C-speed scan each, and free for
ASCII text.
"""
from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

_INVISIBLE_CHARS = ("\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e"
                    "\u2060-\u2064\u2066-\u206f\u2800\u3164\ufeff\uffa0")
INVISIBLE_CHARS = _INVISIBLE_CHARS  # as a regex class body (answers.py backs a window over them too)
_INVISIBLE = re.compile(f"[{_INVISIBLE_CHARS}]")
_SHOWING = re.compile(f"[^\\s{_INVISIBLE_CHARS}]")  # a character that shows
_AS_ASCII = {**{0xFF01 + i: 0x21 + i for i in range(0x5E)}, **dict.fromkeys(map(ord, "\u2212\ufe63\u2796"), "-"),
             **dict.fromkeys(map(ord, "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
                                      "\u200a\u202f\u205f\u3000"), " ")}
_SHOWN_AS_ASCII = re.compile("[" + "".join(map(chr, _AS_ASCII)) + "]")
_UNICODE_DIGIT = re.compile(r"(?![0-9])\d")  # a decimal digit of another script
_SUPERSCRIPTS = dict(zip("\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079\u207a\u207b", "0123456789+-"))
_VULGAR = "\u00bc\u00bd\u00be\u2150-\u215e"  # ¼ ½ ¾ ⅐ ... ⅞
_VULGAR_LATEX = {c: "\\frac{%d}{%d}" % Fraction(unicodedata.numeric(c)).limit_denominator(10).as_integer_ratio()
                 for c in "\u00bc\u00bd\u00be" + "".join(map(chr, range(0x2150, 0x215F)))}
# √ before a number, a letter or a parenthesised group (bounded: no rescan of a long unclosed one); a run
# of superscripts; a vulgar fraction; ⁄
_MATH_SIGNS = re.compile("√(\\d+(?:\\.\\d+)?|[A-Za-z]|\\([^()]{0,200}\\))?|[" + "".join(_SUPERSCRIPTS) + "]+|[" + _VULGAR + "]|\u2044")


def ascii_digits(s: str) -> str:
    """Every Unicode decimal digit as its ASCII digit (٧ and ７ are 7)."""
    if s.isascii():
        return s
    return _UNICODE_DIGIT.sub(lambda m: str(unicodedata.decimal(m.group())), s)


def without_invisible(s: str) -> str:
    """The text without its invisible characters (a word cut by a zero-width space is one word)."""
    return s if s.isascii() else _INVISIBLE.sub("", s)


def plain_characters(s: str) -> str:
    """The text as it shows, in ASCII where a character shows as an ASCII one (the translation runs
    only when such a character is there)."""
    if s.isascii():
        return s
    s = without_invisible(s)
    if _SHOWN_AS_ASCII.search(s):
        s = s.translate(_AS_ASCII)
    return ascii_digits(s)


def latex_signs(s: str) -> str:
    """The square root, superscripts and vulgar fractions as the LaTeX they show (√2 -> \\sqrt{2}, x² ->
    x^{2}, 2½ -> 2\\frac{1}{2}, 1⁄3 -> 1/3). A Python step per sign: callers keep it to short answers."""
    return _MATH_SIGNS.sub(_as_latex, s) if not s.isascii() and _MATH_SIGNS.search(s) else s


def _as_latex(m: re.Match) -> str:
    sign = m.group()
    if sign[0] == "√":
        arg = m.group(1)
        return "\\sqrt" if arg is None else f"\\sqrt{{{arg[1:-1] if arg[0] == '(' else arg}}}"
    if sign[0] in _SUPERSCRIPTS:
        return "^{" + "".join(_SUPERSCRIPTS[c] for c in sign) + "}"
    if sign == "\u2044":  # FRACTION SLASH
        return "/"
    return _VULGAR_LATEX[sign]


def shows_something(s: str) -> bool:
    """Whether any character of the text shows (str.strip() keeps a zero-width space or a Braille blank)."""
    return _SHOWING.search(s) is not None
