"""The compiled decoding step (GenerationConfig.compile_decode, inference/compiled_decode.py): few-row
steps run the model's decoding forward and the sampler as one torch.compile graph, and give the
eager step's tokens (greedy and sampled workloads), its log-probs within float rounding and the same
routing record; the graphs do not recompile per step as rows and the cache grow; rl.exact_rollouts
and multi-process layouts keep the eager step."""
import dataclasses

import pytest
import torch

from r1mega.config import Config, ModelConfig, ParallelConfig, load_config, validate, validate_rl, validate_training
from r1mega.errors import ConfigError
from r1mega.inference import compiled_decode
from r1mega.inference.continuous import ContinuousBatcher
from r1mega.inference.generate import GenerationConfig, generate
from r1mega.kernels import batch_invariant
from r1mega.parallel.layout import ParallelState, single_process_state
from r1mega.train.setup import build_chunks, init_weights

PROMPTS = [[5, 9, 17, 3, 44, 21], [7, 7, 30, 2, 11], [60, 1, 13, 90, 25, 8, 4]]


@pytest.fixture(scope="module")
def model():
    """Two layers (dense, then MoE: the graph covers both kinds, and compiles in less time than four)."""
    cfg = validate(Config(model=ModelConfig(vocab_size=128, num_layers=2, num_mtp_layers=0),
                          parallel=ParallelConfig()), 1)
    ps = single_process_state()
    chunks = build_chunks(cfg, ps)
    init_weights(chunks, seed=5)
    with torch.no_grad():  # larger weights: peaked distributions, no near-ties in greedy decoding
        for p in chunks.parameters():
            if p.dim() > 1:
                p.mul_(8)
    return chunks.eval(), ps


@pytest.fixture
def compiled_steps(monkeypatch):
    """Counts decoding steps taken by the compiled graph."""
    calls = []
    original = ContinuousBatcher.decode_compiled

    def counting(self, rows):
        calls.append(len(rows))
        return original(self, rows)
    monkeypatch.setattr(ContinuousBatcher, "decode_compiled", counting)
    return calls


def _real_routing(r):
    width = r.tokens.shape[1] - 1
    real = torch.zeros(width, r.tokens.shape[0], dtype=torch.bool)
    for i in range(r.tokens.shape[0]):
        real[int(r.pad[i]):r.prompt_len + int(r.completion_mask[i].sum()) - 1, i] = True
    return real


# stops end the rows at different steps (greedy after 7, 18 and 24 tokens; sampled 9, 13 and 21), so
# steps of 3, 2 and 1 live rows all decode
GREEDY = GenerationConfig(max_new_tokens=40, temperature=0.0, record_routing=True, block_size=4,
                          stop=lambda ids: len(ids) > 6 and ids[-1] % 6 == 0)
SAMPLED = GenerationConfig(max_new_tokens=40, temperature=1.0, top_p=0.9, seed=3, record_routing=True,
                           block_size=4, stop=lambda ids: len(ids) > 6 and ids[-1] % 9 == 0)


# greedy is the slow-marked case: each configuration compiles its own graphs (~1 min each on 2 cores)
@pytest.mark.parametrize("gen", [pytest.param(GREEDY, marks=pytest.mark.slow), SAMPLED], ids=["greedy", "sampled"])
def test_compiled_step_equals_eager(model, compiled_steps, gen):
    chunks, ps = model
    keys = torch.arange(len(PROMPTS))
    eager = generate(chunks, ps, PROMPTS, gen, rows=keys)
    assert not compiled_steps
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    fast = generate(chunks, ps, PROMPTS, dataclasses.replace(gen, compile_decode=True), rows=keys)
    lengths = eager.completion_mask.sum(1)
    # every decoding step ran compiled (3 rows <= COMPILED_MAX_ROWS), at several row counts
    assert len(compiled_steps) == int(lengths.max()) - 1 and {1, 3} <= set(compiled_steps)
    # one graph for one row, one for more (torch specialises size 1): not one per step, although the
    # cached length grew by 20 and the rows came and went
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - before <= 2
    assert torch.equal(fast.tokens, eager.tokens) and torch.equal(fast.completion_mask, eager.completion_mask)
    torch.testing.assert_close(fast.logprobs, eager.logprobs, atol=2e-5, rtol=0)
    assert (fast.logprobs[fast.completion_mask] < -1e-3).any()  # the log-probs compared are not all ~0
    real = _real_routing(eager)
    assert set(fast.routing) == set(eager.routing) == {1}
    assert torch.equal(fast.routing[1][real], eager.routing[1][real])
    assert lengths.min() < lengths.max() - 10, "the workload must be long-tailed"


