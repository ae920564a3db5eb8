"""Probe: characters that look like ASCII ones were read as something else. The last-number fallback
dropped a Unicode minus sign ("The answer is −5" scored 1 against 5 and 0 against -5); math-verify
read fullwidth punctuation, the heavy minus sign and invisible characters (zero-width space,
right-to-left mark, soft hyphen) by skipping them or stopping at them: `\\boxed{３／４}` was 3,
`\\boxed{1<ZWSP>2}` was 1, `\\boxed{➖5}` was 5. They are now read as the ASCII characters they
show, and invisible ones are dropped, before an answer is taken or compared."""
import pytest

from r1mega.judge import equivalent, final_answer, is_correct


@pytest.mark.parametrize("shown, right, wrong", [
    ("The answer is \u22125.", "-5", "5"),  # MINUS SIGN, read by the last-number fallback
    ("The answer is \uff0d5.", "-5", "5"),  # FULLWIDTH HYPHEN-MINUS
    ("The answer is \ufe635.", "-5", "5"),  # SMALL HYPHEN-MINUS
    ("The answer is 1\u200b2.", "12", "2"),  # ZERO WIDTH SPACE inside the number
])
def test_the_fallback_reads_what_is_shown(shown, right, wrong):
    text = f"<think>t</think> {shown}"
    assert is_correct(text, right)[1]
    assert not is_correct(text, wrong)[1]


@pytest.mark.parametrize("boxed, right, wrong", [
    ("\uff0d5", "-5", "5"),
    ("\u2796 5", "-5", "5"),  # HEAVY MINUS SIGN
    ("\uff13\uff0f\uff14", "3/4", "3"),  # ３／４
    ("0\uff0e5", "1/2", "0"),  # 0．5
    ("\uff08\uff11,\uff12\uff09", "(1,2)", "1"),  # （１,２）
    ("1\u200b2", "12", "1"),  # ZERO WIDTH SPACE
    ("\u200f12", "12", "1"),  # RIGHT-TO-LEFT MARK
    ("1\u20602", "12", "1"),  # WORD JOINER
    ("\u00ad5", "5", "-5"),  # SOFT HYPHEN (invisible)
    ("\ufeff7", "7", "0"),  # BYTE ORDER MARK
])
def test_boxed_answers_mean_what_they_show(boxed, right, wrong):
    text = f"<think>t</think> \\boxed{{{boxed}}}"
    assert is_correct(text, right)[1], final_answer(text)
    assert not is_correct(text, wrong)[1], final_answer(text)


def test_references_are_read_the_same_way():
    assert equivalent("\u22125", "-5") and not equivalent("\u22125", "5")
    assert equivalent("\uff13\uff0f\uff14", "0.75") and not equivalent("\uff13\uff0f\uff14", "3")
    assert equivalent("1\u200b2", "12")


def test_plain_answers_are_unchanged():
    assert final_answer("<think>t</think> \\boxed{x^2 - 1}") == "x^2 - 1"
    assert final_answer("<think>t</think> The answer is -5") == "-5"
    assert final_answer("<think>t</think> \\boxed{\u0667}") == "7"  # other scripts' digits, as before
    assert is_correct("<think>t</think> 答案是\\boxed{－３}", "-3")[1]
