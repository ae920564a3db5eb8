"""Probe: digits grouped by a thin space (`1\\,000`, LaTeX's and SI's way of writing 1000), a space, `~`
or a no-break space were read by math-verify as a product or a sum of the groups: `\\boxed{1\\,000}`
was 1 x 000 = 0 (so it scored 0 against 1000 and 1 against 0), `12\\,500` was 512 and `1\\,234\\,567`
was 802. A number whose groups after the first are exactly three digits is now read as one number,
as LaTeX renders it (commas were already: 1,000 and 10{,}000)."""
import pytest

from r1mega.judge import equivalent, final_answer, is_correct


@pytest.mark.parametrize("boxed, right, wrong", [
    ("1\\,000", "1000", "0"),
    ("12\\,500", "12500", "512"),
    ("1\\,234\\,567", "1234567", "802"),
    ("1\\;000", "1000", "0"),
    ("1\\:000", "1000", "0"),
    ("1\\ 000", "1000", "0"),
    ("1~000", "1000", "1"),
    ("1 000", "1000", "0"),
    ("1\u00a0000", "1000", "0"),  # no-break space
    ("1\u202f000", "1000", "0"),  # narrow no-break space (SI)
    ("1\u2009000", "1000", "0"),  # thin space
    ("1\\thinspace 000", "1000", "0"),
    ("-1\\,000.5", "-1000.5", "-0.5"),
    ("\\$2\\,500", "2500", "502"),
    ("\\frac{1\\,000}{3}", "1000/3", "0"),
])
def test_grouped_digits_are_one_number(boxed, right, wrong):
    text = f"<think>t</think> \\boxed{{{boxed}}}"
    assert is_correct(text, right)[1], boxed
    assert not is_correct(text, wrong)[1], boxed


def test_references_with_grouped_digits():
    assert equivalent("3\\,000", "3000") and equivalent("3\\,000", "3,000")
    assert not equivalent("3\\,000", "0") and not equivalent("3\\,000", "3")


def test_the_fallback_reads_grouped_digits():
    assert final_answer("<think>t</think> The total is $1\\,000$ dollars.") == "1000"
    assert final_answer("<think>t</think> The total is 25\u00a0000 dollars.") == "25000"
    assert final_answer("<think>t</think> On day 5 100 people came.") == "100"  # prose spaces part numbers


def test_what_is_not_a_group_stays_apart():
    assert not equivalent("x^{2100}", "x^2\\,100")  # an exponent's digit does not join the next number
    assert not equivalent("12", "1\\,2") and not equivalent("10000", "1\\,0000")  # groups of three only
    assert equivalent("\\{100, 200\\}", "\\{100, 200\\}") and not equivalent("100200", "\\{100, 200\\}")
    assert equivalent("[1000, 2000]", "[1\\,000, 2\\,000]")


# The last-number rule reads a long response in windows from its end (4096 characters, then doubling). A
# window that began inside a grouped number (12\,345), a run of other scripts' digits (١٢٣٤٥) or just after
# the name a number continues (x12\,345) read a part of it: the same answer scored 1 against 345 and 0 against
# 12345 when about 4,093 characters followed it, and right everywhere else.
@pytest.mark.parametrize("number, read", [
    ("12\\,345", "12345"),
    ("12\u2009345", "12345"),
    ("12~345", "12345"),
    ("\u0661\u0662\u0663\u0664\u0665", "12345"),  # Arabic-Indic
    ("\u0967\u0968\u0969\u096a\u096b", "12345"),  # Devanagari
    ("x12\\,345", "345"),  # a name's digits are not a number's first group
])
def test_the_last_number_is_read_alike_wherever_it_sits(number, read):
    for tail in range(4080, 4110):
        text = "<think>t</think> so " + number + " z" + "z" * tail
        assert final_answer(text, "last_number") == read, tail
        assert is_correct(text, read, "last_number")[1] and not is_correct(text, "5", "last_number")[1], tail
