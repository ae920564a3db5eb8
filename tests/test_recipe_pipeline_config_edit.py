"""A `r1mega pipeline` rerun after its model config file was edited (e.g. optim.lr or the synthetic
corpus changed) reported the finished stages as done, with the numbers of the old config: only the
config's path entered the stage's options. The config's content is recorded in DONE now and a
changed one refused by stage; an edit of comments or spacing only is not a change."""
import os
import shutil

from r1mega.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_an_edited_model_config_is_not_reported_with_old_results(tmp_path, capsys):
    model = tmp_path / "model.yaml"
    shutil.copyfile(os.path.join(ROOT, "configs", "tiny", "pretrain.yaml"), model)
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"model_config: {model}\n"
                        "eval: {samples: 1, max_new_tokens: 2, template: raw}\n"
                        "stages:\n"
                        "  - {name: base, kind: pretrain, overrides: [train.steps=1, train.log_interval=100]}\n")
    out = tmp_path / "out"
    argv = ["pipeline", "--config", str(pipeline), "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    model.write_text("# a comment only\n" + model.read_text())
    assert main(argv) == 0  # same settings: done earlier, skipped
    assert "== base: done earlier, skipped" in capsys.readouterr().out
    model.write_text(model.read_text().replace("lr: 0.0015", "lr: 0.003"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: config error at 'stages.base': {out / 'base' / 'DONE'}: this stage finished earlier with " \
           f"another content of {model}" in err
