"""Hedges and answers that say less than they seem to are never credited (r1mega/judge/hedges.py,
equations.py); the same answers written plainly still are.

Each row was credited before: math-verify compared the last box only, dropped LaTeX it did not know
(keeping a part: "5 \\vee 6" was 6, "\\neg 5" was 5, "5 \\text{ or 6}" was 5), added spaced numbers
("5 \\quad 6" was 11), compared an equation by its last side ("6 = 5" was 5), and the judge dropped
bidirectional controls and combining marks that change what an answer shows."""
import pytest

from r1mega.judge import final_answer, is_correct
from r1mega.rl.rewards import accuracy_reward

T = "<think>work</think> "


def box(s: str) -> str:
    return T + "\\boxed{" + s + "}"


@pytest.mark.parametrize("response, reference", [
    # several answers after the thought that disagree
    (T + "\\boxed{5} then \\boxed{6}", "6"), (T + "\\boxed{5} then \\boxed{6}", "5"),
    (T + "\\boxed{5} % \\boxed{6}", "6"), (T + "\\boxed{5} <!-- \\boxed{6} -->", "6"),
    (T + "<answer>5</answer><answer>6</answer>", "6"), (T + "<answer>5</answer> \\boxed{6}", "5"),
    (T + "\\boxed{5} \\boxed 6", "5"), (T + "\\boxed{5} \\fbox{6}", "5"), (box("\\boxed{5} 6"), "5"),
    # LaTeX the parser dropped or misread
    (box("5 \\vee 6"), "6"), (box("5 \\lor 6"), "6"), (box("5 \\approx 6"), "5"), (box("5 \\text{ or 6}"), "5"),
    (box("5 \\text{ (or maybe } 6)"), "6"), (box("5 \\quad 6"), "11"), (box("5 \\, 6"), "11"), (box("\\phantom{6}5"), "11"),
    (box("\\neg 5"), "5"), (box("\\ne 5"), "5"), (box("\\not 5"), "5"), (box("\\not= 5"), "5"), (box("5 \\to 6"), "6"),
    (box("\\text{not } 5"), "5"), (box("5 \\implies 6"), "6"), (box("5 % 6"), "0.3"), (box("\\cancel{6} 5"), "5"),
    # false equations between numbers
    (box("\\sqrt{2} \\approx 1.5"), "\\sqrt{2}"), (box("\\sqrt{2} \\approx 1.5"), "1.5"), (box("5 \\approx 5.4"), "5"),
    (box("5 \\text{ or } 6"), "5"), (box("6 = 5"), "5"), (box("1 = 2 = 3 = 4 = 5"), "5"), (box("x = 5 = 6"), "5"),
    (box("5 = x = 6"), "6"), (box("5 \\textnormal{ or 6}"), "5"), (box("5 \\textsf{ or 6}"), "5"),
    # characters that change what shows: an override shows "12" as "21"; 5 with a combining long solidus
    (box("\u202e12"), "12"), (box("\u200f1\u200f2"), "12"), (box("5\u0338"), "5"), (box("5\u0336"), "5"), (box("5\u20e0"), "5"),
])
def test_hedges_and_lossy_answers_score_zero(response, reference):
    assert accuracy_reward(response, {"answer": reference}) == 0.0


@pytest.mark.parametrize("response, reference", [
    (T + "\\boxed{4} so \\boxed{\\frac{8}{2}}", "4"), (T + "I put it in \\boxed{} so \\boxed{4}", "4"), (T + "<answer>\\boxed{4}</answer>", "4"), (box("\\boxed{4}"), "4"),
    (box("\\frac{10}{2} = 5"), "5"), (box("2 + 3 = 5"), "5"), (box("x = 2 + 3 = 5"), "5"), (box("y = x = 5"), "5"),
    (box("x = 5"), "5"), (box("5 = x"), "5"),
    (box("5 \\text{ cm}"), "5"), (box("\\text{5}"), "5"), (box("1\\,000"), "1000"), (box("\\log_2 8"), "3"),
    (box("2 \\frac{1}{2}"), "2.5"), (box("\\approx 5"), "\\approx 5"), (box("x \\neq 5"), "x \\ne 5"),
    (box("\u200f12"), "12"), (box("caf\u00e9"), "caf\u00e9"), (box("5 \\pm 1"), "5 \\pm 1"),
    (box("\\sqrt{2} \\approx 1.414"), "\\sqrt{2}"), (box("\\sqrt{2} \\approx 1.414"), "1.414"), (box("\\pi \\approx 3.14"), "\\pi"),
    (box("5 \\text{ or } 6"), "5, 6"), (box("x = 5 \\text{ or } x = 6"), "5, 6"), (box("5."), "5"),
])
def test_the_same_answers_written_plainly_stay_right(response, reference):
    assert accuracy_reward(response, {"answer": reference}) == 1.0


@pytest.mark.parametrize("response, fallback", [
    ("The answer is not 5.", "auto"), ("5 is wrong", "last_number"), ("The answer is 5? No.", "auto"),
    ("The answer is 6 or 5", "auto"), ("x = 1, 2, 3, 4, 5", "last_number"), ("Q: 2+3= A: not 5", "a_colon"),
    ("Q: 2+3= A: 6 or 5", "auto"), ("Answer: 6\nAnswer: 5", "auto"), ("The answer is 6. The final answer is 5.", "last_number"),
])
def test_fallbacks_refuse_a_negated_or_hedged_number(response, fallback):
    assert final_answer(response, fallback) is None
    assert not is_correct(response, "5", fallback)[1]


def test_fallbacks_still_read_a_plain_final_number():
    assert is_correct("3 + 2 = 5", "5", "last_number") == ("5", True)
    assert is_correct("There is no remainder, so the answer is 5", "5", "auto") == ("5", True)
    assert is_correct("Q: 2+3= A: 5", "5", "a_colon") == ("5", True)
    assert is_correct("So there are 5 apples.", "5", "auto") == ("5", True)
    assert is_correct("The answer is 5.\nFinal answer: 5", "5", "auto") == ("5", True)


def test_more_boxes_than_any_answer_needs_is_no_answer():
    assert final_answer(T + "\\boxed{5} " * 16, "none") == "5"
    assert final_answer(T + "\\boxed{5} " * 17, "none") is None
