"""The one answer judge (r1mega/judge): the RL rewards, `r1mega eval --completions` and the
rejection filters give every completion of a shared table of tricky ones the same verdict, the
language share behaves as specified, and responses built to stall the judge are read in linear time."""
from __future__ import annotations

import json
import os
import time

import pytest

from r1mega.judge import MAX_RESPONSE_CHARS, equivalent, final_answer, is_correct, language_share, python_blocks
from r1mega.judge.code_blocks import fenced_blocks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = "<think>a</think>"
INC = "def inc(x):\n    return x + 1\n"
CODE = {"tests": "assert inc(1) == 2\nassert inc(-1) == 0"}

# (completion, reference answer or None for the code problem, correct, well formed)
TABLE = [
    # an answer hidden in the thought is no answer (issue 21's reward hole)
    ("<think>x <answer>4</answer></think> 5", "4", False, False),
    (r"<think>so \boxed{4}</think> I give up", "4", False, True),
    ("<think>the answer is 4</think>", "4", False, False),
    (r"<think>maybe \boxed{5}</think> so \boxed{4}", "4", True, True),
    # answer tags, boxed, several answers: the last <answer>, else the last \boxed
    (f"{T} <answer>4</answer>", "4", True, True),
    (f"{T} " + r"\boxed{4}", "4", True, True),
    (f"{T}<answer>3</answer><answer>4</answer>", "4", False, False),  # two answers: a hedge (hedges.py)
    (f"{T} " + r"\boxed{3} then \boxed{4}", "4", False, True),
    (f"{T} " + r"\boxed{4} so \boxed{\frac{8}{2}}", "4", True, True),  # the same answer twice
    (f"{T} " + r"<answer>\boxed{4}</answer>", "4", True, True),
    (f"{T} " + r"\boxed{4} <answer>3</answer>", "4", False, True),
    (f"{T}" + r"<answer>\boxed{\boxed{4}}</answer>", "4", True, True),
    (f"{T} " + r"\boxed{\frac{8}{2}}", "4", True, True),  # nested braces
    (f"{T} " + r"\boxed{\frac{1}{2}}", "0.5", True, True),
    (f"{T} " + r"\boxed{x^{2}+1}", "1+x^2", True, True),
    (f"{T} " + r"\boxed{4", "4", True, True),  # an unclosed box: the fallback's last number
    (f"{T} " + r"\boxed{3}." + "<think>4", "4", False, False),  # a thought opened again hides the rest
    # NaN and infinity
    (f"{T} A: nan", "4", False, True),
    (f"{T} A: nan", "nan", False, True),
    (f"{T} <answer>-NaN</answer>", "4", False, True),
    (f"{T} " + r"\boxed{0/0}", "4", False, True),
    (f"{T} <answer>inf</answer>", "4", False, True),
    (f"{T} " + r"\boxed{\infty}", r"\infty", True, True),
    (f"{T} " + r"\boxed{-\infty}", r"\infty", False, True),
    # digits in other scripts, number forms
    (f"{T} " + r"\boxed{٤}", "4", True, True),
    (f"{T} " + r"\boxed{４}", "4", True, True),
    (f"{T} The answer is ४.", "4", True, True),
    (f"{T} 1,000", "1000", True, True),
    (f"{T} so it is -4", "-4", True, True),
    (f"{T} <answer>4</answer>", "4.0", True, True),
    (f"{T} <answer>4</answer>", r"\frac{8}{2}", True, True),
    (f"{T} <answer>B</answer>", "b", True, True),
    (f"{T} <answer>four</answer>", "4", False, True),
    # the fallback ("A:" line, else the last number), raw and chat models without think tags
    (f"{T} A: 4", "4", True, True),
    ("Q: 2+2= A: 4\n", "4", True, False),
    ("2 + 2 = 4", "4", True, False),
    ("3 + 18 = 21", "21", True, False),
    (f"{T}\n\n**Final answer:** $4$", "4", True, True),
    (f"{T} The answer is 4.", "4", True, True),
    # strict format
    ("<think></think> 4", "4", True, False),
    ("<think> </think> <answer>4</answer>", "4", True, False),
    ("<think>a</think><think>b</think> 4", "4", True, False),
    ("<think>a</think> 4 <think>b", "4", True, False),
    ("hello <think>a</think> <answer>4</answer>", "4", True, False),
    (f"{T} <answer>4</answer> and more", "4", True, False),
    (f"{T} <answer> </answer>", "4", False, False),
    (f"{T} <answer>4", "4", True, False),
    ("</think> 4", "4", True, False),  # the chat template opened the thought
    (f"  {T} <answer>4</answer>  ", "4", True, True),
    # unclosed and repeated tags, at DoS sizes
    ("<think>2+2=4", "4", False, False),
    ("<think>" * 20000, "4", False, False),
    ("<think>x</think>" + "<answer>" * 20000, "4", False, False),
    ("<think>x</think>" + "\\boxed{" * 20000, "4", False, True),
    ("<think>x</think>" + "<think>a</think>" * 20000 + " 4", "4", True, False),
    ("<think>x</think>" + "```python\n" * 20000, "4", False, True),
    (f"{T} 4" + " " * MAX_RESPONSE_CHARS, "4", False, False),  # longer than the judge reads
    # code: the last Python block after the thought, whatever its tag's spelling
    (f"{T}\n```py \n{INC}```", None, True, True),
    (f"{T}\n```python   \n{INC}```", None, True, True),
    (f"```python title=\"inc.py\"\n{INC}```", None, True, False),
    (f"{T}\n```Python3\n{INC}```", None, True, True),
    (f"{T} here: ```\n{INC}```", None, True, True),
    (f"<think>\n```python\n{INC}```\n</think> done", None, False, True),  # the program is in the thought
    (f"{T}\n```python\n{INC.replace('+ 1', '+ 2')}```", None, False, True),
    (f"{T}\n```bash\necho 2\n```", None, False, True),
    (f"{T}\n```python\n{INC}", None, False, True),  # unclosed: the response was cut
    (f"{T}\n```python\n{INC.replace('+ 1', '+ 2')}```\n```py\n{INC}```", None, True, True),
]


