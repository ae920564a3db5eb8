"""Probe: answers written with Unicode mathematics (√2, x², 2¹⁰, ½, 2½) were not read as mathematics:
`\\boxed{√2}` scored 0 against \\sqrt{2}, `\\boxed{2²}` 0 against 4 and `\\boxed{½}` 0 against 1/2, while
× and ÷ already worked. The square root, superscript digits and vulgar fractions are now read as the
LaTeX they show."""
import pytest

from r1mega.judge import equivalent, is_correct


@pytest.mark.parametrize("shown, right, wrong", [
    ("√2", "\\sqrt{2}", "2"),
    ("2√3", "2\\sqrt{3}", "23"),
    ("√(x+1)", "\\sqrt{x+1}", "x+1"),
    ("√x", "\\sqrt{x}", "x"),
    ("2²", "4", "22"),
    ("x²", "x^2", "2x"),
    ("2¹⁰", "1024", "210"),
    ("10⁻³", "0.001", "10"),
    ("½", "1/2", "1"),
    ("2½", "5/2", "2"),
    ("¾", "0.75", "3/5"),
    ("1⁄3", "1/3", "3"),
])
def test_unicode_mathematics_is_read_as_shown(shown, right, wrong):
    text = f"<think>t</think> \\boxed{{{shown}}}"
    assert is_correct(text, right)[1], shown
    assert not is_correct(text, wrong)[1], shown


def test_references_too():
    assert equivalent("√2", "\\sqrt 2") and equivalent("x²", "x^{2}") and not equivalent("x²", "x2")
