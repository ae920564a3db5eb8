"""Code that runs inside spawned ranks for the FP8 tests."""
from __future__ import annotations

from layout_workers import layouts_worker
from r1mega.kernels import use_backend
from r1mega.kernels.fp8_backend import EmulatedBlockwiseFP8
from r1mega.kernels.fp8_blockwise import BlockwiseRecipe


def fp8_layouts_worker(rank: int, world: int, block: int, pow2_scales: bool, *args) -> list[dict]:
    """layout_workers.layouts_worker with every linear and routed expert on the FP8 emulation."""
    with use_backend(EmulatedBlockwiseFP8(BlockwiseRecipe(block, pow2_scales))):
        return layouts_worker(rank, world, *args)