def _record(i: int, gold) -> dict:
    return {"id": f"r{i}", "prompt": "q", **({"answer": gold} if gold is not None else CODE)}


def _usable_rows():
    from r1mega.sandbox import isolation

    no_sandbox = isolation.isolation_problem() is not None
    return [(i, row) for i, row in enumerate(TABLE) if not (no_sandbox and row[1] is None)]


def test_rewards_eval_and_filters_agree_on_a_table_of_tricky_completions(tmp_path):
    from r1mega.generation.filters import FilterConfig, chain_of_thought, judge_sample
    from r1mega.generation.filters import language_share as filter_share
    from r1mega.rl.rewards import format_reward, language_reward, reward_terms, run_programs

    assert len(TABLE) >= 50
    rows = _usable_rows()
    recs = [_record(i, gold) for i, (_, gold, _, _) in rows]
    texts = [text for _, (text, _, _, _) in rows]
    # r1mega eval --completions: the command a user runs, one completion per problem
    data, comp, out = tmp_path / "data.jsonl", tmp_path / "completions.jsonl", tmp_path / "eval"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    comp.write_text("".join(json.dumps({"id": r["id"], "completion": t}) + "\n" for r, t in zip(recs, texts)))
    from cli_in_process import run_main  # its main() in this process; test_generate_eval.py starts the command
    from r1mega.cli import main

    done = run_main(main, ["eval", "--data", data, "--completions", comp, "--out", out])
    assert done.returncode == 0, done.stderr[-3000:]
    by_eval = {json.loads(line)["id"]: json.loads(line)["correct"]
               for line in (out / "data" / "scored.jsonl").read_text().splitlines()}
    programs = run_programs(texts, recs)  # the GRPO loop's path: every program of the batch at once
    loose = FilterConfig(require_format=False, min_language_share=0.0, max_paragraph_chars=10 ** 9,
                         allow_code_in_cot=True)
    wrong = []
    for (i, (text, gold, correct, formed)), rec in zip(rows, recs):
        reward = reward_terms(["accuracy", "format"], text, rec, programs)
        sample = {"completion": text, "finish_reason": "eos"}
        kept = judge_sample(rec, sample, loose) is None
        strict = judge_sample(rec, sample, FilterConfig(min_language_share=0.0, max_paragraph_chars=10 ** 9,
                                                        allow_code_in_cot=True))
        got = (reward["accuracy"] == 1.0, by_eval[rec["id"]], kept, reward["format"] == 1.0,
               strict != "format" if len(text) <= MAX_RESPONSE_CHARS else formed)
        if got != (correct, correct, correct, formed, formed):
            wrong.append((i, text[:60], got, (correct, formed)))
        assert format_reward(text, rec) == reward["format"]
        share = filter_share(*chain_of_thought(text)[:1], "en")
        assert language_reward(text, rec) == (0.0 if len(text) > MAX_RESPONSE_CHARS else 1.0 if share is None
                                              else share)
    assert not wrong, wrong


def test_the_reward_hole_is_closed():
    from r1mega.rl.rewards import total_reward

    assert total_reward(["accuracy", "format"], "<think>x <answer>4</answer></think> 5", {"answer": "4"}) == 0.0
    assert total_reward(["accuracy", "format"], "<think>x</think> <answer>4</answer>", {"answer": "4"}) == 2.0


