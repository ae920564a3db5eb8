"""Multiple-choice references (r1mega/judge/choices.py): a response names the option, often with its
value after it ("(B) 12", "**B.** 12"), and scored 0 against the reference "B" (math-verify read
"(B) 12" as b x 12; the fallback took the last number, 12). Naming two options is never credited."""
import pytest

from r1mega.judge import is_correct
from r1mega.judge.choices import letters_named, reference_letter
from r1mega.rl.rewards import accuracy_reward

T = "<think>work</think> "


@pytest.mark.parametrize("response", [
    T + "\\boxed{(B) 12}", T + "The answer is (B) 12", T + "**B.** 12", T + "\\boxed{\\text{(B) } 12}",
    T + "\\boxed{B) 12}", T + "\\boxed{\\textbf{(B)} 12}", T + "\\boxed{B}", T + "\\boxed{(B)}", T + "\\boxed{b}",
    T + "<answer>B</answer>", T + "Answer: (B) 12", T + "The answer is B.", T + "\\boxed{\\text{Option B}}",
    T + "\\boxed{\\mathrm{B}}",
])
@pytest.mark.parametrize("reference", ["B", "(B)", "\\text{(B)}", "\\textbf{(B)}"])
def test_the_option_named_is_the_answer(response, reference):
    assert accuracy_reward(response, {"answer": reference}) == 1.0


@pytest.mark.parametrize("response", [
    T + "\\boxed{B, C}", T + "\\boxed{BC}", T + "\\boxed{B \\text{ or } C}", T + "\\boxed{(A) (B)}",
    T + "\\boxed{(B) or (C)}", T + "\\boxed{\\text{(B) or (C)}}", T + "The answer is (B) 12 or (C) 13",
    T + "\\boxed{B. 12 (C. 13)}", T + "\\boxed{12}", T + "\\boxed{C}", T + "The answer is not (B).",
    T + "(A), (B), (C) are the options", T + "\\boxed{B} \\boxed{C}", "<think>\\boxed{B}</think> I am not sure",
    T + "\\boxed{\\phantom{(B)}}", T + "\\boxed{\\not (B)}", T + "\\boxed{\\cancel{(B)}}", T + "\\boxed{\u202e(B)}",
])
def test_two_options_or_none_score_zero(response):
    assert accuracy_reward(response, {"answer": "B"}) == 0.0


def test_only_an_option_letter_is_a_choice_reference():
    assert [reference_letter(r) for r in ("B", " (C) ", "\\text{(D)}", "E.")] == ["B", "C", "D", "E"]
    assert [reference_letter(r) for r in ("b", "x", "BC", "12", "K", "\\text{yes}")] == [None] * 6
    assert letters_named("(A) 3 and (B) 4") == {"A", "B"} and letters_named("12") == set()
    # answers that are not option letters keep the ordinary comparison
    assert is_correct(T + "\\boxed{x}", "x")[1] and not is_correct(T + "\\boxed{(x) 2}", "x")[1]
