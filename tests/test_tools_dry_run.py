"""Hostile probe of `--dry-run`: it applies the run's own training rules (batch split, schedule,
virtual stages, steps), so it never prints a plan that "fits" for a launch the run then refuses.
Before: it checked only the model x layout rules."""
from __future__ import annotations

import os

import pytest

from r1mega import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny", "pretrain.yaml")


@pytest.mark.parametrize("world,overrides,key", [
    (4, ["parallel.pp=4", "train.virtual_stages=2", "train.schedule=interleaved"], "train.virtual_stages"),
    (2, ["data.global_batch_size=12"], "data.global_batch_size"),  # dp 2 x micro 4 = 8 per step
    (1, ["train.steps=0"], "train.steps"),
])
def test_dry_run_refuses_what_the_run_refuses(tmp_path, capsys, monkeypatch, world, overrides, key):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["pretrain", "--config", TINY, "--dry-run", "--world", str(world), *overrides]) == 2
    err = capsys.readouterr().err
    assert f"config error at '{key}'" in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_dry_run_of_a_valid_launch_still_plans(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["pretrain", "--config", TINY, "--dry-run", "--world", "4", "parallel.tp=2",
                     "parallel.ep=2", "parallel.etp=1"]) == 0
    assert "fits in 80 GiB per GPU" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []
