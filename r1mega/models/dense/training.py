"""The dense family's training rules: no extra losses or post-step work (the protocol's defaults),
and only its own parts (config.RECOMPUTE_UNITS) for selective recompute to name."""
from __future__ import annotations

from r1mega.errors import ConfigError
from r1mega.models.dense.config import RECOMPUTE_UNITS
from r1mega.models.spec import TrainingHooks


class DenseTraining(TrainingHooks):
    def validate(self, model_cfg, train, section: str) -> None:
        super().validate(model_cfg, train, section)
        # held to the `student:` section as before the rule moved here (a dense `model:` section is not yet)
        if section == "student" and train.recompute == "selective":
            absent = [x for x in train.recompute_modules if x not in RECOMPUTE_UNITS]
            if absent:
                raise ConfigError("train.recompute_modules",
                                  f"{absent} are parts of DeepSeek-V3/V3.2 layers (MLA, MoE, indexer); a dense student "
                                  f"has none, so they would recompute nothing")
