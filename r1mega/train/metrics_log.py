"""Run logging on rank 0: a progress bar with the step's numbers, a JSONL file, optional wandb.

wandb runs offline unless WANDB_MODE says otherwise (no network is assumed); `wandb sync` uploads later.
GRPO also logs a wandb table of sample rollouts (prompt, completion, each reward) every
rl.log_rollouts_every steps -- the rows it appends to rollouts.jsonl.
A resumed run first drops the records of steps after its checkpoint (they are trained again), so
metrics.jsonl holds each step once.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Optional

from tqdm import tqdm

from r1mega.atomic_io import discard, open_fresh, write_error
from r1mega.errors import ConfigError


class MetricsLog:
    def __init__(self, run_dir: str, total_steps: int, start_step: int, enabled: bool,
                 wandb_project: Optional[str] = None, config=None):
        self.enabled = enabled
        self.wandb = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        path = os.path.join(run_dir, "metrics.jsonl")
        _keep_steps_upto(path, start_step)
        # GRPO's sample rollouts, appended per step like the metrics: a resume redraws steps past start_step
        _keep_steps_upto(os.path.join(run_dir, "rollouts.jsonl"), start_step)
        self.file = open(path, "a")
        self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, desc="train")
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise ConfigError("train.wandb", "true needs the wandb package: pip install 'r1mega[wandb]'") from None

            self.wandb = wandb.init(project=wandb_project, dir=run_dir, mode=os.environ.get("WANDB_MODE", "offline"),
                                    config=asdict(config) if config is not None else None)

    def log(self, step: int, metrics: dict, echo: bool = True) -> None:
        """Record a step; `echo` also prints it as a line above the bar."""
        if not self.enabled:
            return
        try:
            self.file.write(json.dumps({"step": step, **metrics}) + "\n")
            self.file.flush()
        except OSError as e:  # a full disk: the checkpoints are whole, a rerun resumes (and drops a torn line)
            raise write_error(self.file.name, e) from None
        short = {k: metrics[k] for k in ("loss", "lr", "grad_norm", "tok/s", "mfu") if k in metrics}
        self.bar.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in short.items()})
        self.bar.update(1)
        if echo:
            tqdm.write(f"step {step:>6} " + " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def rollout_table(self, step: int, rollouts: list[dict]) -> None:
        """A wandb table of sample rollouts (rows as rollouts.jsonl holds them); nothing without wandb."""
        if self.wandb is None or not rollouts:
            return
        import wandb

        columns, data = rollout_table_rows(rollouts)
        self.wandb.log({"rollouts": wandb.Table(columns=columns, data=data)}, step=step)

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


ROLLOUT_COLUMNS = ("step", "id", "prompt", "completion", "reward")


def append_rollouts(path: str, step: int, scored, n: int) -> list[dict]:
    """A few sample rollouts of GRPO's step (scored: its ScoredRollout) appended to `path`, for reading
    what the policy writes (like TRL/verl); returns them, the rows of the rollout table."""
    rows = [{"step": step, "id": scored.problems[i].get("id"), "prompt": scored.rendered[i].text,
             "completion": scored.responses[i], "reward": float(scored.rewards[i]), "rewards": scored.terms[i],
             "answer": scored.problems[i].get("answer"), "truncated": bool(scored.truncated[i])}
            for i in range(min(n, len(scored.responses)))]
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    except OSError as e:
        raise write_error(path, e) from None
    return rows


def rollout_table_rows(rollouts: list[dict]) -> tuple[list[str], list[list]]:
    """(columns, rows) of the rollout table: step, id, prompt, completion, total reward, one column per
    reward term, the reference answer and whether the response was cut."""
    terms = sorted({k for r in rollouts for k in r.get("rewards", {})})
    columns = [*ROLLOUT_COLUMNS, *(f"reward/{k}" for k in terms), "answer", "truncated"]
    rows = [[r.get(c) for c in ROLLOUT_COLUMNS] + [r.get("rewards", {}).get(k) for k in terms]
            + [None if r.get("answer") is None else str(r["answer"]), bool(r.get("truncated"))] for r in rollouts]
    return columns, rows


def table_due(step: int, steps_done: int, every: int) -> bool:
    """Whether steps step+1 .. step+steps_done pass a multiple of `every` (0: never)."""
    return every > 0 and (step + steps_done) // every > step // every


def _keep_steps_upto(path: str, last: int) -> None:
    """Rewrite (atomically) a metrics file without the records of steps > last, and without a
    line cut short by a crash."""
    if not os.path.exists(path):
        return
    kept, dropped = [], 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                rec = json.loads(raw)
                keep = isinstance(rec, dict) and int(rec.get("step", 0)) <= last
            except (ValueError, TypeError):
                keep = False
            if keep:
                kept.append(raw if raw.endswith(b"\n") else raw + b"\n")
            else:
                dropped += 1
    if dropped:
        tmp = path + ".tmp"
        try:
            with open_fresh(tmp, "wb") as f:  # a symlink planted at the temporary name is not written through
                f.writelines(kept)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:  # the old file stays whole
            discard(tmp)
            raise write_error(path, e) from None
