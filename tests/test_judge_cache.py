"""Probe: the judge cached every answer it compared (two lru_caches of 65,536 entries keyed by the
answer text), including answers far over MAX_ANSWER_CHARS that it only compares as strings. A
policy writing its whole reasoning inside \\boxed{...} (up to MAX_RESPONSE_CHARS each) made the
trainer hold them all: 300 answers of 200K characters kept 100 MiB, 65,536 of them would keep
~64 GiB. Long answers are now judged the same way without being cached."""
from r1mega.judge import MAX_ANSWER_CHARS, equivalent, is_correct
from r1mega.judge import answers


def _cached() -> int:
    return answers._equivalent_short.cache_info().currsize + answers._parsed_short.cache_info().currsize


def test_long_answers_are_judged_but_never_cached():
    equivalent("7", "8")  # the short reference's parse is cached (as it should be)
    before = _cached()
    for i in range(50):
        body = f"{i} " + "x" * (4 * MAX_ANSWER_CHARS)
        assert is_correct(f"<think>t</think> \\boxed{{{body}}}", "7") == (body, False)
    assert _cached() == before  # nothing of those answers is held
    long_ref = "word " * MAX_ANSWER_CHARS
    assert equivalent(long_ref, "  " + long_ref.upper())  # still the same string up to whitespace and case
    assert not equivalent(long_ref, long_ref + "x")
    assert _cached() == before


def test_short_answers_are_still_cached_and_judged_by_math_verify():
    assert equivalent("0.5", "\\frac{1}{2}")
    hits = answers._equivalent_short.cache_info().hits
    assert equivalent("0.5", "\\frac{1}{2}")
    assert answers._equivalent_short.cache_info().hits == hits + 1