def test_exact_rollouts_keep_the_eager_step(model, compiled_steps):
    chunks, ps = model
    with batch_invariant.exact_mode():
        eager = generate(chunks, ps, PROMPTS, SAMPLED)
        asked = generate(chunks, ps, PROMPTS, dataclasses.replace(SAMPLED, compile_decode=True))
    assert not compiled_steps
    assert torch.equal(asked.tokens, eager.tokens) and torch.equal(asked.logprobs, eager.logprobs)


def test_refused_where_it_cannot_run(model):
    chunks, ps = model
    two = ParallelState(cfg=ParallelConfig(tp=2), world=2)
    assert "one process" in compiled_decode.refusal(chunks[0], two, True)
    assert "speculative" in compiled_decode.refusal(chunks[0], ps, False)
    assert compiled_decode.refusal(chunks[0], ps, True) is None
    cfg = load_config("configs/tiny/r1_zero_demo.yaml", ["rl.exact_rollouts=true", "rl.compile_decode=true"])
    with pytest.raises(ConfigError, match="rl.compile_decode"):
        validate_rl(validate_training(cfg, 1, needs_data=False), 1)



def test_graphs_outlast_a_growing_table_and_row_counts(model, compiled_steps):
    """Eight rows decoding past the block table's first 16 blocks: the table grows under inference
    mode (the engine is built outside it) and the steps go from 8 rows through 2-4 to 1, yet the
    step runs on at most two graphs (it compiled seven on the issue's recipe: the table's kind, its
    sliced width and the MoE few-rows test each split a graph) and gives eager's tokens."""
    chunks, ps = model
    prompts = [[5 + i, 9, 17, 3 + i, 44, 21 + i][: 5 + i % 2] for i in range(8)]
    gen = dataclasses.replace(SAMPLED, max_new_tokens=80, stop=lambda ids: len(ids) > 60 and ids[-1] % 5 == 0)
    keys = torch.arange(len(prompts))
    eager = generate(chunks, ps, prompts, gen, rows=keys)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    fast = generate(chunks, ps, prompts, dataclasses.replace(gen, compile_decode=True), rows=keys)
    lengths = eager.completion_mask.sum(1)
    assert int(lengths.max()) + 6 > 16 * gen.block_size  # the longest row outgrew the first table
    assert {1, 8} <= set(compiled_steps) and set(compiled_steps) & {2, 3, 4}
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - before <= 2
    assert torch.equal(fast.tokens, eager.tokens) and torch.equal(fast.completion_mask, eager.completion_mask)


