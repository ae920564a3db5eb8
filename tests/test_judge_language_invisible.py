"""Probe: the language-consistency reward counted words as runs of letters, so a zero-width space (or
another character that shows nothing) inside each word cut a French thought into fragments of no
lexicon, which counted as the target language: an English reward of 1.0 for a thought a reader sees
as French (0.0 without the invisible characters). Invisible characters are now dropped before words
are counted."""
import pytest

from r1mega.judge import language_share
from r1mega.rl.rewards import language_reward

FRENCH = "Nous calculons la somme de trois et quatre, donc la réponse est sept. Ensuite nous vérifions le résultat."
ENGLISH = "We add three and four, so the answer is seven. Then we check the result."


def _split_words(text: str, mark: str) -> str:
    return " ".join(w[:1] + mark + w[1:] for w in text.split())


@pytest.mark.parametrize("mark", ["\u200b", "\u200c", "\u2060", "\u00ad", "\ufeff"])
def test_invisible_characters_do_not_hide_the_language(mark):
    assert language_share(_split_words(FRENCH, mark), "en") == language_share(FRENCH, "en") == 0.0
    assert language_share(mark.join(FRENCH), "en") == 0.0
    response = f"<think>{_split_words(FRENCH, mark)}</think>The answer is 7."
    assert language_reward(response, {"language": "en"}) == 0.0


def test_the_target_language_still_scores():
    assert language_share(_split_words(ENGLISH, "\u200b"), "en") == 1.0
    assert language_share(_split_words(FRENCH, "\u200b"), "fr") == 1.0
