"""Probe: `\\boxed {x}` (a space or a line break before the brace, which LaTeX renders as `\\boxed{x}`)
was not read as a box: under the default fallback the answer became the last number inside it, so
`\\boxed {2^{3}}` scored 1 against 3 and 0 against 8, and `\\boxed {\\frac{1}{2}}` was 2; under
`answer_fallback: none` it had no answer at all. Whitespace between \\boxed and its brace is now allowed."""
import pytest

from r1mega.judge import final_answer, is_correct


@pytest.mark.parametrize("box, right, wrong", [
    ("\\boxed {2^{3}}", "8", "3"),
    ("\\boxed {\\frac{1}{2}}", "0.5", "2"),
    ("\\boxed\n{7}", "7", "0"),
    ("\\boxed \t {x+1}", "1+x", "1"),
])
@pytest.mark.parametrize("fallback", ["auto", "none"])
def test_a_space_before_the_brace_is_still_a_box(box, right, wrong, fallback):
    text = f"<think>t</think> So the answer is {box}."
    assert is_correct(text, right, fallback)[1]
    assert not is_correct(text, wrong, fallback)[1]


def test_other_commands_are_not_boxes():
    assert final_answer("<think>t</think> \\boxedtext{5} 6", "none") is None
    assert final_answer("<think>t</think> \\boxed {5} \\boxed.", "none") == "5"  # nothing boxed
    # two boxes that differ are a hedge (hedges.py), \\boxed 6 too (LaTeX boxes the one token after it)
    assert final_answer("<think>t</think> \\boxed {5} \\boxed 6", "none") is None
    assert final_answer("<think>t</think> \\boxed{5} then \\boxed {6}", "none") is None
    assert final_answer("<think>t</think> \\boxed{6} then \\boxed {6}", "none") == "6"


def test_many_unclosed_spaced_boxes_are_read_once():
    # each candidate is searched only up to the one after it: 100,000 of them stay linear (no timing asserted)
    text = "<think>t</think>" + "\\boxed " * 100_000 + "{" + " " * 100_000
    assert final_answer(text, "none") is None