@pytest.mark.slow  # a second model compiles its own graphs (~1 min)
def test_graphs_follow_their_own_model_and_its_weights(model, compiled_steps):
    """The compiled steps skip dynamo's guards on the model (its modules, parameters and the functions
    it inlines: ~1,300 checks a call) and are keyed by the model object instead: a second model of the
    same kind but another shape (three layers) gets its own graphs and gives its own eager tokens, and
    weights changed in place (an optimizer step between GRPO rollouts) are read by the graphs already
    compiled."""
    chunks, ps = model
    cfg = validate(Config(model=ModelConfig(vocab_size=128, num_layers=3, num_mtp_layers=0),
                          parallel=ParallelConfig()), 1)
    other = build_chunks(cfg, ps)
    init_weights(other, seed=6)
    with torch.no_grad():
        for p in other.parameters():
            if p.dim() > 1:
                p.mul_(8)
    other.eval()
    keys = torch.arange(len(PROMPTS))
    fast = dataclasses.replace(SAMPLED, compile_decode=True)
    first = generate(chunks, ps, PROMPTS, fast, rows=keys)
    for step in range(2):
        if step == 1:  # an update in place: same tensors, new values
            with torch.no_grad():
                for p in other.parameters():
                    p.mul_(1.0 + 0.5 * torch.rand_like(p))
        eager = generate(other, ps, PROMPTS, SAMPLED, rows=keys)
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        compiled = generate(other, ps, PROMPTS, fast, rows=keys)
        if step == 1:
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before  # no new graph
        assert torch.equal(compiled.tokens, eager.tokens), step
        torch.testing.assert_close(compiled.logprobs, eager.logprobs, atol=2e-5, rtol=0)
        assert not torch.equal(compiled.tokens, first.tokens)
    assert compiled_steps


@pytest.mark.parametrize("vocab", [384, 200, 9000])
def test_noise_drawn_ahead_is_the_noise_of_each_position(vocab):
    """The compiled step draws a row's noise several positions at a time (one position when the
    vocabulary is large): at every position, whatever rows share the step and whenever a row retired
    or was drawn for, a row's noise is `gumbel_noise` of its own key and position, bit for bit."""
    from types import SimpleNamespace

    from r1mega.inference.continuous import _Row
    from r1mega.inference.sampling import gumbel_noise, row_keys_host

    seed = 11
    engine = SimpleNamespace(gen=SimpleNamespace(seed=seed), model=SimpleNamespace(vocab_size=vocab),
                             device=torch.device("cpu"))
    rows = [_Row(i, None, key) for i, key in enumerate([3, -7, 2 ** 40, 5])]
    for r, start in zip(rows, [0, 5, 30, 2]):
        r.out = [1] * start
    live = list(rows)
    for step in range(40):
        if step == 9:  # a row leaves, another comes back after a gap (as a preempted one does)
            live.remove(rows[1])
        if step == 20:
            rows[1].out += [1] * 7
            live.append(rows[1])
        noise = ContinuousBatcher._step_noise(engine, live)
        want = gumbel_noise(row_keys_host(seed, [len(r.out) for r in live], [r.key for r in live]), 0, vocab)
        assert torch.equal(noise, want), step
        for r in live:
            r.out.append(1)


def test_a_failed_compile_is_not_tried_again(model, monkeypatch):
    """A compile that fails (no working C++ compiler, say) falls back to the eager step, and later
    rollouts of the process decode eagerly at once instead of failing to compile every round."""
    chunks, ps = model
    tries = []

    def broken(model_, ps_, one_row):
        def step(*args):
            tries.append(one_row)
            raise torch._dynamo.exc.BackendCompilerFailed(broken, RuntimeError("no C++ compiler"), None)
        return step

    monkeypatch.setattr(compiled_decode, "_failed", None)
    monkeypatch.setattr(compiled_decode, "compiled_step", broken)
    gen = GenerationConfig(max_new_tokens=6, temperature=0.0, seed=1)
    with torch.inference_mode():
        eager = generate(chunks, ps, PROMPTS, gen).tokens
        first = generate(chunks, ps, PROMPTS, dataclasses.replace(gen, compile_decode=True)).tokens
        second = generate(chunks, ps, PROMPTS, dataclasses.replace(gen, compile_decode=True)).tokens
    assert torch.equal(first, eager) and torch.equal(second, eager)
    assert len(tries) == 1 and "no C++ compiler" in compiled_decode._failed
