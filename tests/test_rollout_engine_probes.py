"""Hostile probes of the continuous-batching rollout engine (issue 20), as a user drives it: a
sample's tokens depend only on (seed, key, position), whatever the slot, admission step, batch,
row/cache budget (preemption), block size or layout, and equal the static engine's in float32;
the cache budget holds; blocks are freed; routing replay records what a teacher-forced forward
routes; stop strings checked on the tail cut where the whole text would. Tiny random float32 models
built here (tests/rollout_engine_probe_workers.py)."""
from __future__ import annotations

import json
import os
import random

import pytest
import torch

from r1mega.inference.continuous import ContinuousBatcher, row_need_tokens
from r1mega.inference.generate import GenerationConfig, generate, generate_static
from r1mega.kernels.block_attention import documents_from_pad
from r1mega.models.deepseek_v3.moe import MoE
from rollout_engine_probe_workers import load, per_key, run_cases, save_tiny


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    return save_tiny(str(tmp_path_factory.mktemp("moe")))


@pytest.fixture(scope="module")
def moe(moe_dir):
    return load(moe_dir)


def _prompts(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 96, (n,), generator=g).tolist() for n in lengths]


# 1 token, block-size multiples and +-1, longer than two blocks; 3 samples each
EDGE = [p for p in _prompts([1, 5, 15, 16, 17, 32, 40]) for _ in range(3)]
KEYS = list(range(100, 100 + len(EDGE)))


def least_budget(prompts, max_new_tokens: int, block_size: int = 16) -> int:
    """The smallest max_cache_tokens the engine takes for these prompts (the most preemption)."""
    return max(row_need_tokens(len(p), max_new_tokens, block_size) for p in prompts)


def _run(stage, ps, prompts, keys, **kw):
    return per_key(generate(stage, ps, prompts, GenerationConfig(**kw), rows=torch.tensor(keys)), keys)


def _same_tokens(a: dict, b: dict, lp_tol: float = 5e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k][0] == b[k][0], f"key {k}: {a[k][0]} != {b[k][0]}"
        assert max((abs(x - y) for x, y in zip(a[k][1], b[k][1])), default=0.0) <= lp_tol


def test_cache_budget_holds_when_a_prompt_s_samples_are_admitted_over_several_steps(moe):
    """A 6-token prompt, 3 samples, a 38-token budget: two samples fit (a block each), the third
    waits. The group keeps its prompt block for the waiting sample and each admitted one copies it:
    3 blocks (48 tokens). Admission counted the prompt as 6 tokens, so the cache overshot the budget
    and the next step preempted a row it had just admitted (recomputed for nothing)."""
    stage, ps = moe
    p = [5, 6, 7, 8, 9, 10]
    for max_rows in (0, 2):
        ro = generate(stage, ps, [p] * 3, GenerationConfig(max_new_tokens=5, seed=0, max_cache_tokens=38,
                                                           max_rows=max_rows), rows=torch.arange(3))
        per_token = ro.cache_values_per_token_layer * 4 * len(stage.layer_ids)  # float32
        assert ro.cache_bytes <= 38 * per_token, ro.cache_bytes / per_token
        assert ro.preemptions == 0


