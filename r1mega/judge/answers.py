"""The final answer of a response and whether it equals the reference (one rule for everyone).

final_answer(text, fallback) reads only the visible text after the thought (response.py):
  1. the last closed <answer>...</answer> (its last \\boxed{...} when it holds one, else its text)
  2. else the last closed \\boxed{...} (balanced braces; \\boxed {...} too)
     every box and every tagged answer after the thought must agree (hedges.py: "\\boxed{5} ...
     \\boxed{6}" is no answer), and every form the response writes its answer in must be right
  3. else the fallback (refused when the number is negated or hedged: "not 5", "5 or 6"):
       "auto"         (the default) the rest of the line after the last "A:" (the built-in corpus's
                      "Q: 3+4= A: 7" form); without one, the last number (a chat model's "3 + 18 = 21")
       "a_colon"      only the "A:" rule
       "last_number"  only the last number: optional sign, digits, optional decimals or /denominator
       "none"         no fallback: an answer needs <answer> or \\boxed
An answer is read as it shows (characters.py): other scripts' digits, fullwidth forms (３／４ is 3/4),
minus signs (−, ﹣, ➖) and spaces as ASCII, invisible characters dropped (math-verify stopped at or
skipped them: 1<ZWSP>2 was 1); √2, x², 2¹⁰, 2½ are compared as the LaTeX they show.
Digits grouped in threes by a thin space or the like (1\\,000, 1~000, 1 000, a no-break space: LaTeX
renders them as one number) are one number (math-verify read 1\\,000 as 1 x 000 and 12\\,500 as 512); the
last-number rule does not join groups parted by a plain space ("day 5 100 people" ends in 100).

equivalent(a, b): the same string; else math-verify (symbolic / numeric: 1/2 = 0.5 = \\frac{1}{2});
else, when either side does not parse, the same string up to whitespace and case (multiple-choice
letters, words). A NaN answer is never correct, and an infinite one only against an infinite
reference (issue 23 saw "A: nan" judged correct). Numbers below 0.01 are compared at their own
scale (scale.py: math-verify's absolute tolerances judged 0.0 equal to 6.626\\times 10^{-34}). Values
named on one side (a=1, b=2) and bare on the other are compared in the names' order (assignments.py:
math-verify matched (2, 1) and \\{2, 1\\} with a=1, b=2). A number
too large to evaluate (9^{9^{9}}, (10^8)!: magnitude.py) is compared as a string only, never handed to sympy.
The answer is parsed whole as LaTeX or not at all (math-verify's other extractors read a part: "5 \\vee 6"
was 6); what the parser would misread is compared as a string (hedges.py: "5 \\approx 6", "5 \\quad 6",
"\\not= 5", "5 \\text{ or 6}"); an equation between numbers must hold (equations.py: "6 = 5"); a percent
is its number or its value (percent.py); an option letter is matched by the option an answer names
(choices.py); each response is judged within a CPU-time budget (budget.py).
"""
from __future__ import annotations

import re
from decimal import Decimal
from functools import lru_cache
from typing import Optional

from r1mega.judge import budget, choices, equations, hedges, intervals, percent, units
from r1mega.judge.assignments import named_against_bare
from r1mega.judge.braces import BOX_BRACE, closing_brace
from r1mega.judge.characters import INVISIBLE_CHARS, latex_signs, plain_characters
from r1mega.judge.limits import MAX_ANSWER_CHARS
from r1mega.judge.magnitude import too_large
from r1mega.judge.scale import smallest_magnitude, tolerances
from r1mega.judge.response import split_thought

