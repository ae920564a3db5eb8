"""The one answer judge of r1mega: the RL rewards (rl/rewards.py), `r1mega eval` (eval/benchmark.py)
and the rejection filters (generation/filters.py) all read responses through it, so a completion
gets one verdict everywhere.

    response.py    the thought and the visible text after it
    answers.py     the final answer (after the thought only) and answer equivalence (math-verify)
    braces.py      LaTeX brace matching (escaped braces are text)
    characters.py  text as it shows (lookalike and invisible characters)
    code_blocks.py the one code-fence extractor
    language.py    the share of a thought's words in the target language (lexicons.py: Latin words)
    format.py      the strict <think>...</think> answer format
    limits.py      how much of a response is read (MAX_RESPONSE_CHARS)
    magnitude.py   answers too large to evaluate (compared as strings only)
    scale.py       the tolerances of a numeric comparison, at the answers' own scale
    assignments.py named values (a=1, b=2) against bare ones ((1, 2)): in the names' order
    hedges.py      answers that disagree or say less than they seem (never credited)
    equations.py   equations between numbers must hold; "5 = x" names x
    percent.py     a percent sign: one rule on either side
    choices.py     multiple-choice references: the option a response names
    units.py       units written on both sides must agree (5 cm is not 5 km)
    budget.py      a CPU-time bound per response (sympy bombs)
Low in the import graph: it imports nothing from rl/, eval/ or generation/.
"""
from r1mega.judge.answers import FALLBACKS, equivalent, final_answer, is_correct
from r1mega.judge.code_blocks import final_code, python_blocks
from r1mega.judge.format import well_formed
from r1mega.judge.language import LANGUAGES, language_share
from r1mega.judge.limits import MAX_ANSWER_CHARS, MAX_RESPONSE_CHARS
from r1mega.judge.response import Parts, split_thought

__all__ = ["FALLBACKS", "LANGUAGES", "MAX_ANSWER_CHARS", "MAX_RESPONSE_CHARS", "Parts", "equivalent", "final_answer",
           "final_code", "is_correct", "language_share", "python_blocks", "split_thought", "well_formed"]
