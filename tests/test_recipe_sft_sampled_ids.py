"""An SFT record with `prompt_ids`/`completion_ids` of the run's own tokenizer (its fingerprint in
`tokenizer`, as reject-sample writes them) trains those ids as they are; one past the vocabulary (an
edited or damaged sft.jsonl) reached the embedding and stopped the first step with an IndexError
traceback. It is refused by file:line before training."""
import json
import os

import pytest

from r1mega.data.sft import SFTData
from r1mega.data.tokenizer import load_tokenizer
from r1mega.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from r1mega.config import load_config
    from r1mega.data.synthetic import resolve_data

    root = tmp_path_factory.mktemp("sampled_ids")
    cfg = load_config(os.path.join(ROOT, "configs", "tiny", "sft.yaml"), [f"data.cache_dir={root}"])
    return load_tokenizer(resolve_data(cfg.data, "sft", cfg.model.vocab_size).tokenizer)


def test_a_sampled_id_past_the_vocabulary_is_named_by_line(tmp_path, tokenizer):
    chat = {"messages": [{"role": "user", "content": "Q: 1+2="}, {"role": "assistant", "content": "A: 3"}],
            "tokenizer": tokenizer.fingerprint()}
    good = {**chat, "prompt_ids": [5, 6], "completion_ids": [7, 8]}
    bad = {**chat, "prompt_ids": [5, 6], "completion_ids": [7, tokenizer.vocab_size]}
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError) as e:
        SFTData(str(path), tokenizer, 64, 0, "r1")
    assert str(e.value).startswith(f"{path}:3: token id {tokenizer.vocab_size} in 'prompt_ids'/'completion_ids'")
    path.write_text(json.dumps(good) + "\n")
    row = SFTData(str(path), tokenizer, 64, 0, "r1").rows[0]
    assert row.input_ids[:4].tolist() == [5, 6, 7, 8]  # the ids as given, trained as they are
