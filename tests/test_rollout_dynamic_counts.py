"""Hostile probe: the engine's work counts of a dynamically sampled step (DAPO, rl.dynamic_sampling).

A step's rollout is several draws (the first rollout, then pools) merged into the groups trained. The
counts the step logs from it (speculative `draft_acceptance` = accepted / drafted, the decode work)
must be those of every draw this rank ran, each once: not of whichever draw happens to lead the merge."""
import torch

from r1mega.inference.generate import Rollout
from r1mega.parallel.layout import single_process_state
from r1mega.rl.rollout import draw_until_informative
from r1mega.rl.rollout import ScoredRollout

G = 2
COUNTS = ("draft_tokens", "draft_accepted", "decode_row_steps", "forwards", "preemptions", "prefill_tokens",
          "recomputed_tokens")


def scored(rewards: list[float], work: int) -> ScoredRollout:
    """A draw of len(rewards) // G groups whose engine counts are all `work` (drafts: work accepted of 2 x work)."""
    B, P, N = len(rewards), 3, 4
    tokens = torch.arange(B * (P + N)).view(B, P + N) % 50
    mask = torch.zeros(B, P + N, dtype=torch.bool)
    mask[:, P:] = True
    ro = Rollout(tokens, P, torch.zeros(B, dtype=torch.long), mask, torch.zeros(B, P + N), {}, 1, cache_bytes=work,
                 decode_row_steps=work, forwards=work, preemptions=work, prefill_tokens=work, recomputed_tokens=work,
                 draft_tokens=2 * work, draft_accepted=work)
    return ScoredRollout(ro, [{}] * B, [None] * B, [""] * B, [{}] * B, torch.tensor(rewards, dtype=torch.float64),
                         torch.zeros(B, dtype=torch.bool), N)


def _step(first_rewards, pools):
    """draw_until_informative on one process; pools: each round's rewards (work 10, 100, ...). Returns the
    step's rollout, the work all draws ran and the largest draw's cache."""
    first = scored(first_rewards, 1)
    drawn = []

    def draw(round_, offset, size, mine):
        rewards = pools[round_ - 1][:size * G]
        drawn.append(round_)
        return scored(rewards, 10 ** round_)
    out, _ = draw_until_informative(first, list(range(len(first_rewards) // G)), draw, G, 4,
                                    single_process_state(), torch.device("cpu"))
    return out.rollout, 1 + sum(10 ** r for r in drawn), 10 ** max(drawn, default=0)


def test_merged_counts_are_every_draw_once_when_a_pool_group_leads():
    # slot 0 uninformative, filled from the first pool; slot 1 informative, kept from the first rollout
    ro, total, peak = _step([1.0, 1.0, 0.0, 1.0], [[0.0, 1.0] * 8])
    for name in COUNTS:
        got, want = getattr(ro, name), total * (2 if name == "draft_tokens" else 1)
        assert got == want, f"{name}: {got}, the draws ran {want}"
    assert ro.draft_accepted / ro.draft_tokens == 0.5


def test_counts_include_pools_none_of_whose_groups_was_chosen():
    # every pool uninformative: the step trains the first rollout, but the pools were generated too
    ro, total, peak = _step([1.0, 1.0, 0.0, 1.0], [[1.0, 1.0] * 8] * 4)
    assert total > 1
    assert ro.cache_bytes == peak, f"cache_bytes {ro.cache_bytes}: the largest draw needed {peak}"
    for name in COUNTS:
        got, want = getattr(ro, name), total * (2 if name == "draft_tokens" else 1)
        assert got == want, f"{name}: {got}, the draws ran {want}"