FALLBACKS = ("auto", "a_colon", "last_number", "none")
BOXED = "\\boxed"
# 1,234.5 | -7 | 0.25 | 3/4 (each alternative consumes a digit run once: linear)
_NUMBER = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-+]?\d+(?:\.\d+)?(?:/\d+)?")
_DIGIT = re.compile(r"\d")  # any script's
_NAN = re.compile(r"[-+]?\s*(?:nan|\\mathrm\{nan\}|\\text\{nan\})", re.IGNORECASE)
# 1e+20, -2.5E-3: a number in scientific notation (the form str(float) gives a JSON answer like 1e-05);
# math-verify reads it as 1*e + 20 with Euler's e, so it is rewritten as m \times 10^{k} first
# (a mantissa's digit run splits one way: \d+\.?\d* tried every split of a long run before failing)
_SCIENTIFIC = re.compile(r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))[eE]([-+]?\d{1,3})")  # |k| < 1000: no power tower for sympy
# 6.02 \times 10^{10}, 6.02\cdot 10^{10}: the same number as LaTeX writes it
_TIMES_TEN = re.compile(r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*(?:\\times|\\cdot|\*|×|·)\s*10\^(?:\{\s*([-+]?\d{1,3})\s*\}|(\d))")
# up to 10^{300} a scientific number is written out in full (at most ~300 digits; math-verify reads a
# decimal mantissa as a binary float, so 6.02 x 10^{10} was 60199999999.999996, not 60200000000)
_WRITTEN_OUT = 300
# what a number of _NUMBER or a digit group of _GROUPED_IN_PROSE may be made of before plain_characters (any
# script's digits, signs, fractions, group separators down to \thinspace's letters, invisible characters,
# fullwidth forms): a window must not start inside one; matched on the reversed text before the window
_IN_NUMBERS = re.compile(r"[\d\s.,+\-/~{}\\;:thinspace\u2212\ufe63\u2796\uff01-\uff5e" + INVISIBLE_CHARS + "]*")
# digits grouped in threes after a first group of 1-3 (1\,000; 12 345 678), not continuing a number, an
# exponent or a name; the separators LaTeX and typesetting use: \, \; \: \<space> \thinspace ~ and spaces
# (at most three between two groups: no long run is scanned again from each digit)
_GROUP_SEP = r"(?:\\[,;: ]|\\thinspace(?![A-Za-z])|~|[\u00a0\u2000-\u200a\u202f\u205f\u3000{}]){{1,3}}"
_FIRST_GROUP = r"\d(?<![\w.^]\d)\d{0,2}"  # a digit first, so the regex engine skips to digits
_GROUPED = re.compile(_FIRST_GROUP + "(?:" + _GROUP_SEP.format(" \t") + r"\d{3})+(?!\d)")
_GROUPED_IN_PROSE = re.compile(_FIRST_GROUP + "(?:" + _GROUP_SEP.format("") + r"\d{3})+(?!\d)")
_NOT_DIGIT = re.compile(r"\D+")
_INF = re.compile(r"[-+]?\s*(?:inf|infinity|\\infty|∞|oo|\\infinity)", re.IGNORECASE)


def last_boxed(text: str) -> Optional[str]:
    """Content of the last \\boxed{...} whose braces close (whitespace may come before the brace, as LaTeX
    allows: \\boxed {x}). Linear: when the last box does not close, an earlier box can only close before
    it (a box enclosing it would not close either), so each candidate is searched up to the previous
    candidate and no character is read twice."""
    end = len(text)
    at = text.rfind(BOXED, 0, end)
    while at >= 0:
        brace = BOX_BRACE.match(text, at + len(BOXED), end)  # \\boxedx is another command
        if brace:
            start = brace.end()
            close = closing_brace(text, start, end)
            if close >= 0:
                return text[start:close]
        end = at
        at = text.rfind(BOXED, 0, end)
    return None


def _tagged_answer(text: str) -> Optional[str]:
    close = text.rfind("</answer>")
    if close < 0:
        return None
    start = text.rfind("<answer>", 0, close)
    return None if start < 0 else text[start + len("<answer>"):close]


def _after_a_colon(text: str) -> Optional[str]:
    """The rest of the line after the last "A:" that starts a word ("DATA: 12" and "AREA:" are no answer)."""
    at = text.rfind("A:")
    while at > 0 and text[at - 1].isalnum():
        at = text.rfind("A:", 0, at)
    if at < 0:
        return None
    line = text[at + 2:].split("\n", 1)[0].strip()
    if hedges.negated_around(line, 0, 0):  # "A: not 5", "A: 5 or 6"
        return None
    return line or None


def _last_number(text: str) -> Optional[str]:
    """The last number, searched in windows from the end (doubling), so a long text with a number
    near its end is not scanned whole; a window never starts inside a number, and is read as it shows
    (plain_characters: "−5" is -5, "1<ZWSP>2" is 12)."""
    size, end = 4096, len(text)
    while True:
        start = max(0, end - size)
        if start > 0:  # back to the start of a number cut by the window, and the character before it,
            # which decides whether the digits continue a name (x12\,345: no first group)
            start = max(0, start - _IN_NUMBERS.match(text[start - 1::-1]).end() - 1)
        last, window = None, ""
        if _DIGIT.search(text, start, end):  # else no number here; so only the window holding one is translated
            window = plain_characters(ungrouped(text[start:end], prose=True))
            for last in _NUMBER.finditer(window):
                pass
        if last is not None:  # "not 5", "5 is wrong", "5 or 6": no answer (hedges.py)
            return None if hedges.negated_around(window, last.start(), last.end()) else last.group().replace(",", "")
        if start == 0:
            return None
        end, size = start, size * 2


def ungrouped(s: str, prose: bool = False) -> str:
    """Digits grouped in threes (1\\,000) as one number (1000); prose: not across a plain space."""
    if not _DIGIT.search(s):
        return s
    return (_GROUPED_IN_PROSE if prose else _GROUPED).sub(lambda m: _NOT_DIGIT.sub("", m.group()), s)


def answer_in(visible: str, fallback: str = "auto") -> Optional[str]:
    """The final answer in text that is already outside the thought."""
    return _answer_forms(visible, fallback)[0]


def _answer_forms(visible: str, fallback: str) -> tuple[Optional[str], list[str]]:
    """(the final answer, the other forms the response writes it in: "\\frac{8}{2}" beside "4")."""
    if fallback not in FALLBACKS:
        raise ValueError(f"answer fallback {fallback!r}: choose from {FALLBACKS}")
    tagged = _tagged_answer(visible)
    if tagged is not None:
        boxed = last_boxed(tagged)
        found: Optional[str] = boxed if boxed is not None else tagged
    else:
        found = last_boxed(visible)
    forms: list[str] = []
    if found is not None:
        found = _agreed(visible, found, forms)
    elif tagged is None:
        if found is None and fallback in ("auto", "a_colon"):
            found = _after_a_colon(visible)
        if found is None and fallback in ("auto", "last_number"):
            found = _last_number(visible)
        if found is not None and hedges.stated_twice(visible):  # "Answer: 5 ... Answer: 6"
            found = None
    if found is None or hedges.reordered(found):  # "\u202e12" shows as 21; 5 U+0338 is 5 struck through
        return None, []
    found = plain_characters(found).strip()
    return (found or None), [plain_characters(f).strip() for f in forms]


def _whole_box(s: str) -> str:
    """\\boxed{\\boxed{5}} is 5: a box that is the whole answer, layer by layer."""
    t = s.strip()
    while t.startswith(hedges.BOXES) and t.endswith("}"):
        inner = hedges.boxes(t)
        if not inner or len(inner) != 1 or t[t.index("{") + 1:-1] != inner[0]:
            break
        t = inner[0].strip()
    return t if t != s.strip() else s


def _agreed(visible: str, found: str, forms: list) -> Optional[str]:
    """The final answer when every answer after the thought (each box, each tagged answer without a
    box) says the same (equivalent), else None: a hedge (hedges.py). Its other forms go to `forms`."""
    boxed, tags = hedges.boxes(visible), hedges.tagged(visible)
    if boxed is None or tags is None:
        return None
    found = _whole_box(found)
    said = {_plain(found)}
    for other in boxed + [t for t in tags if not hedges.boxes(t)]:
        other = _whole_box(other)
        if _plain(other) in said or not hedges.shows(other):  # "put it in \\boxed{}": an empty box says nothing
            continue
        if len(said) >= 4 or not _same_value(found, other):
            return None
        said.add(_plain(other))
        forms.append(other)
    return found


def _same_value(a: str, b: str) -> bool:
    """Two answers of one response: equivalent, and a percent only by its value (50\\% and 0.5; not 50\\%
    and 50, which would let one response claim both of percent.py's readings)."""
    pa, pb = percent.split(a), percent.split(b)
    if bool(pa) != bool(pb):
        (x, _), y = (pa, b) if pa else (pb, a)
        return equivalent(f"\\frac{{{x}}}{{100}}", y)
    return equivalent(a, b)


def final_answer(text: str, fallback: str = "auto") -> Optional[str]:
    """The final answer of a whole response (None: there is none, or its answers took the whole
    budget to compare with each other)."""
    return _final_forms(text, fallback)[0]


def _final_forms(text: str, fallback: str) -> tuple[Optional[str], list[str]]:
    parts = split_thought(text)
    if parts.over_cap:
        return None, []
    _warm_up()
    try:
        with budget.bounded(budget.RESPONSE_SECONDS):
            return _answer_forms(parts.visible, fallback)
    except budget.OverBudget:
        return None, []


def _parsed(answer: str) -> tuple:
    if len(answer) > MAX_ANSWER_CHARS:  # compared as a string only, and never cached (see equivalent)
        return ()
    return _parsed_short(answer)


@lru_cache(maxsize=65536)
def _parsed_short(answer: str) -> tuple:
    from math_verify import LatexExtractionConfig, parse

    try:  # the answer as one LaTeX expression, or nothing: math-verify's other extractors (plain
        # expressions, its fallback to the first match) read a part of what they could not parse whole
        # ("5 \\vee 6" was 6, "\\neg 5" was 5)
        return tuple(parse(f"${answer}$", extraction_config=[LatexExtractionConfig()], fallback_mode="no_fallback"))
    except Exception:  # math-verify could not parse it: compared as a string only
        return ()


@lru_cache(maxsize=65536)
def _scale(answer: str) -> Optional[float]:
    """The smallest nonzero magnitude a short answer holds (scale.py), once per answer."""
    return smallest_magnitude(_parsed_short(answer))


def _plain(s: str) -> str:
    return "".join(s.split()).lower()


def _has_nan(parsed: tuple) -> bool:
    import sympy

    return any(isinstance(x, sympy.Basic) and x.has(sympy.nan) for x in parsed)


def _kind(s: str) -> Optional[str]:
    if _NAN.fullmatch(s.strip()):
        return "nan"
    m = _INF.fullmatch(s.strip())
    if m:
        return "-inf" if m.group().lstrip().startswith("-") else "inf"
    return None


def equivalent(a: str, b: str) -> bool:
    """Are two final answers the same (symbolically / numerically, else as normalised strings)?
    Only pairs of answers up to MAX_ANSWER_CHARS are cached: a cache keyed by the policy's longest
    answers (up to MAX_RESPONSE_CHARS each) would hold gigabytes of them in the trainer."""
    if len(a) > MAX_ANSWER_CHARS or len(b) > MAX_ANSWER_CHARS:
        return _bounded(a, b)
    return _equivalent_short(a, b)


@lru_cache(maxsize=65536)
def _equivalent_short(a: str, b: str) -> bool:
    return _bounded(a, b)


_warm = False


def _warm_up() -> None:
    """The imports (0.5 s) and the parser's first build, once, before any budget starts: never cut
    halfway, never charged to the first answer judged."""
    global _warm
    if not _warm:
        _warm = True
        _equivalent("\\frac{x}{2}", "0.5x")


def _bounded(a: str, b: str) -> bool:
    """_equivalent under budget.py's CPU-time bound: a comparison that spends it is "not equal". Inside
    a response's budget (is_correct) the overrun ends the whole judgement instead (and nothing is cached)."""
    _warm_up()
    if budget.active():
        return _equivalent(a, b)
    try:
        with budget.bounded():
            return _equivalent(a, b)
    except budget.OverBudget:
        return False


# display and inline math around a whole answer (<answer>\\[ \\frac{1}{2} \\]</answer>): _parsed wraps an answer
# in $...$, inside which these delimiters do not parse, so the math they hold scored 0
_MATH_DELIMITERS = (("\\[", "\\]"), ("\\(", "\\)"), ("$$", "$$"), ("\\begin{equation}", "\\end{equation}"),
                    ("\\begin{equation*}", "\\end{equation*}"), ("\\begin{displaymath}", "\\end{displaymath}"),
                    ("**", "**"), ("`", "`"))  # and a chat model's markdown emphasis (<answer>**5**</answer>)


def _unwrapped(s: str) -> str:
    """The math inside delimiters that enclose the whole answer (not `\\[5\\] or \\[6\\]`: two blocks), layer by layer."""
    t = s.strip()
    while True:
        for opening, closing in _MATH_DELIMITERS:
            if t.startswith(opening) and t.endswith(closing) and len(t) >= len(opening) + len(closing):
                inner = t[len(opening):len(t) - len(closing)]
                if opening not in inner and closing not in inner:
                    t = inner.strip()
                    break
        else:
            return t if t != s.strip() else s


def _scientific_as_latex(s: str) -> str:
    """A number in scientific notation (1e+20, 6.02\\times 10^{10}) as math-verify reads it right: written out
    exactly (60200000000) for 0 <= k <= _WRITTEN_OUT, else as m \\times 10^{k}."""
    m = _SCIENTIFIC.fullmatch(s.strip()) or _TIMES_TEN.fullmatch(s.strip())
    if m is None:
        return s
    mantissa, k = m.group(1), int(m.group(2) or m.group(3))
    if 0 <= k <= _WRITTEN_OUT:
        return format(Decimal(mantissa).scaleb(k), "f")
    return f"{mantissa}\\times 10^{{{k}}}"


def _equivalent(a: str, b: str) -> bool:
    a, b = plain_characters(a), plain_characters(b)
    if max(len(a), len(b)) <= MAX_ANSWER_CHARS:  # longer ones are compared as strings only, both as written
        a, b = (_scientific_as_latex(latex_signs(ungrouped(_unwrapped(a)))),
                _scientific_as_latex(latex_signs(ungrouped(_unwrapped(b)))))
    a, b = _END_OF_SENTENCE.sub("", a), _END_OF_SENTENCE.sub("", b)  # "\\boxed{5.}": the period ends a sentence
    ka, kb = _kind(a), _kind(b)
    if "nan" in (ka, kb):
        return False
    if ka or kb:
        return ka == kb
    if a.strip() == b.strip():
        return True
    if max(len(a), len(b)) > MAX_ANSWER_CHARS:  # strings only: no parser, and no regex below reads it
        return _plain(a) == _plain(b)
    pct_a, pct_b = percent.split(a), percent.split(b)
    if pct_a or pct_b:  # percent.py: 50\\% is 50 (the sign left off) or 0.5 (its value), never both at once
        return percent.equal(pct_a or (a, False), pct_b or (b, False), _equivalent)
    for x, y in ((a, b), (b, a)):
        sides = _approximation(x, y)
        if sides is not None:  # "\\sqrt{2} \\approx 1.414": that holds, so either side is the answer
            return any(_equivalent(side, y) for side in sides)
    if units.different(a, b):  # units.py: 5 \\text{ cm} is not 5 \\text{ km}
        return False
    if hedges.lossy(a, b) or hedges.lossy(b, a):  # hedges.py: "5 \\approx 6", "5 \\quad 6", "\\not= 5"
        return " ".join(a.lower().split()) == " ".join(b.lower().split())
    a, b = intervals.iso_against_intervals(a, b, _parsed)  # "]5, +\\infty[" against (5, \\infty)
    pa, pb = _parsed(a), _parsed(b)
    if equations.false_chain(pa) or equations.false_chain(pb):  # "6 = 5" against 5
        return False
    pa, pb = equations.solved_for_name(pa), equations.solved_for_name(pb)  # "5 = x" as "x = 5"
    if _has_nan(pa) or _has_nan(pb):  # 0/0 and the like
        return False
    if pa and pb and not (too_large(pa) or too_large(pb)):  # 9^{9^{9}} would take verify's whole timeout
        from math_verify import verify

        pa, pb = intervals.conditions_as_sets(pa, pb, a, b)  # "x > 5" against "(5, \\infty)": the set it names
        rounding, precision = tolerances(_scale(a), _scale(b))  # math-verify's are absolute: 0.0 = 10^{-34}
        pair = named_against_bare(pa, pb)  # math-verify matched (3, 2, 1) with a=1, b=2, c=3
        if pair is not None:
            if not pair:
                return False
            pa, pb = pair[:1], pair[1:]
        try:
            return bool(verify(list(pa), list(pb), float_rounding=rounding, numeric_precision=precision))
        except Exception:
            return False
    return _plain(a) == _plain(b)


_END_OF_SENTENCE = re.compile(r"(?<=[\w}])\.\s*$")
_DECIMAL = re.compile(r"\s*[-+]?\d*\.(\d+)\s*")


def _approximation(s: str, other: str) -> Optional[tuple[str, str]]:
    """(exact, decimal) of an answer "exact \\approx decimal" whose decimal is the exact value rounded
    or cut to its places (\\sqrt{2} \\approx 1.414 or 1.41, not 1.5), when `other` is no approximation
    itself; None otherwise ("5 \\approx 6", a decimal that does not hold: then hedges.py compares the
    answer as a string)."""
    if s.count("\\approx") != 1 or "\\approx" in other:
        return None
    exact, decimal = (t.strip() for t in s.split("\\approx"))
    m = _DECIMAL.fullmatch(decimal)
    parsed = _parsed(exact) if m and exact else ()
    if not parsed or too_large(parsed):
        return None
    try:
        value = complex(parsed[0].evalf(30))
    except (TypeError, ValueError, AttributeError, ArithmeticError):
        return None
    unit, d = 10.0 ** -len(m.group(1)), float(decimal)
    gap = value.real - d  # rounded: within half the last place; cut: short of the value by less than one
    held = abs(gap) <= unit / 2 * (1 + 1e-9) or 0 <= (gap if d >= 0 else -gap) < unit
    return (exact, decimal) if held and abs(value.imag) <= 1e-12 * max(1.0, abs(value.real)) else None


def is_correct(text: str, reference, fallback: str = "auto") -> tuple[Optional[str], bool]:
    """(final answer, equal to the reference) of one response. A reference that is one option letter
    is matched by an answer naming that option and no other (choices.py). The whole judgement runs
    under one CPU-time budget (budget.py): several slow answers in one response cost it once."""
    _warm_up()
    found: list = []
    try:
        with budget.bounded(budget.RESPONSE_SECONDS):
            return _is_correct(text, str(reference), fallback, found)
    except budget.OverBudget:
        return (found[0] if found else None), False


def _is_correct(text: str, reference: str, fallback: str, found: list) -> tuple[Optional[str], bool]:
    letter = choices.reference_letter(reference)
    if letter is None:  # every form the response gives must be right ("0.5" beside "50\\%": not for 50)
        answer, forms = _final_forms(text, fallback)
        found.append(answer)
        return answer, answer is not None and all(equivalent(reference, a) for a in [answer] + forms)
    answer = final_answer(text, "none")
    if answer is None and fallback != "none":
        parts = split_thought(text)
        line = None if parts.over_cap else choices.fallback_text(parts.visible)
        if line is not None and not hedges.negated_around(line, 0, 0) and not hedges.reordered(line):
            answer = plain_characters(line)
    return answer, answer is not None and choices.letters_named(answer) == {letter}
