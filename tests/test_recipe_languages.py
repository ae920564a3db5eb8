"""A problem's `language` and `reject-sample --language` take every target the judge can score
(README: en, fr, de, es, it, pt, nl, ru, el, ar, he, hi, ko, ja, zh and aliases), as `rl.language`
does; they were refused unless en or zh."""
import argparse
import json

from r1mega.data.prompts import read_problems
from r1mega.generation import reject_sample
from r1mega.generation.filters import judge_sample
from r1mega.judge import LANGUAGES

FRENCH = "<think>Nous additionnons les deux nombres et nous obtenons le résultat de la somme.</think> \\boxed{7}"


def test_a_prompt_record_may_name_any_judged_language(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"id": lang, "prompt": "3+4?", "answer": "7", "language": lang}) + "\n"
                            for lang in LANGUAGES))
    assert [p["language"] for p in read_problems(str(path))] == list(LANGUAGES)


def test_reject_sample_language_flag_takes_french_and_filters_by_it():
    p = argparse.ArgumentParser()
    reject_sample.add_args(p)
    args = p.parse_args(["--prompts", "x.jsonl", "--out", "o", "--language", "fr"])
    cfg = reject_sample.filter_config(args)
    assert cfg.language == "fr"
    sample = {"completion": FRENCH, "finish_reason": "eos", "completion_tokens": 20}
    rec = {"answer": "7"}
    assert judge_sample(rec, sample, cfg) is None  # a French thought for a French target is kept
    assert judge_sample({**rec, "language": "en"}, sample, cfg) == "language_mixing"  # the record's target wins
