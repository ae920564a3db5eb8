"""Scale probe: saving a checkpoint under ZeRO-1 all-gathered every bucket's master weights and
AdamW moments whole onto every DP rank's device (and cloned them: 24 bytes per local parameter),
where ZeRO-1 holds 12 / DP: at 671B scale the save would not fit where training does. Now the
states are gathered a bounded window at a time into host memory, and only onto the rank that writes
them."""
from tests.scale_probe_workers import checkpoint_state_gather
from tests.spawn_cases import run_ranks

WINDOW = 4096


def test_save_gathers_optimizer_states_in_bounded_windows_onto_the_writer_only():
    results = run_ranks(checkpoint_state_gather, 2, WINDOW)
    for rank, r in enumerate(results):
        assert r["bucket_numel"] > 20 * WINDOW  # a window is a small part of a bucket
        assert r["largest_gather"] <= WINDOW, (rank, r)
        assert r["equal"], rank  # the writer's states are exactly the whole bucket's
    assert results[0]["writer"] == [True, True] and results[0]["names"] > 0
    assert results[1]["writer"] == [False, False] and results[1]["names"] == 0  # nothing held off the writer
