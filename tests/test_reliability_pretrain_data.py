"""A pretraining run resumed on changed .bin/.idx files (or another data.seq_length) is refused by
file and key: the saved position (consumed samples) means nothing in other data, and the run that
continued silently would not be the one that was resumed."""
import pytest

from r1mega.errors import ConfigError
from tiny_pretrain import corpus, pretrain as run


@pytest.fixture
def started(tmp_path):
    (tmp_path / "d").mkdir()
    corpus(tmp_path / "d" / "c", seed=0)
    run(tmp_path, 2)
    return tmp_path


def test_same_data_resumes(started):
    assert run(started, 3)["steps"] == 3


def test_changed_tokens_of_equal_sizes_are_refused_by_file(started):
    before = {p: p.stat().st_size for p in (started / "d").iterdir()}
    corpus(started / "d" / "c", seed=1)  # same document lengths: same sizes, same .idx, other tokens
    assert {p: p.stat().st_size for p in (started / "d").iterdir()} == before
    with pytest.raises(ConfigError) as e:
        run(started, 3)
    assert "data.paths" in str(e.value) and "c.bin" in str(e.value) and "train.allow_data_change" in str(e.value)


def test_a_longer_corpus_is_refused_and_the_override_continues(started):
    corpus(started / "d" / "c", seed=0, docs=50)  # documents appended: the saved windows moved
    with pytest.raises(ConfigError, match="data.paths"):
        run(started, 3)
    assert run(started, 3, "train.allow_data_change=true")["steps"] == 3


def test_a_train_load_of_another_run_checks_the_data_as_its_own_resume(started):
    """train.load of another pretraining run's checkpoint continues at its step and data position, as the
    run's own resume does: on the same data it continues; on other data it went on silently at the saved
    position, now refused by file (train.allow_data_change continues deliberately)."""
    from r1mega.config import load_config
    from r1mega.train.trainer import train
    from tiny_pretrain import TINY

    ckpt = started / "run" / "checkpoints" / "step_00000002"

    def fork(name, *extra):
        return train(load_config(None, TINY + [f"data.paths=[{started / 'd' / 'c'}]", f"train.run_dir={started / name}",
                                               "train.steps=3", f"train.load={ckpt}", *extra]), "pretrain")

    assert len(fork("same")["losses"]) == 1  # steps 2 -> 3
    corpus(started / "d" / "c", seed=1)  # same sizes, other tokens
    with pytest.raises(ConfigError) as e:
        fork("other")
    assert "data.paths" in str(e.value) and str(ckpt) in str(e.value) and "train.allow_data_change" in str(e.value)
    assert len(fork("deliberate", "train.allow_data_change=true")["losses"]) == 1


def test_another_seq_length_is_refused_by_key(started):
    with pytest.raises(ConfigError, match="data.seq_length"):
        run(started, 3, "data.seq_length=4")


def test_another_blend_of_the_same_files_is_refused_by_key(tmp_path):
    """data.weights decides which file each sample position reads: resumed under another blend, the run
    went on silently at the saved position in other samples (the files matched). Refused by key now; the
    same proportions written otherwise ([2, 2] for [1, 1]) are the same samples and resume."""
    (tmp_path / "d").mkdir()
    corpus(tmp_path / "d" / "c", seed=0)
    corpus(tmp_path / "d" / "c2", seed=1)
    both = f"data.paths=[{tmp_path / 'd' / 'c'},{tmp_path / 'd' / 'c2'}]"
    run(tmp_path, 2, both, "data.weights=[1,1]")
    with pytest.raises(ConfigError, match="data.weights.*train.allow_data_change"):
        run(tmp_path, 3, both, "data.weights=[1,3]")
    assert run(tmp_path, 3, both, "data.weights=[2,2]")["steps"] == 3
    assert run(tmp_path, 4, both, "data.weights=[1,3]", "train.allow_data_change=true")["steps"] == 4


def test_another_seed_is_refused_by_key(started):
    """The seed orders the samples (each file's windows are a seeded permutation): resumed under another
    one, the run went on at the saved position in other samples (loss 5.573 for an unbroken 5.571 in the
    tiny config). Refused by key; train.allow_data_change continues."""
    with pytest.raises(ConfigError, match="'seed'.*train.allow_data_change"):
        run(started, 3, "seed=7")
    assert run(started, 3, "seed=7", "train.allow_data_change=true")["steps"] == 3
