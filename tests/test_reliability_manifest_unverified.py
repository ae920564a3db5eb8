"""train.verify_checkpoint=false skips reading every tensor for its CRC32, not the manifest (it
hashes only meta.json, rng.pt, listings and headers: 0.3 ms): an edited meta.json (consumed
samples) must still make the resume fall back instead of continuing at the edited position."""
import json

from tiny_pretrain import corpus, pretrain


def test_an_edited_meta_json_falls_back_without_crc_checks(tmp_path, capfd):
    (tmp_path / "d").mkdir()
    corpus(tmp_path / "d" / "c", seed=0)
    unbroken = pretrain(tmp_path, 3)["losses"]
    meta = tmp_path / "run" / "checkpoints" / "step_00000002" / "meta.json"
    m = json.loads(meta.read_text())
    m["consumed_samples"] -= 2  # a step's worth: the run would see a batch twice
    meta.write_text(json.dumps(m, indent=1))
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_00000002")
    capfd.readouterr()
    resumed = pretrain(tmp_path, 3, "train.verify_checkpoint=false")["losses"]
    assert f"{meta}: differs from what was saved" in capfd.readouterr().err
    assert resumed == unbroken[1:]  # fell back to step 1
