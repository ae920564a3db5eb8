"""GRPO's reference policy (the KL anchor): a frozen copy of the policy, refreshed every
`rl.ref_refresh_steps`, saved beside the policy's checkpoints and restored on resume, so a requeued
job keeps the anchor it had instead of resetting it to the current policy.

    <run_dir>/checkpoints/reference/step_00000400/   weights of the policy at the refresh step
A policy checkpoint's meta.json names the reference directory it goes with. Without a KL term
(rl.kl_coef = 0) the run holds a NoReference, so the loop keeps, refreshes and saves "its reference"
the same way either way.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Protocol

import torch
import torch.distributed as dist

from r1mega.errors import CheckpointError
from r1mega.parallel.layout import ParallelState
from r1mega.train.checkpoint import load_checkpoint, save_checkpoint
from r1mega.train.setup import init_weights


@torch.no_grad()
def copy_weights(src: torch.nn.ModuleList, dst: torch.nn.ModuleList) -> None:
    """Parameters and buffers (e.g. the routing bias), same layout on both sides."""
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        b.copy_(a)


class Reference(Protocol):
    """What GRPO does with its KL anchor: score with its model, refresh it from the policy on schedule,
    save it beside the policy's checkpoints and restore it on resume."""
    model: Optional[torch.nn.ModuleList]  # None: no KL term, nothing to score

    def refresh(self, policy: torch.nn.ModuleList, step: int) -> None: ...

    def due(self, step: int) -> bool: ...

    def save(self, ckpt_root: str) -> Optional[str]: ...

    def restore(self, ckpt_root: str, rel: Optional[str], step: int, verify: bool = True) -> bool: ...


class NoReference:
    """rl.kl_coef = 0: no model to keep, score, refresh or save."""
    model = None

    def refresh(self, policy: torch.nn.ModuleList, step: int) -> None:
        pass

    def due(self, step: int) -> bool:
        return False

    def save(self, ckpt_root: str) -> Optional[str]:
        return None

    def restore(self, ckpt_root: str, rel: Optional[str], step: int, verify: bool = True) -> bool:
        return False


class ReferencePolicy:
    def __init__(self, model: torch.nn.ModuleList, ps: ParallelState, refresh_steps: int,
                 start_load: Optional[str] = None, seed: int = 0):
        self.model, self.ps, self.refresh_steps = model, ps, refresh_steps
        self.model.eval()
        self.start_load, self.seed = start_load, seed  # where the policy started: the step-0 anchor's weights
        self.since_step = 0  # the policy step the reference is a copy of
        # not read from disk since it was last copied (a refresh, a rebuilt anchor): saved at the next
        # checkpoint even when a copy of that step is on disk (an abandoned attempt's, or a damaged one)
        self.unsaved = False

    def refresh(self, policy: torch.nn.ModuleList, step: int) -> None:
        copy_weights(policy, self.model)
        self.since_step = step
        self.unsaved = True

    @torch.no_grad()
    def _rebuild_start(self, verify: bool) -> None:
        """The step-0 anchor from where the policy started: train.load's weights, else the seeded
        initialisation (build_model's; the routing biases start at zero)."""
        if self.start_load:
            load_checkpoint(self.start_load, self.model, None, self.ps, verify=verify)
        else:
            init_weights(self.model, self.seed)
            for name, b in self.model.named_buffers():
                if name.endswith("e_score_correction_bias"):
                    b.zero_()

    def due(self, step: int) -> bool:
        """After optimizer step `step` (1-based), is it time to copy the policy?"""
        return bool(self.refresh_steps) and step % self.refresh_steps == 0

    def save(self, ckpt_root: str) -> str:
        """Collective. Written once per refresh; returns its directory relative to ckpt_root."""
        rel = os.path.join("reference", f"step_{self.since_step:08d}")
        again = self.unsaved or not os.path.exists(os.path.join(ckpt_root, rel, "meta.json"))
        if self.ps.world > 1:  # a damaged piece is found only by the ranks that read it: all save, or none
            flags: list = [None] * self.ps.world
            dist.all_gather_object(flags, again)
            again = any(flags)
        if again:
            save_checkpoint(os.path.join(ckpt_root, "reference"), self.since_step, self.model, None, self.ps,
                            {"kind": "grpo-reference"})
        self.unsaved = False
        return rel

    def restore(self, ckpt_root: str, rel: Optional[str], step: int, verify: bool = True) -> bool:
        """Load the saved reference; False when the checkpoint has none (then the caller copies). A
        damaged copy is a CheckpointError (the resume falls back to an older checkpoint), except the
        step-0 anchor's, which every checkpoint before the first refresh shares: it is the starting
        weights, rebuilt (with a warning) rather than failing them all."""
        if not rel:
            return False
        path = os.path.join(ckpt_root, rel)
        rng = torch.get_rng_state()
        try:
            load_checkpoint(path, self.model, None, self.ps, verify=verify)
            self.unsaved = False
        except CheckpointError as e:
            if os.path.basename(rel) != "step_00000000":
                raise
            print(f"warning: {f'rank {self.ps.rank}: ' if self.ps.world > 1 else ''}GRPO reference {path} is "
                  f"unusable ({e}); rebuilding the step-0 reference from "
                  f"{self.start_load or f'the initialisation (seed {self.seed})'}", file=sys.stderr, flush=True)
            self._rebuild_start(verify)
            self.unsaved = True
        finally:
            torch.set_rng_state(rng)  # the policy checkpoint's RNG is the one that counts
        self.since_step = int(os.path.basename(rel).split("_")[-1])
        return True
