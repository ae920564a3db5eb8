"""Probe: the \\boxed{...} reader counted escaped braces (`\\{`, `\\}`, which LaTeX prints as braces and
does not pair) as grouping braces: `\\boxed{\\left\\{ x=1, y=2 \\right.}` (a system of equations) never
closed, so the default fallback read its last number (2) as the answer and `answer_fallback: none`
found none; `\\boxed{\\}}` ended at its escaped brace. Braces after an odd run of backslashes are now
text, not grouping (`\\\\{` is a line break, then a group)."""
import pytest

from r1mega.judge import final_answer

SYSTEM = "\\left\\{ x=1, y=2 \\right."


@pytest.mark.parametrize("fallback", ["auto", "none"])
def test_an_escaped_brace_does_not_keep_the_box_open(fallback):
    text = f"<think>t</think> So \\boxed{{{SYSTEM}}}."
    assert final_answer(text, fallback) == SYSTEM  # was "2" (auto) or None (none)


@pytest.mark.parametrize("box, content", [
    ("\\boxed{\\}}", "\\}"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # balanced escapes, as before
    ("\\boxed{[0, 1\\}}", "[0, 1\\}"),
    ("\\boxed{a \\\\{b}}", "a \\\\{b}"),  # \\\\ is a line break: the brace after it groups
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{x \\\\}", "x \\\\"),
])
def test_box_contents(box, content):
    assert final_answer(f"<think>t</think> {box}", "none") == content


def test_unclosed_boxes_with_escapes_are_read_once():
    # many unclosed candidates with escaped braces stay linear (no timing asserted)
    text = "<think>t</think>" + "\\boxed{\\{" * 50_000 + "\\}" * 10
    assert final_answer(text, "none") is None