@pytest.mark.parametrize("text, target, share", [
    ("3+4=7", "en", None),  # pure mathematics: no words, consistent
    (r"x^2 + \frac{a}{b} = \sqrt{2}, so n = 4 and \pi r^2", "en", 1.0),  # LaTeX, variables, English words
    ("We add three and four, so the answer is seven.", "en", 1.0),
    ("Nous devons calculer la somme de trois et quatre. La réponse est sept.", "en", 0.0),  # French is not English
    ("Nous devons calculer la somme de trois et quatre.", "fr", 1.0),
    ("Wir müssen drei und vier addieren, das ergibt sieben.", "en", 0.0),
    ("Calculamos la suma de tres y cuatro, que es siete.", "es", 1.0),
    ("Нам нужно сложить три и четыре, получаем семь.", "en", 0.0),  # Cyrillic
    ("Нам нужно сложить три и четыре, получаем семь.", "ru", 1.0),
    ("Нам нужно сложить три и четыре.", "uk", 1.0),  # the script is the language for Cyrillic
    ("首先计算三加四等于七。", "zh", 1.0),
    ("まず三と四を足すと七になります。", "ja", 1.0),  # kanji with kana: Japanese
    ("まず三と四を足すと七になります。", "zh", 0.0),  # ... not Chinese
    ("먼저 3과 4를 더하면 7입니다", "ko", 1.0),
    ("Πρέπει να προσθέσουμε τρία και τέσσερα", "el", 1.0),
    ("علينا أن نجمع ثلاثة وأربعة", "ar", 1.0),
    ("עלינו לחבר שלוש וארבע", "he", 1.0),
    ("हमें तीन और चार जोड़ने हैं", "hi", 1.0),
    ("هذا ٣ + ٤ = ٧", "ar", 1.0),  # Arabic-Indic digits are neutral
    ("Half of one 是 一 半 的 意 思 so", "en", 0.4),  # 4 English words, 6 Chinese characters
    ("We add them. 然后 我们 得到 七.", "en", 3 / 10),  # 3 English words, 7 Chinese characters
    ("We add three and four. Nous obtenons sept, donc la réponse est sept.", "en", 5 / 13),  # per sentence
    ("sin x + cos x = 1", "zh", None),  # function names are mathematics
])
def test_language_share(text, target, share):
    got = language_share(text, target)
    assert got == pytest.approx(share) if share is not None else got is None


def test_language_reward_of_a_thought_and_unknown_targets():
    from r1mega.rl.rewards import language_reward

    assert language_reward("<think>3+4=7</think> 7", {"language": "en"}) == 1.0
    assert language_reward("<think>Нам нужно сложить</think> 7", {"language": "en"}) == 0.0
    assert language_reward("<think>one two 三 四</think> x", {"language": "en"}) == 0.5
    with pytest.raises(ValueError, match="tlh"):
        language_share("hello", "tlh")


def test_an_all_russian_thought_is_rejected_as_the_reward_scores_it():
    from r1mega.generation.filters import FilterConfig, judge_sample
    from r1mega.rl.rewards import language_reward

    rec = {"id": "m", "prompt": "2+2?", "answer": "4"}
    text = "<think>Нам нужно сложить два и два.</think> <answer>4</answer>"
    sample = {"completion": text, "finish_reason": "eos"}
    assert language_reward(text, rec) == 0.0
    assert judge_sample(rec, sample, FilterConfig()) == "language_mixing"
    assert judge_sample({**rec, "language": "ru"}, sample, FilterConfig()) is None
    pure = {"completion": "<think>2+2=4</think> <answer>4</answer>", "finish_reason": "eos"}
    assert judge_sample(rec, pure, FilterConfig()) is None  # mathematics only: consistent


def test_one_fence_extractor():
    text = ("```py \nprint(1)\n```\ntext ```Python3  {.x}\na = 2\n  ```\n```bash\nls\n```\n"
            "``` python title=\"x.py\"\nb = 3```\n```python\nunclosed")
    assert fenced_blocks(text) == [("py", "print(1)\n"), ("python3", "a = 2\n"), ("bash", "ls\n"),
                                   ("python", "b = 3\n")]
    assert python_blocks(text) == ["print(1)\n", "a = 2\n", "b = 3\n"]
    assert python_blocks("use ```x``` inline") == []


def test_answers_and_equivalence():
    assert final_answer("no number here") is None
    assert final_answer("A: 7\nthen 8", fallback="a_colon") == "7"
    assert final_answer("A: 7\nthen 8", fallback="last_number") == "8"
    # "A:" ends other words too: only one that starts a word gives the answer
    assert final_answer("A: 7\nthe AREA: 9", fallback="a_colon") == "7"
    assert final_answer("DATA: 12", fallback="a_colon") is None
    assert final_answer("Q: 3+4=\nA:7 (AREA: 2)", fallback="a_colon") == "7 (AREA: 2)"
    assert final_answer("ends with 8", fallback="none") is None
    assert equivalent("1/2", "0.5") and not equivalent("nan", "nan") and equivalent("٧", "7")


