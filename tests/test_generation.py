"""Generation on the training shards: KV-cache decoding equals full re-forwards on every layout,
sampling is reproducible across TP, and the MLA cache holds only the latent."""
import pytest
import torch

from r1mega.inference.sampling import row_keys, sample, uniform_noise
from r1mega.parallel.layout import single_process_state
from spawn_cases import run_ranks
from rl_workers import generation_worker

NEW = 6


@pytest.fixture(scope="module")
def one_process():
    return generation_worker(0, 1, [{}], NEW)[0]


def test_kv_cache_greedy_equals_full_forward_one_process(one_process):
    assert torch.equal(one_process["cached"], one_process["full"])
    assert one_process["values_per_token"] == 16 + 8  # kv_lora_rank + qk_rope_head_dim, not heads x dims


LAYOUTS = [dict(tp=2), dict(ep=2), dict(pp=2), dict(tp=2, sp=True)]


@pytest.fixture(scope="module")
def two_rank_runs(request):
    """Both two-rank tests of this file (those selected) in one spawn. {node name: per-rank results}."""
    from rl_workers import uneven_stop_worker
    from spawn_cases import run_selected

    return run_selected(request, {
        "test_layouts_generate_the_one_process_tokens": lambda p: (2, generation_worker, (LAYOUTS, NEW)),
        "test_data_parallel_ranks_stop_together_when_experts_span_them": lambda p: (2, uneven_stop_worker, ()),
    })


def test_layouts_generate_the_one_process_tokens(request, two_rank_runs, one_process):
    layouts = LAYOUTS
    per_rank = two_rank_runs[request.node.name]
    for i, lay in enumerate(layouts):
        for r in per_rank:
            res = r[i]
            assert torch.equal(res["cached"], res["full"]), lay
            assert torch.equal(res["cached"], one_process["cached"]), lay
            if lay.get("tp"):  # sampling under TP2 reproduces the one-process samples
                assert torch.equal(res["sampled"], one_process["sampled"]), lay
                torch.testing.assert_close(res["sampled_logprobs"], one_process["sampled_logprobs"],
                                           atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_tp2_pp2_ep2_generates_the_one_process_tokens(one_process):
    per_rank = run_ranks(generation_worker, 8, [dict(tp=2, pp=2, ep=2)], NEW)
    for r in per_rank:
        assert torch.equal(r[0]["cached"], r[0]["full"])
        assert torch.equal(r[0]["cached"], one_process["cached"])
        assert torch.equal(r[0]["sampled"], one_process["sampled"])


def test_sampling_follows_the_distribution_and_its_filters():
    ps = single_process_state()
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]]).repeat(4000, 1)
    keys = row_keys(3, 0, torch.arange(4000))
    tokens, logp = sample(logits, ps, temperature=1.0, keys=keys)
    freq = torch.bincount(tokens, minlength=5).float() / 4000
    torch.testing.assert_close(freq, logits[0].softmax(-1), atol=0.03, rtol=0)
    torch.testing.assert_close(logp, logits[0].log_softmax(-1)[tokens])
    top2, _ = sample(logits, ps, temperature=1.0, top_k=2, keys=keys)
    assert set(top2.tolist()) == {0, 1}
    nucleus, _ = sample(logits, ps, temperature=1.0, top_p=0.6, keys=keys)  # p(0)=.49, p(1)=.18
    assert set(nucleus.tolist()) == {0, 1}
    assert torch.equal(sample(logits, ps, temperature=0.0)[0], torch.zeros(4000, dtype=torch.long))
    again, _ = sample(logits, ps, temperature=1.0, keys=keys)
    assert torch.equal(again, tokens)
    u = uniform_noise(keys[:2], 0, 1000)
    assert torch.equal(uniform_noise(keys[:2], 400, 50), u[:, 400:450])  # any slice, same numbers


def test_data_parallel_ranks_stop_together_when_experts_span_them(request, two_rank_runs):
    r0, r1 = two_rank_runs[request.node.name]
    assert r0["generated"].tolist() == [1, 1]  # stopped after its first token
    assert r1["generated"].tolist() == [5, 5, 5]  # the other rank decoded on to the limit


def test_generation_gives_the_training_mode_back_when_it_fails():
    from r1mega.config import ModelConfig
    from r1mega.inference.generate import GenerationConfig, generate
    from r1mega.models.deepseek_v3.model import DeepseekV3

    torch.manual_seed(0)
    model = DeepseekV3(ModelConfig(num_layers=2, n_group=1, topk_group=1, num_mtp_layers=0), single_process_state())
    model.train()

    def stop(tokens):
        raise RuntimeError("a stop check that fails")

    with pytest.raises(RuntimeError, match="a stop check that fails"):
        generate(model, single_process_state(), [[1, 2, 3]], GenerationConfig(max_new_tokens=3, stop=stop))
    assert model.training and all(m.training for m in model.modules())
