"""Probe: the format reward asks for a non-empty thought and a non-empty answer, but counted
characters that show nothing (zero-width space, Braille blank, Hangul filler, word joiner) as
content: `<think>\\u200b</think>\\u200b` scored format 1 while its thought and answer are blank.
Characters that show nothing now count as nothing, there and after the closing </answer>."""
import pytest

from r1mega.judge import well_formed
from r1mega.rl.rewards import format_reward

BLANKS = ["\u200b", "\u2800", "\u3164", "\u2060\u200b", "\u115f\u1160", "\ufeff", "\u00a0\u200b"]


@pytest.mark.parametrize("blank", BLANKS)
def test_a_blank_thought_or_answer_is_empty(blank):
    assert not well_formed(f"<think>{blank}</think>The answer is 4.")
    assert not well_formed(f"<think>4 = 2 + 2</think>{blank}")
    assert not well_formed(f"<think>4 = 2 + 2</think><answer>{blank}</answer>")
    assert format_reward(f"<think>{blank}</think>{blank}", {}) == 0.0


@pytest.mark.parametrize("blank", BLANKS)
def test_nothing_shown_after_the_answer_is_nothing(blank):
    assert well_formed(f"<think>4 = 2 + 2</think><answer>4</answer>{blank}")


def test_real_content_still_counts():
    assert well_formed("<think>\u200b2 + 2\u200b</think><answer>\u20604</answer>")
    assert well_formed("<think>二加二</think>四")
    assert not well_formed("<think>x</think><answer>4</answer>\u200bmore")
