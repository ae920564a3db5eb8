"""A JSONL record naming a key twice ({"answer": "5", ..., "answer": "6"}, a merge gone wrong) was read
with the last value, silently: a prompt, benchmark, SFT or completions file now refuses it by
file:line and key, in nested objects too. Bulk text corpora (iter_texts) keep the plain parser."""
import pytest

from r1mega.data.jsonl import iter_texts
from r1mega.data.sft import read_sft_jsonl
from r1mega.errors import DataError
from r1mega.eval.benchmark import read_completions
from r1mega.generation.records import read_prompt_records

OK = '{"id": "a", "prompt": "Q: 1+2=", "answer": "3"}\n'


@pytest.mark.parametrize("reader, line, key", [
    (lambda p: read_prompt_records(p, need_answer=True), '{"id": "b", "prompt": "Q: 2+2=", "answer": "4", "answer": "5"}',
     "answer"),
    (read_sft_jsonl, '{"messages": [{"role": "user", "content": "q", "role": "assistant"}, '
                     '{"role": "assistant", "content": "a"}]}', "role"),
    (lambda p: read_completions(p, [{"id": "a"}]), '{"id": "a", "completion": "3", "completion": "4"}', "completion"),
])
def test_a_key_named_twice_is_refused_by_line(tmp_path, reader, line, key):
    path = tmp_path / "f.jsonl"
    first = OK if "prompt" in line else ('{"id": "a", "completion": "3"}\n' if "completion" in line else
                                         '{"messages": [{"role": "user", "content": "q"}, '
                                         '{"role": "assistant", "content": "a"}]}\n')
    path.write_text(first + "\n" + line + "\n")
    with pytest.raises(DataError) as e:
        reader(str(path))
    assert str(e.value).startswith(f"{path}:3: key {key!r} appears twice in one object")


def test_text_corpora_keep_the_plain_reader(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "a", "text": "b"}\n')
    assert list(iter_texts(str(path))) == ["b"]
