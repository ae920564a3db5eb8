"""Run logging on rank 0: a progress bar with the step's numbers, a JSONL file, optional wandb.

wandb runs offline unless WANDB_MODE says otherwise (no network is assumed); `wandb sync` uploads later.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Optional

from tqdm import tqdm


class MetricsLog:
    def __init__(self, run_dir: str, total_steps: int, start_step: int, enabled: bool,
                 wandb_project: Optional[str] = None, config=None):
        self.enabled = enabled
        self.wandb = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self.file = open(os.path.join(run_dir, "metrics.jsonl"), "a")
        self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, desc="train")
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise SystemExit("train.wandb=true needs wandb: pip install 'r1mega[wandb]'") from None

            self.wandb = wandb.init(project=wandb_project, dir=run_dir, mode=os.environ.get("WANDB_MODE", "offline"),
                                    config=asdict(config) if config is not None else None)

    def log(self, step: int, metrics: dict, echo: bool = True) -> None:
        """Record a step; `echo` also prints it as a line above the bar."""
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        short = {k: metrics[k] for k in ("loss", "lr", "grad_norm", "tok/s", "mfu") if k in metrics}
        self.bar.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in short.items()})
        self.bar.update(1)
        if echo:
            tqdm.write(f"step {step:>6} " + " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def print(self, msg: str) -> None:
        if self.enabled:
            tqdm.write(msg)

    def close(self) -> None:
        if not self.enabled:
            return
        self.bar.close()
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()