def test_cache_budget_holds_at_every_step(moe):
    """Random prompts, groups, budgets and block sizes: the blocks in use stay within max_cache_tokens
    at every step, a lone row included; a budget below what one row can need is refused up front,
    naming the key (and refuses only budgets near that need: a row's last step holds its prompt and
    tokens)."""
    stage, ps = moe
    worst, refused = [], 0

    class Watched(ContinuousBatcher):
        def _check(self):
            worst.append(self.pool.used * self.bs / self.gen.max_cache_tokens)

        def decode_forward(self, rows):
            out = super().decode_forward(rows)
            self._check()
            return out

        def start(self, new):
            super().start(new)
            self._check()

    rng = random.Random(0)
    for case in range(25):
        prompts = [[rng.randint(1, 95) for _ in range(rng.randint(1, 40))] for _ in range(rng.randint(1, 4))]
        P = [p for p in prompts for _ in range(rng.choice([1, 2, 3]))]
        gen = GenerationConfig(max_new_tokens=rng.choice([5, 20]), seed=case, max_cache_tokens=rng.choice([40, 64, 100, 150]),
                               block_size=rng.choice([4, 16]))
        try:
            e = Watched(stage, ps, P, list(range(len(P))), gen)
        except ValueError as err:
            assert "max_cache_tokens" in str(err) and "rl.rollout_cache_tokens" in str(err)
            bs = gen.block_size
            assert any(gen.max_cache_tokens < (-(-(len(p) + gen.max_new_tokens) // bs) + 1) * bs for p in P)
            refused += 1
            continue
        with torch.inference_mode():
            e.run()
        assert e.pool.used == 0  # every block back
    assert 0 < refused < 20 and worst and max(worst) <= 1.0, (refused, max(worst))


def test_samples_do_not_depend_on_slot_batch_budget_or_block_size(moe):
    stage, ps = moe
    kw = dict(max_new_tokens=20, seed=3, top_p=0.9)
    base = _run(stage, ps, EDGE, KEYS, **kw)
    least = least_budget(EDGE, 20)
    with pytest.raises(ValueError, match="max_cache_tokens"):  # below one row's need: refused up front
        generate(stage, ps, EDGE, GenerationConfig(**kw, max_cache_tokens=least - 16), rows=torch.tensor(KEYS))
    for extra in (dict(max_rows=1), dict(max_rows=5), dict(max_cache_tokens=least), dict(max_cache_tokens=least + 16),
                  dict(max_cache_tokens=100, block_size=4), dict(block_size=1), dict(block_size=7)):
        got = generate(stage, ps, EDGE, GenerationConfig(**kw, **extra), rows=torch.tensor(KEYS))
        if extra.get("max_cache_tokens", 0):
            assert got.preemptions > 0, extra  # rows sharing prefix blocks with live siblings were preempted
        _same_tokens(base, per_key(got, KEYS))
    order = list(reversed(range(len(EDGE))))
    _same_tokens(base, _run(stage, ps, [EDGE[i] for i in order], [KEYS[i] for i in order], **kw))
    alone = {}
    for p, k in zip(EDGE[::4], KEYS[::4]):  # each sample alone: no prefix sharing, no neighbours
        alone.update(_run(stage, ps, [p], [k], **kw))
    _same_tokens({k: base[k] for k in alone}, alone)
    again = _run(stage, ps, EDGE, KEYS, **kw)  # a second run draws the same
    assert again == base


@pytest.mark.parametrize("case", [
    dict(max_new_tokens=1),
    dict(max_new_tokens=12, temperature=0.0),
    dict(max_new_tokens=10, top_k=5),
    dict(max_new_tokens=10, top_k=1),
    dict(max_new_tokens=10, top_p=1e-6),
    dict(max_new_tokens=10, top_p=0.9, top_k=3, temperature=0.5),
    dict(max_new_tokens=10, vocab_size=50),
    dict(max_new_tokens=50, stop="len3"),  # every row finishes in the same step
    dict(max_new_tokens=300, stop="tail"),  # a few rows 100x longer than the rest
    dict(max_new_tokens=10, temperature=0.0, eos_id="first"),  # EOS on the first token of some rows
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_edges_equal_the_static_engine(moe, case):
    stage, ps = moe
    case = dict(case)
    if case.get("stop") == "len3":
        case["stop"] = lambda ids: len(ids) >= 3
    elif case.get("stop") == "tail":
        case["stop"] = lambda ids: len(ids) >= (200 if ids[0] % 5 == 0 else 2)
    if case.get("eos_id") == "first":
        first = generate(stage, ps, EDGE, GenerationConfig(max_new_tokens=1, temperature=0.0), rows=torch.tensor(KEYS))
        case["eos_id"] = first.completions()[0][0]
    gen = GenerationConfig(seed=3, **case)
    a = generate(stage, ps, EDGE, gen, rows=torch.tensor(KEYS))
    b = generate_static(stage, ps, EDGE, gen, rows=torch.tensor(KEYS))
    assert a.completions() == b.completions()
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.completion_mask, b.completion_mask)
    assert (a.logprobs - b.logprobs).abs().max() <= 5e-5
    lengths = {len(c) for c in a.completions()}
    if case.get("eos_id") is not None:
        assert 1 in lengths and max(lengths) > 1
    if "stop" in case and case["max_new_tokens"] == 300:
        assert lengths == {2, 200}


def _teacher_routing(stage, ro):
    n = ro.tokens.shape[1]
    with torch.no_grad():
        stage(ro.tokens, position_ids=ro.position_ids, attn_mask=documents_from_pad(ro.pad, n))
    return {int(name): layer.mlp.last_topk_idx.view(n, ro.tokens.shape[0], -1)
            for name, layer in stage.layers.items() if isinstance(layer.mlp, MoE)}


@pytest.mark.parametrize("extra", [dict(), dict(max_rows=2), dict(max_cache_tokens=least_budget(EDGE, 20))], ids=str)
def test_routing_replay_is_what_a_teacher_forced_forward_routes(moe, extra):
    stage, ps = moe
    gen = GenerationConfig(seed=3, record_routing=True, max_new_tokens=20,
                           stop=lambda ids: len(ids) >= (20 if ids[0] % 3 == 0 else 4), **extra)
    ro = generate(stage, ps, EDGE, gen, rows=torch.tensor(KEYS))
    teacher = _teacher_routing(stage, ro)
    lengths = ro.completion_mask.sum(1)
    assert sorted(ro.routing) == sorted(teacher)
    for layer, idx in ro.routing.items():
        for b in range(len(EDGE)):
            lo, hi = int(ro.pad[b]), ro.prompt_len + int(lengths[b]) - 1  # the last token has no forward
            assert torch.equal(idx[lo:hi, b].sort(-1).values, teacher[layer][lo:hi, b].sort(-1).values), (layer, b)


def test_blocks_are_freed_across_many_refills(moe):
    """80 rows through 2 places: the pool never grows past what two rows need, and ends empty."""
    stage, ps = moe
    P = [p for p in _prompts([3, 20, 9, 33], seed=4) for _ in range(20)]
    e = ContinuousBatcher(stage, ps, P, list(range(len(P))), GenerationConfig(max_new_tokens=12, seed=1, max_rows=2))
    with torch.inference_mode():
        e.run()
    assert e.pool.used == 0 and e.pool.refs[1:].count(0) == e.pool.capacity - 1
    assert e.pool.capacity == 16 and e.pool.peak <= 2 * 4 + 3  # blocks of 2 rows (and a prompt kept for siblings)


@pytest.mark.parametrize("kind", ["Llama", "Qwen2"])
def test_dense_students_through_the_same_engine(tmp_path, kind):
    stage, ps = load(save_tiny(str(tmp_path), kind, **({"tie_word_embeddings": True} if kind == "Qwen2" else {})))
    kw = dict(max_new_tokens=16, seed=5, top_k=20)
    base = _run(stage, ps, EDGE, KEYS, **kw)
    st = generate_static(stage, ps, EDGE, GenerationConfig(**kw), rows=torch.tensor(KEYS))
    _same_tokens(base, per_key(st, KEYS))
    ro = generate(stage, ps, EDGE, GenerationConfig(**kw, max_cache_tokens=least_budget(EDGE, 16, 4), block_size=4),
                  rows=torch.tensor(KEYS))
    assert ro.preemptions > 0
    _same_tokens(base, per_key(ro, KEYS))


def _byte_tokenizer(folder: str):
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    from r1mega.data.tokenizer import Tokenizer

    t = HFTokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    text = ["</answer> the answer is 42 答案是 四十二 😀👍🏽 café naïve </think>"] * 20
    t.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t.save(os.path.join(folder, "tokenizer.json"))
    return Tokenizer(folder)


def test_stop_strings_on_the_tail_cut_where_the_whole_text_would(tmp_path):
    """Stop strings spanning tokens, one a prefix of another, multi-byte characters split over
    byte tokens, a long emoji stop: the incremental (tail) check fires at the first token where
    the decoded completion contains a stop string, and only there."""
    from r1mega.generation.sampling_rounds import _stop_check

    tok = _byte_tokenizer(str(tmp_path))
    stop_sets = [["</answer>"], ["</a", "</answer>"], ["答案"], ["😀👍🏽"], ["é"], ["👍🏽" * 12], [" 42"]]
    pieces = ["</answer>", "答案", "😀", "👍🏽", "é", " 42", "x", " ", "ï", "</", "a", "nswer>"]
    rng = random.Random(0)
    fired = 0
    for trial in range(140):
        stops = stop_sets[trial % len(stop_sets)]
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 40)))
        ids = tok.encode(text + (stops[-1] if trial % 3 == 0 else ""))
        if trial % 2:  # the second half as raw byte tokens: multi-byte characters split over tokens
            cut = len(text) // 2
            ids = tok.encode(text[:cut]) + [tok.token_id(_byte_char(b)) for b in text[cut:].encode("utf-8")]
        hit = _stop_check(tok, stops)
        incremental = next((i for i in range(len(ids)) if hit(ids[:i + 1])), None)
        whole = next((i for i in range(len(ids)) if any(s in tok.decode(ids[:i + 1]) for s in stops)), None)
        assert incremental == whole, (stops, text)
        fired += whole is not None
    assert fired > 30


def _byte_char(b: int) -> str:
    """The ByteLevel alphabet's character for byte b (GPT-2's byte-to-unicode table)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    if b in keep:
        return chr(b)
    return chr(256 + sorted(set(range(256)) - set(keep)).index(b))


def _layout_cases(seed: int, n: int, dp: int):
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        prompts = [[rng.randint(1, 95) for _ in range(rng.choice([1, 15, 16, 17, 33, rng.randint(1, 40)]))]
                   for _ in range(rng.randint(1, 4))]
        G = rng.choice([1, 2, 4])
        shares = [[p for p in rng.sample(prompts, rng.randint(0 if dp > 1 else 1, len(prompts))) for _ in range(G)]
                  for _ in range(dp)]  # DP ranks with different rows, or none
        keys = [[rng.randint(0, 10 ** 6) for _ in s] for s in shares]
        kw = dict(max_new_tokens=rng.choice([1, 3, 12, 30]), seed=rng.randint(0, 9),
                  eos_id=rng.choice([None, rng.randint(0, 95)]), stop_mod=rng.choice([0, 0, 5, 11]),
                  temperature=rng.choice([0.0, 1.0]), top_p=rng.choice([1.0, 0.85]), max_rows=rng.choice([0, 0, 2, 5]),
                  max_cache_tokens=rng.choice([0, 0, 30, 80]), block_size=rng.choice([4, 16]),
                  pipelined_min_rows=rng.choice([1, 2, 16]), pipelined_decode=rng.choice([True, True, False]))
        if kw["max_cache_tokens"]:  # a budget below one row's need is refused up front (tested above)
            kw["max_cache_tokens"] = max(kw["max_cache_tokens"],
                                         least_budget(prompts, kw["max_new_tokens"], kw["block_size"]))
        cases.append((shares, keys, kw))
    return cases


def _static_reference(stage, ps, prompt, key, kw):
    m = kw["stop_mod"]
    kw = {a: b for a, b in kw.items() if a not in ("max_rows", "max_cache_tokens", "block_size", "pipelined_min_rows",
                                                   "pipelined_decode", "stop_mod")}
    return generate_static(stage, ps, [prompt], GenerationConfig(**kw, stop=(lambda ids: ids[-1] % m == 0) if m else None),
                           rows=torch.tensor([key])).completions()[0]


@pytest.fixture(scope="module")
def layout_runs(request, moe_dir):
    """The selected layouts below, both four-rank ones in one spawn. {node name: per-rank results}."""
    from spawn_cases import run_selected

    return run_selected(request, {"test_layouts_draw_the_one_process_static_samples": lambda p: (
        p["world"], run_cases, (moe_dir, p["layout"], _layout_cases(p["seed"], 12, p["dp"])))})


@pytest.mark.slow
@pytest.mark.parametrize("layout,world,dp,seed", [
    (dict(pp=2), 2, 1, 0),  # groups in flight (pipelined_min_rows 1, 2), fewer rows than stages, budgets
    (dict(tp=2, ep=2, etp=1), 4, 2, 2),  # DP ranks with other rows, or none, finishing at other times
    (dict(pp=2, ep=2, etp=1), 4, 2, 1),
], ids=["pp2", "tp2xep2", "pp2xep2"])
def test_layouts_draw_the_one_process_static_samples(request, layout_runs, moe, layout, world, dp, seed):
    stage, ps = moe
    cases = _layout_cases(seed, 12, dp)
    results = layout_runs[request.node.name]
    for ci, (shares, keys, kw) in enumerate(cases):
        got = {}
        for r in results:
            got.update(r[ci] or {})
        for P, K in zip(shares, keys):
            for p, k in zip(P, K):
                want = _static_reference(stage, ps, p, k, kw)
                assert got.get(k) == want, (ci, kw, k)


def test_grpo_rollout_budgets_reach_the_engine_and_change_no_sample(tmp_path):
    """`rl.rollout_max_rows` / `rl.rollout_cache_tokens` (the engine's row and cache budgets, which
    GRPO had no way to set): the same metrics as without them but the cache peak, which falls to the
    budget; negative values are refused by name."""
    from r1mega.config import load_config, validate, validate_rl
    from r1mega.errors import ConfigError
    from rl_workers import grpo_worker

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    demo = os.path.join(root, "configs", "tiny", "r1_zero_demo.yaml")
    for key in ("rl.rollout_max_rows", "rl.rollout_cache_tokens"):
        with pytest.raises(ConfigError, match=key):
            validate_rl(validate(load_config(demo, [f"{key}=-1"]), 1), 1)

    def run(name, extra):
        rows = grpo_worker(0, 1, [f"train.run_dir={tmp_path}/{name}", f"data.cache_dir={tmp_path}/data", "train.steps=2",
                                  "rl.group_size=4", "rl.prompts_per_step=4", "rl.max_new_tokens=12", "rl.log_rollouts=16",
                                  "data.micro_batch_size=8", "data.global_batch_size=8", "data.synthetic_docs=300",
                                  *extra])["rows"]
        with open(os.path.join(tmp_path, name, "rollouts.jsonl")) as f:
            completions = [(r["step"], r["prompt"], r["completion"]) for r in map(json.loads, f)]
        return rows, completions

    free, free_text = run("free", [])
    tight, tight_text = run("tight", ["rl.rollout_max_rows=5", "rl.rollout_cache_tokens=64"])
    assert len(free_text) == 32 and tight_text == free_text  # every sample of both steps
    assert len(free) == len(tight) == 2
    for a, b in zip(free, tight):
        assert b["rollout_kv_cache_bytes"] < a["rollout_kv_cache_bytes"]
        for k in ("reward", "response_len", "entropy", "logprob_gap_mean", "sampler_kl", "loss"):
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k
