"""Scale probe: ZeRO-1 shards the optimizer over DP, so nothing it keeps between steps may grow with
the whole bucket. The weight-decay and grad-norm masks were slices of whole-bucket float32 tensors,
which kept every rank holding 8 bytes per local parameter whatever the DP size (at DP 64: 43x the
12/64 bytes the optimizer states take)."""
from tests.scale_probe_workers import optimizer_storage
from tests.spawn_cases import run_ranks


def test_optimizer_keeps_nothing_larger_than_its_shard_under_dp4():
    for rank, buckets in enumerate(run_ranks(optimizer_storage, 4)):
        for b in buckets:
            assert b["shard"] * 4 >= b["numel"]  # the bucket really is split four ways
            for name, nbytes in b["bytes"].items():
                # float32 states: 4 bytes per shard element; masks: at most as much
                assert nbytes <= 4 * b["shard"], (rank, name, nbytes, b["shard"], b["numel"])
