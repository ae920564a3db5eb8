"""Fixtures shared by several test files: expensive runs done once per session and only read."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def shipped_tiny_pretraining(tmp_path_factory):
    """configs/tiny/pretrain.yaml trained exactly as shipped (80 steps, fp32, no FP8): the result dict
    of train(). The loss-falls check and the FP8 comparison read the same run."""
    from r1mega.config import load_config
    from r1mega.train.trainer import train

    root = tmp_path_factory.mktemp("shipped_tiny_pretraining")
    cfg = load_config(os.path.join(ROOT, "configs", "tiny", "pretrain.yaml"),
                      [f"train.run_dir={root / 'run'}", f"data.cache_dir={root / 'data'}", "train.fp8=none",
                       "train.log_interval=1000"])  # echo only: the numbers do not depend on it
    return train(cfg, "pretrain")


def pytest_collection_finish(session):
    from background_runs import start_selected

    start_selected(session)  # slow end-to-end commands run beside the other tests (tests/background_runs.py)


def pytest_sessionfinish(session):
    from background_runs import stop_all

    stop_all()


@pytest.fixture
def background_run(request):
    """The finished background command of this test (@pytest.mark.background_command): .wait(timeout)
    gives its CompletedProcess, .root its directory."""
    from background_runs import run_of

    return run_of(request.node)
