"""Multiple-choice answers: a reference that is one option letter (A-J; "(B)", "\\text{(B)}" too) is
matched by a response that names that option and no other.

An answer names an option as "(B)", "B)", "B.", "B:", "option B" (the option's value may follow:
"(B) 12", "**B.** 12", "\\textbf{(B)} 12"), or as the bare letter. Naming two options ("(A) or (B)", "(A) (B)")
is a hedge and never matches; an answer naming none ("12", the chosen option's value, or "B, C") does
not match either: without the options the judge cannot tell which letter a value stands for.
Without a boxed or tagged answer the fallback reads the text after the last "answer is"/"answer:"/"A:",
else the last line ("The answer is (B) 12", "**B.** 12"), and refuses it when it negates
(fallback_refuses: "(B) is wrong"). Linear regexes on short strings.
"""
from __future__ import annotations

import re
from typing import Optional

from r1mega.judge import hedges

LETTERS = "A-J"
# formatting that wraps an option: \text{(B)}, \textbf{B.}, **B**, $B$
_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|emph|mbox|operatorname)\s*\{|[{}*$]|\\[()\[\]]")
_REFERENCE = re.compile(rf"\s*\(?\s*([{LETTERS}])\s*\)?\s*\.?\s*")
_IN_PARENS = re.compile(rf"\(\s*([{LETTERS}a-j])\s*\)")
_MARKED = re.compile(rf"(?:^|(?<=[\s(\[]))([{LETTERS}])\s*[.):](?=\s|$)")
_NAMED = re.compile(rf"\b(?:option|choice)\s+([{LETTERS}])\b", re.IGNORECASE)  # "Option B"
_ALONE = re.compile(rf"\s*([{LETTERS}a-j])\s*")
_ANSWER_IS = re.compile(r"(?:answer\s*(?:is|:)|\bA:)", re.IGNORECASE)
_MAX_CHARS = 400  # an option and its value; a longer answer names no option


def _stripped(s: str) -> str:
    return _WRAPPERS.sub(" ", s)


def reference_letter(reference: str) -> Optional[str]:
    """The option letter a reference is ("B", "(B)", "\\text{(B)}", "B."), else None."""
    if len(reference) > 40:
        return None
    m = _REFERENCE.fullmatch(_stripped(reference))
    return m.group(1) if m else None


def letters_named(answer: str) -> set[str]:
    """The option letters an answer names (upper case); an empty set when it names none."""
    if len(answer) > _MAX_CHARS or hedges.lossy(answer, ""):  # \\phantom{(B)}, \\not (B), \\cancel{(A)}: hidden or struck
        return set()
    s = _stripped(answer)
    alone = _ALONE.fullmatch(s)
    if alone:
        return {alone.group(1).upper()}
    return ({m.group(1).upper() for m in _IN_PARENS.finditer(s)} | {m.group(1) for m in _MARKED.finditer(s)}
            | {m.group(1) for m in _NAMED.finditer(s)})


def fallback_text(visible: str) -> Optional[str]:
    """Where an answer without box or tags names its option: after the last "answer is" / "answer:" /
    "A:" (to the end of its line), else the last non-empty line."""
    last = None
    for last in _ANSWER_IS.finditer(visible):
        pass
    if last is not None:
        line = visible[last.end():].split("\n", 1)[0]
    else:
        lines = [ln for ln in visible[-4 * _MAX_CHARS:].split("\n") if ln.strip()]
        line = lines[-1] if lines else ""
    return line.strip() or None


def same_option(a: str, b: str) -> bool:
    """Two answers to a multiple-choice problem vote together when they name the same one option
    ("(B) 12" and "B"); an answer naming none or several votes alone."""
    la = letters_named(a)
    return len(la) == 1 and la == letters_named(b)
