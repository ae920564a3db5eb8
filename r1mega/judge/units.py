"""Units written after both answers must be the same unit (math-verify drops them: 5 cm equalled 5 km,
5 cm^2 equalled 5 cm, 5 hours 5 minutes).

A unit is the words of a \\text{}-like group ending the answer after a number ("5 \\text{ cm}",
"5\\,\\mathrm{km}^2"), or a known unit word after a space ("5 cm"; single letters stay variables). When
only one side writes a unit it is the question's unit and is ignored, as before; when both do, they
must name the same unit (abbreviation, full name and plural alike: cm, centimeter, centimetres) to the
same power. Converting between units (5 cm against 0.05 m) is not attempted: that stays not equal.
"""
from __future__ import annotations

import re
from typing import Optional

_SYNONYMS = {
    "mm": "millimeter millimetre", "cm": "centimeter centimetre", "m": "meter metre", "km": "kilometer kilometre",
    "in": "inch inche", "ft": "foot feet", "yd": "yard", "mi": "mile", "mg": "milligram", "g": "gram gm",
    "kg": "kilogram kilo", "ml": "milliliter millilitre", "l": "liter litre", "s": "sec second",
    "min": "minute", "h": "hr hour", "day": "", "week": "wk", "month": "", "year": "yr", "deg": "degree",
    "rad": "radian", "dollar": "usd", "cent": "", "mph": "", "kmh": "km/h", "mps": "m/s",
}
_CANON = {w: unit for unit, words in _SYNONYMS.items() for w in [unit] + words.split()}
_TEXT_UNIT = re.compile(r"(?<=[\d}])(?:\\[,;: !]|~|\s)*\\(?:text[a-z]*|mathrm|mbox|operatorname)\s*\{\s*([A-Za-z][A-Za-z/ .]*?)\s*\}"
                        r"\s*(?:\^\s*\{?\s*(\d)\s*\}?)?\s*$")
_WORD_UNIT = re.compile(r"(?<=\d)\s+([A-Za-z]{2,12})(?:\s*\^\s*\{?\s*(\d)\s*\}?)?\s*$")


def _canonical(words: str) -> str:
    w = " ".join(words.lower().replace(".", " ").split())
    if w in _CANON:
        return _CANON[w]
    if w.endswith("es") and w[:-2] in _CANON:
        return _CANON[w[:-2]]
    if w.endswith("s") and w[:-1] in _CANON:
        return _CANON[w[:-1]]
    return w[:-1] if w.endswith("s") and len(w) > 3 else w  # apples = apple


def unit(answer: str) -> Optional[tuple[str, str]]:
    """(the unit, its power) an answer ends with, else None."""
    if not answer or not answer.rstrip()[-1:].isalnum() and not answer.rstrip().endswith("}"):
        return None
    m = _TEXT_UNIT.search(answer)
    if m is None:
        m = _WORD_UNIT.search(answer)
        if m is None or m.group(1).lower() not in _CANON and _canonical(m.group(1)) not in _SYNONYMS:
            return None
    return _canonical(m.group(1)), m.group(2) or "1"


def different(a: str, b: str) -> bool:
    """Do both answers write a unit, and not the same one?"""
    ua = unit(a)
    if ua is None:
        return False
    ub = unit(b)
    return ub is not None and ua != ub
