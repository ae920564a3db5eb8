"""`r1mega pipeline` hands a stage's final checkpoint to the next stage as a weights-only copy with a
fresh manifest. The copy is made only from files that match the stage's own manifest: rank files
swapped in or a meta.json edited after the save would otherwise pass every later check."""
import json
import os

import pytest

from r1mega.errors import CheckpointError
from r1mega.recipe import Runner
from r1mega.train.checkpoint import read_meta, save_checkpoint, verify_manifest
from rl_workers import sharp_model


def _stage(tmp_path) -> tuple[Runner, str]:
    chunks, ps = sharp_model({}, 1)
    src = save_checkpoint(str(tmp_path / "sft" / "run" / "checkpoints"), 5, chunks, None, ps, {"kind": "test"})
    runner = Runner.__new__(Runner)  # only `out` is read by weights()
    runner.out = str(tmp_path)
    return runner, src


def test_an_intact_stage_is_copied_with_a_manifest_of_its_own(tmp_path):
    runner, _ = _stage(tmp_path)
    dst = runner.weights("sft")
    meta = read_meta(dst)
    assert meta["step"] == 0 and meta["kind"] == "weights"
    verify_manifest(dst, meta)


def test_a_stage_meta_edited_after_its_save_is_refused_and_nothing_is_copied(tmp_path):
    runner, src = _stage(tmp_path)
    meta = json.loads(open(os.path.join(src, "meta.json")).read())
    with open(os.path.join(src, "meta.json"), "w") as f:
        json.dump({**meta, "kind": "edited"}, f)
    with pytest.raises(CheckpointError, match="meta.json"):
        runner.weights("sft")
    assert not os.path.exists(tmp_path / "sft" / "weights")