def _judge_everything(text: str) -> None:
    from r1mega.eval.benchmark import judge
    from r1mega.generation.filters import FilterConfig, judge_sample
    from r1mega.judge import final_code
    from r1mega.rl.rewards import reward_terms

    rec, code = {"id": "p", "answer": "4"}, {"id": "c", **CODE}
    reward_terms(["accuracy", "format", "language"], text, rec)
    final_code(text)
    judge(rec, text)
    judge(code, text)  # a code problem: eval extracts the program (none here: no sandbox run)
    judge_sample(rec, {"completion": text, "finish_reason": "eos"}, FilterConfig(require_format=False))


@pytest.mark.parametrize("shape", ["<think>", "<answer>", "\\boxed{", "<think>a</think>", "```python\n", "{", "A:"])
def test_responses_built_to_stall_the_judge_are_read_in_linear_time(shape):
    """Issue 22: 10,000 unclosed <think> cost 9 s, four responses of 20,000 tags 182 s of eval."""
    text = "<think>x</think> " + shape * 20000
    _judge_everything(text[:1000])  # imports and caches warm
    t0 = time.perf_counter()
    _judge_everything(text)
    assert time.perf_counter() - t0 < 1.0  # measured 0.01-0.1 s on a loaded 2-core machine
    big = "<think>x</think> 4" + " " * MAX_RESPONSE_CHARS  # over the cap: not read at all
    t0 = time.perf_counter()
    _judge_everything(big)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("answer", ["1" * 20000, "-" + "1" * 20000, "1." + "1" * 20000, "." + "1" * 20000,
                                    "1" * 20000 + "e5", "1" * 20000 + "\\times 10^{5}"],
                         ids=["digits", "negative", "decimal", "point", "e-notation", "times-ten"])
def test_long_numbers_are_judged_in_linear_time(answer):
    """A 20,000-digit answer took 8 s per comparison (quadratic: the scientific-notation rewrite's regex split the
    digit run every way before failing); a response of 10^6 digits would have stalled a GRPO step for hours."""
    _judge_everything("<think>x</think> " + answer[:100])
    for text in (f"<think>x</think> \\boxed{{{answer}}}", f"<think>x</think> <answer>{answer}</answer>",
                 f"<think>x</think> {answer}"):
        t0 = time.perf_counter()
        _judge_everything(text)
        assert time.perf_counter() - t0 < 1.0  # measured 0.0x s after the fix


def test_the_judge_sits_low_in_the_import_graph():
    """r1mega/judge imports nothing from rl/, eval/ or generation/; the filters do not import eval/."""
    import ast
    import glob

    def imports(path):
        tree = ast.parse(open(path).read())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    for path in glob.glob(os.path.join(ROOT, "r1mega", "judge", "*.py")):
        bad = [m for m in imports(path) if m.startswith(("r1mega.rl", "r1mega.eval", "r1mega.generation"))]
        assert not bad, (path, bad)
    filters = imports(os.path.join(ROOT, "r1mega", "generation", "filters.py"))
    assert not [m for m in filters if m.startswith("r1mega.eval")] and "r1mega.judge.response" in filters


@pytest.mark.parametrize("shown", ["\\[ {} \\]", "\\[{}\\]", "\\[\n{}\n\\]", "\\( {} \\)", "$${}$$",
                                   "\\begin{{equation}} {} \\end{{equation}}", "\\begin{{equation*}}{}\\end{{equation*}}",
                                   "**{}**", "`{}`", "**\\( {} \\)**"])
def test_an_answer_set_in_display_math_is_the_math_it_shows(shown):
    """The judge parses an answer wrapped in $...$, inside which \\[ ... \\] does not parse: `<answer>\\[ \\frac{1}{2}
    \\]</answer>` and `\\[5\\]` scored 0 against 1/2 and 5 (`\\[ 5 \\]` scored 1 by a fallback that read the digit);
    so did a chat model's markdown emphasis, `<answer>**5**</answer>`."""
    for value, right, wrong in (("\\frac{1}{2}", "0.5", "\\frac{1}{3}"), ("5", "5", "6"), ("x = 5", "5", "6")):
        text = "<think>t</think> <answer>" + shown.format(value) + "</answer>"
        assert is_correct(text, right)[1] and not is_correct(text, wrong)[1], text
        assert equivalent(shown.format(right), value) and not equivalent(shown.format(wrong), value)  # as a reference
    hedge = "<think>t</think> <answer>" + shown.format("5") + " or " + shown.format("6") + "</answer>"
    assert is_correct(hedge, "5")[1] + is_correct(hedge, "6")[1] <= 1
